"""SPADE (Park et al., "Semantic Image Synthesis with Spatially-Adaptive Normalization", CVPR 2019): the
generator whose every normalisation takes its scale and shift from the label map, its discriminator and the
optional VAE image encoder, with the NVlabs/SPADE options and defaults (parameter counts pinned by
``tests/nets/test_spade_networks.py`` against the official code).
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

from pix2pix_lit.errors import ConfigError, check_choice
from pix2pix_lit.nets.discriminators import MultiscaleDiscriminator
from pix2pix_lit.nets.norm import InstanceNorm2d

ParamFreeNorm = Literal["syncbatch", "batch", "instance"]
PARAM_FREE_NORMS = get_args(ParamFreeNorm)
UpsamplingLayers = Literal["normal", "more", "most"]
# how many times the generator doubles its starting grid
UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}
SPADE_HIDDEN = 128  # the width of SPADE's shared convolution (fixed in the paper and the official code)


def param_free_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation without learned scale and shift (SPADE supplies them)."""
    check_choice("model.param_free_norm", kind, PARAM_FREE_NORMS)
    if kind == "instance":
        return InstanceNorm2d(channels, affine=False)
    if kind == "syncbatch":  # batch norm over all processes (a plain BatchNorm on one)
        return nn.SyncBatchNorm(channels, affine=False)
    return nn.BatchNorm2d(channels, affine=False)


class SPADE(nn.Module):
    """``out = norm(x) * (1 + gamma(m)) + beta(m)``: ``x`` normalised without parameters, then scaled and shifted
    per pixel by convolutions of the label map ``m`` resized (nearest) to ``x``'s size."""

    def __init__(self, channels: int, label_nc: int, norm: str = "syncbatch", kernel_size: int = 3) -> None:
        super().__init__()
        self.param_free_norm = param_free_norm(norm, channels)
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, SPADE_HIDDEN, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, channels, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, channels, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.modulate(x, self.mlp_shared(F.interpolate(labels, size=x.shape[-2:], mode="nearest")))

    def modulate(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``norm(x) * (1 + gamma) + beta`` from the shared layer's output ``hidden``. gamma and beta read the same
        input, so they run as one convolution with both weights (the same arithmetic; one larger convolution is
        faster than two on CPU, experiments/RESULTS.md)."""
        normalized = self.param_free_norm(x)
        g, b = self.mlp_gamma, self.mlp_beta
        gamma, beta = F.conv2d(hidden, torch.cat([g.weight, b.weight]), torch.cat([g.bias, b.bias]),
                               padding=g.padding).chunk(2, 1)
        return normalized * (1 + gamma) + beta


def shared_hidden(norms: list[SPADE], labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each SPADE's shared layer (conv + ReLU) on the same resized label map, as one convolution with all their
    weights: the same arithmetic in one larger convolution (see :meth:`SPADE.modulate`)."""
    convs = [n.mlp_shared[0] for n in norms]
    out = F.conv2d(labels, torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]),
                   padding=convs[0].padding)
    return F.relu(out).chunk(len(convs), 1)


class SPADEResnetBlock(nn.Module):
    """Two SPADE -> LeakyReLU(0.2) -> 3x3 conv steps with a shortcut (a SPADE + 1x1 conv when the width changes);
    every conv spectrally normalised with ``spectral``."""

    def __init__(self, fin: int, fout: int, label_nc: int, norm: str = "syncbatch", spectral: bool = True) -> None:
        super().__init__()
        fmiddle = min(fin, fout)
        wrap: Callable[[nn.Module], nn.Module] = spectral_norm if spectral else (lambda m: m)
        self.learned_shortcut = fin != fout
        self.conv_0 = wrap(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.conv_1 = wrap(nn.Conv2d(fmiddle, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, label_nc, norm)
        self.norm_1 = SPADE(fmiddle, label_nc, norm)
        if self.learned_shortcut:
            self.conv_s = wrap(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, label_nc, norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # every SPADE of the block works at x's size: the label map is resized once, their shared layers run as one
        labels = F.interpolate(labels, size=x.shape[-2:], mode="nearest")
        norms = [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])
        hidden = shared_hidden(norms, labels)
        shortcut = self.conv_s(self.norm_s.modulate(x, hidden[2])) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0.modulate(x, hidden[0]), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1.modulate(dx, hidden[1]), 0.2))
        return shortcut + dx


class SPADEGenerator(nn.Module):
    """The SPADE generator: from the label map downsampled to a small grid (or, with ``use_vae``, a style code
    ``z``), SPADE ResNet blocks at 16·ngf, then upsampling blocks halving the width down to ngf, then a 3x3 conv
    to the image and tanh.

    ``num_upsampling_layers``: ``normal`` 5 doublings of the grid, ``more`` 6 (an extra one between the middle
    blocks: Cityscapes), ``most`` 7 (and a last block at ngf/2). Without the VAE the grid is the label map's size
    divided by 2^doublings: at the training size (``crop_size`` wide, ``crop_size / aspect_ratio`` high) that is
    the official grid; other sizes that divide by 2^doublings work too. With the VAE the grid is fixed by
    ``crop_size`` and ``aspect_ratio`` (``z`` is projected onto it).
    """

    def __init__(
        self, semantic_nc: int, output_nc: int = 3, ngf: int = 64, num_upsampling_layers: str = "normal",
        crop_size: int = 256, aspect_ratio: float = 1.0, use_vae: bool = False, z_dim: int = 256,
        norm: str = "syncbatch", spectral: bool = True,
    ) -> None:
        super().__init__()
        check_choice("model.num_upsampling_layers", num_upsampling_layers, UPSAMPLINGS)
        self.doublings = UPSAMPLINGS[num_upsampling_layers]
        self.num_upsampling_layers, self.use_vae, self.z_dim, self.ngf = num_upsampling_layers, use_vae, z_dim, ngf
        self.size_multiple = 2**self.doublings
        self.min_size = self.size_multiple
        self.sw = crop_size // self.size_multiple
        self.sh = round(self.sw / aspect_ratio)
        if self.sw < 1 or self.sh < 1:
            raise ConfigError(f"model.crop_size={crop_size} is too small for num_upsampling_layers="
                              f"{num_upsampling_layers}: it needs at least {self.size_multiple} (x aspect_ratio)")
        if use_vae:
            self.fc = nn.Linear(z_dim, 16 * ngf * self.sw * self.sh)
        else:
            self.fc = nn.Conv2d(semantic_nc, 16 * ngf, 3, padding=1)

        def block(fin: int, fout: int) -> SPADEResnetBlock:
            return SPADEResnetBlock(fin, fout, semantic_nc, norm, spectral)

        self.head_0 = block(16 * ngf, 16 * ngf)
        self.G_middle_0 = block(16 * ngf, 16 * ngf)
        self.G_middle_1 = block(16 * ngf, 16 * ngf)
        self.up_0 = block(16 * ngf, 8 * ngf)
        self.up_1 = block(8 * ngf, 4 * ngf)
        self.up_2 = block(4 * ngf, 2 * ngf)
        self.up_3 = block(2 * ngf, ngf)
        final_nc = ngf
        if num_upsampling_layers == "most":
            self.up_4 = block(ngf, ngf // 2)
            final_nc = ngf // 2
        self.conv_img = nn.Conv2d(final_nc, output_nc, 3, padding=1)

    def grid(self, labels: torch.Tensor) -> tuple[int, int]:
        if self.use_vae:
            return self.sh, self.sw
        h, w = labels.shape[-2:]
        return h // self.size_multiple, w // self.size_multiple

    def forward(self, labels: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        if self.use_vae:
            if z is None:  # no style given: a random one
                z = torch.randn(labels.shape[0], self.z_dim, device=labels.device, dtype=torch.float32)
            x = self.fc(z).view(-1, 16 * self.ngf, self.sh, self.sw)
        else:
            x = self.fc(F.interpolate(labels, size=self.grid(labels), mode="nearest"))
        x = up(self.head_0(x, labels))
        x = self.G_middle_0(x, labels)
        if self.num_upsampling_layers in ("more", "most"):
            x = up(x)
        x = up(self.G_middle_1(x, labels))
        x = up(self.up_0(x, labels))
        x = up(self.up_1(x, labels))
        x = up(self.up_2(x, labels))
        x = self.up_3(x, labels)
        if self.num_upsampling_layers == "most":
            x = self.up_4(up(x), labels)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


def _spectral_instance(conv: nn.Conv2d) -> nn.Sequential:
    """The official ``spectralinstance``: a spectrally normalised conv without bias (the norm removes it), then
    instance norm without parameters."""
    conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    return nn.Sequential(spectral_norm(conv), InstanceNorm2d(conv.out_channels, affine=False))


class SPADEPatchDiscriminator(nn.Module):
    """SPADE's PatchGAN: 4x4 convs with padding 2, ``n_layers`` (default 4) groups, the last strided group at
    stride 1, widths doubling up to 512, spectral + instance norm inside; :meth:`features` returns every group's
    output (the logits last) for feature matching."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"model.n_layers_D={n_layers} must be >= 1")
        groups = [nn.Sequential(nn.Conv2d(input_nc, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, False))]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            groups.append(nn.Sequential(_spectral_instance(nn.Conv2d(nf_prev, nf, 4, stride, 2)),
                                        nn.LeakyReLU(0.2, False)))
        groups.append(nn.Sequential(nn.Conv2d(nf, 1, 4, stride=1, padding=2)))
        for i, group in enumerate(groups):
            self.add_module(f"model{i}", group)  # the official names

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for group in self.children():
            x = group(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]


def spade_discriminator(input_nc: int, ndf: int = 64, n_layers: int = 4, num_D: int = 2) -> MultiscaleDiscriminator:
    """``num_D`` SPADE PatchGANs on the input downsampled by 2 each time (the official ``multiscale``)."""
    return MultiscaleDiscriminator(input_nc, num_D=num_D,
                                   make=lambda: SPADEPatchDiscriminator(input_nc, ndf, n_layers))


class ConvEncoder(nn.Module):
    """SPADE's image encoder for the VAE: the image resized to 256x256, six (five below ``crop_size`` 256) stride-2
    3x3 convs with spectral instance norm, then the mean and log-variance of a ``z_dim`` style code. Below
    ``crop_size`` 256 the image is resized to 128x128 (the official code would end at 8x8 there and not run)."""

    def __init__(self, input_nc: int = 3, ngf: int = 64, crop_size: int = 256, z_dim: int = 256) -> None:
        super().__init__()
        widths = [input_nc, ngf, 2 * ngf, 4 * ngf, 8 * ngf, 8 * ngf] + ([8 * ngf] if crop_size >= 256 else [])
        self.layers = nn.ModuleList(_spectral_instance(nn.Conv2d(a, b, 3, 2, 1)) for a, b in zip(widths, widths[1:]))
        self.side = 256 if crop_size >= 256 else 128  # 4x4 after the convs either way
        self.fc_mu = nn.Linear(8 * ngf * 4 * 4, z_dim)
        self.fc_var = nn.Linear(8 * ngf * 4 * 4, z_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image
        if x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear")
        for i, layer in enumerate(self.layers):
            x = layer(F.leaky_relu(x, 0.2) if i else x)
        x = F.leaky_relu(x, 0.2).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)), summed as the official ``KLDLoss`` does."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
