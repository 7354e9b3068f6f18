"""Discriminators: PatchGAN with n layers (basic = 70x70, n_layers=3), pixel (1x1), multi-scale."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_lit.nets.norm import uses_bias


class _LayerStack(nn.Module):
    """A discriminator that is one ``nn.Sequential`` (``stack``; named ``model``/``net`` as in the official
    code, so the checkpoint keys match it)."""

    stack_name = "model"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.stack_name)(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate activations after each LeakyReLU and the final logits (for feature matching)."""
        feats = []
        for layer in getattr(self, self.stack_name):
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        feats.append(x)
        return feats


class NLayerDiscriminator(_LayerStack):
    """PatchGAN: ``n_layers`` strided convs; outputs a map of real/fake logits, one per receptive-field patch."""

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        padding: int = 1,
    ) -> None:
        """``padding``: of every 4x4 convolution; 1 in pix2pix, 2 (= ceil(3/2)) in pix2pixHD, whose maps are so
        a few pixels larger at each layer (the parameters are the same)."""
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers_D={n_layers} must be >= 1")
        use_bias = uses_bias(norm_layer)
        kw, padw = 4, padding
        sequence: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*sequence)


class PixelDiscriminator(_LayerStack):
    """1x1 PatchGAN (pixelGAN): judges each pixel independently."""

    stack_name = "net"

    def __init__(self, input_nc: int, ndf: int = 64, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        use_bias = uses_bias(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=use_bias),
            norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=use_bias),
        )


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD: ``num_D`` PatchGANs on the input downsampled by 2 each time; returns one logit map each."""

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        num_D: int = 3,
        make: Optional[Callable[[], nn.Module]] = None,
        padding: int = 1,
    ) -> None:
        """``make``: builds each scale's discriminator (default: an :class:`NLayerDiscriminator`); it has
        ``forward`` (logits) and ``features`` (activations, logits last)."""
        super().__init__()
        if num_D < 1:
            raise ValueError(f"num_D={num_D} must be >= 1")
        make = make or (lambda: NLayerDiscriminator(input_nc, ndf, n_layers, norm_layer, padding))
        self.discriminators = nn.ModuleList(make() for _ in range(num_D))

    def _scales(self, x: torch.Tensor) -> Iterator[tuple[NLayerDiscriminator, torch.Tensor]]:
        """Each discriminator with its input: ``x``, then ``x`` downsampled by 2 for each next one."""
        for i, d in enumerate(self.discriminators):
            if i:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            yield d, x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [d(x) for d, x in self._scales(x)]

    def features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [d.features(x) for d, x in self._scales(x)]
