"""Generators of the official pix2pix: U-Net (any depth) and ResNet (any number of blocks); pix2pixHD's global
(a ResNet with 4 downsamplings) and local enhancer generators."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from pix2pix_lit.nets.norm import InstanceNorm2d, uses_bias


class UnetSkipConnectionBlock(nn.Module):
    """One level of the U-Net: down conv -> [submodule] -> up conv, with a skip connection around it."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = uses_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)

        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net generator with ``num_downs`` downsamplings (unet_256: 8, unet_128: 7).

    Inputs must have sides divisible by ``2 ** num_downs`` (see :attr:`size_multiple`).
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int,
        ngf: int = 64,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs={num_downs}: a U-Net needs at least 5 downsamplings")
        self.size_multiple = 2**num_downs
        self.min_size = self.size_multiple  # the innermost level sees 1x1
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=None, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(
                ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout
            )
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResnetBlock(nn.Module):
    """Residual block: conv-norm-relu-[dropout]-conv-norm, added to the input.

    ``checkpointed`` (see :func:`checkpoint_residual_blocks`): in training, its activations are recomputed in the
    backward pass instead of being kept (``torch.utils.checkpoint``; the RNG is replayed, so dropout draws the
    same): less memory for one more forward of the block."""

    checkpointed = False

    def __init__(
        self,
        dim: int,
        padding_type: str,
        norm_layer: Callable[[int], nn.Module],
        use_dropout: bool,
        use_bias: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            pad = 0
            if padding_type == "reflect":
                layers.append(nn.ReflectionPad2d(1))
            elif padding_type == "replicate":
                layers.append(nn.ReplicationPad2d(1))
            elif padding_type == "zero":
                pad = 1
            else:
                raise ValueError(f"padding_type={padding_type!r}: choose reflect, replicate or zero")
            layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=pad, bias=use_bias), norm_layer(dim)]
            if i == 0:
                layers.append(nn.ReLU(True))
                if use_dropout:
                    layers.append(nn.Dropout(0.5))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and self.training and torch.is_grad_enabled():
            return x + checkpoint(self.conv_block, x, use_reentrant=False)
        return x + self.conv_block(x)


def checkpoint_residual_blocks(net: nn.Module, on: bool = True) -> int:
    """Turn activation checkpointing of ``net``'s residual blocks on (or off); returns how many it has."""
    blocks = [m for m in net.modules() if isinstance(m, ResnetBlock)]
    for block in blocks:
        block.checkpointed = on
    return len(blocks)


class ResnetGenerator(nn.Module):
    """ResNet generator (Johnson et al.): ``n_downsampling`` stride-2 convolutions, ``n_blocks`` residual blocks, as
    many upsamplings. The official pix2pix's has 2 downsamplings; pix2pixHD's ``GlobalGenerator`` is this network
    with 4 (its layer names too, so its checkpoints load; with instance norm the convolutions have biases in both)."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        use_dropout: bool = False,
        n_blocks: int = 6,
        padding_type: str = "reflect",
        n_downsampling: int = 2,
    ) -> None:
        super().__init__()
        if n_blocks < 0 or n_downsampling < 0:
            raise ValueError(f"n_blocks={n_blocks} and n_downsampling={n_downsampling} must be >= 0")
        self.size_multiple = 2**n_downsampling
        # reflect padding needs a side larger than the pad: 1 pixel at the residual blocks' resolution, so sides of
        # at least twice the stride there (2**n_downsampling with zero padding; the first 7x7 reflect pad needs 4)
        self.min_size = max(4, self.size_multiple * (2 if padding_type == "reflect" and n_blocks > 0 else 1))
        use_bias = uses_bias(norm_layer)
        model: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        for i in range(n_downsampling):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(ngf * mult * 2),
                nn.ReLU(True),
            ]
        mult = 2**n_downsampling
        for _ in range(n_blocks):
            model.append(ResnetBlock(ngf * mult, padding_type, norm_layer, use_dropout, use_bias))
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias
                ),
                norm_layer(ngf * mult // 2),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """pix2pixHD's coarse-to-fine generator: a global generator (``ngf * 2**n_local_enhancers`` filters, without
    its output layers: ``model``) runs on the input downsampled ``n_local_enhancers`` times; each enhancer ``n``
    (``model{n}_1``: a 7x7 conv and a stride-2 conv on the input at its scale; ``model{n}_2``: ``n_blocks_local``
    residual blocks and an upsampling) adds its features to the coarser output and doubles the resolution; the
    last one ends with the output layers. The layer names are the official ones, so its checkpoints load."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 32,
        norm_layer: Callable[[int], nn.Module] = InstanceNorm2d,
        use_dropout: bool = False,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        padding_type: str = "reflect",
    ) -> None:
        super().__init__()
        if n_local_enhancers < 1 or n_blocks_local < 0:
            raise ValueError(f"n_local_enhancers={n_local_enhancers} must be >= 1 and n_blocks_local >= 0")
        self.n_local_enhancers = n_local_enhancers
        coarse = ResnetGenerator(input_nc, output_nc, ngf * 2**n_local_enhancers, norm_layer, use_dropout,
                                 n_blocks_global, padding_type, n_downsample_global)
        self.model = nn.Sequential(*list(coarse.model)[:-3])  # its features, not its image
        self.size_multiple = coarse.size_multiple * 2**n_local_enhancers
        self.min_size = coarse.min_size * 2**n_local_enhancers
        use_bias = uses_bias(norm_layer)
        for n in range(1, n_local_enhancers + 1):
            width = ngf * 2 ** (n_local_enhancers - n)
            down = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, width, kernel_size=7, padding=0, bias=use_bias),
                    norm_layer(width), nn.ReLU(True),
                    nn.Conv2d(width, width * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                    norm_layer(width * 2), nn.ReLU(True)]
            up: list[nn.Module] = [ResnetBlock(width * 2, padding_type, norm_layer, use_dropout, use_bias)
                                   for _ in range(n_blocks_local)]
            up += [nn.ConvTranspose2d(width * 2, width, kernel_size=3, stride=2, padding=1, output_padding=1,
                                      bias=use_bias), norm_layer(width), nn.ReLU(True)]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*down))
            setattr(self, f"model{n}_2", nn.Sequential(*up))
        # the input pyramid: 3x3 averages at stride 2, the border averaged over the pixels inside only
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = [x]
        for _ in range(self.n_local_enhancers):
            scales.append(self.downsample(scales[-1]))
        out = self.model(scales[-1])
        for n in range(1, self.n_local_enhancers + 1):
            finer = scales[self.n_local_enhancers - n]
            out = getattr(self, f"model{n}_2")(getattr(self, f"model{n}_1")(finer) + out)
        return out
