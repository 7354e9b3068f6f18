"""Network factories with the official pix2pix names and defaults."""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn as nn
from torch.nn.utils import spectral_norm

from pix2pix_lit.errors import ConfigError, check_choice
from pix2pix_lit.nets.discriminators import MultiscaleDiscriminator, NLayerDiscriminator, PixelDiscriminator
from pix2pix_lit.nets.generators import LocalEnhancer, ResnetGenerator, UnetGenerator
from pix2pix_lit.nets.norm import INITS, NORMS, InitName, NormName, get_norm_layer, init_weights

# the names of the networks, each defined once: the models' options take these types, the checks their values
# global / local: pix2pixHD's GlobalGenerator and LocalEnhancer
GeneratorName = Literal["unet_256", "unet_128", "unet", "resnet_9blocks", "resnet_6blocks", "resnet", "global", "local"]
DiscriminatorName = Literal["basic", "n_layers", "pixel", "multiscale"]
GENERATORS = get_args(GeneratorName)
DISCRIMINATORS = get_args(DiscriminatorName)

__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "INITS",
    "NORMS",
    "DiscriminatorName",
    "GeneratorName",
    "InitName",
    "LocalEnhancer",
    "NormName",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "ResnetGenerator",
    "UnetGenerator",
    "define_D",
    "define_G",
]


def define_G(
    input_nc: int,
    output_nc: int,
    ngf: int = 64,
    netG: str = "unet_256",
    norm: str = "batch",
    use_dropout: bool = True,
    init_type: str = "normal",
    init_gain: float = 0.02,
    num_downs: int | None = None,
    n_blocks: int | None = None,
    n_downsample_global: int = 4,
    n_blocks_global: int = 9,
    n_local_enhancers: int = 1,
    n_blocks_local: int = 3,
) -> nn.Module:
    """Build and initialise a generator.

    ``unet_256``/``unet_128`` are U-Nets with 8/7 downsamplings; ``unet`` takes ``num_downs``.
    ``resnet_9blocks``/``resnet_6blocks`` are ResNets; ``resnet`` takes ``n_blocks``.
    ``global`` (pix2pixHD): a ResNet with ``n_downsample_global`` downsamplings and ``n_blocks_global`` blocks;
    ``local``: ``n_local_enhancers`` enhancers of ``n_blocks_local`` blocks around such a global generator.
    """
    check_choice("netG", netG, GENERATORS)
    norm_layer = get_norm_layer(norm)
    if netG in ("global", "local"):
        if min(n_downsample_global, n_blocks_global, n_blocks_local) < 0 or n_local_enhancers < 1:
            raise ConfigError("n_downsample_global, n_blocks_global and n_blocks_local must be >= 0, n_local_enhancers >= 1")
        if netG == "global":
            net: nn.Module = ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks_global,
                                             n_downsampling=n_downsample_global)
        else:
            net = LocalEnhancer(input_nc, output_nc, ngf, norm_layer, use_dropout, n_downsample_global, n_blocks_global,
                                n_local_enhancers, n_blocks_local)
    elif netG.startswith("unet"):
        depth = {"unet_256": 8, "unet_128": 7}.get(netG, num_downs)
        if depth is None:
            raise ConfigError("netG='unet' needs num_downs (e.g. 6 for 64x64 images: sides must divide by 2**num_downs)")
        if num_downs is not None and num_downs != depth:
            raise ConfigError(f"netG={netG!r} fixes num_downs={depth}; use netG='unet' to choose num_downs={num_downs}")
        if depth < 5:
            raise ConfigError(f"num_downs={depth}: a U-Net needs at least 5 downsamplings")
        net = UnetGenerator(input_nc, output_nc, depth, ngf, norm_layer, use_dropout)
    else:
        blocks = {"resnet_9blocks": 9, "resnet_6blocks": 6}.get(netG, n_blocks)
        if blocks is None:
            raise ConfigError("netG='resnet' needs n_blocks (e.g. 9)")
        if n_blocks is not None and n_blocks != blocks:
            raise ConfigError(f"netG={netG!r} fixes n_blocks={blocks}; use netG='resnet' to choose n_blocks={n_blocks}")
        net = ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=blocks)
    return init_weights(net, init_type, init_gain)


def define_D(
    input_nc: int,
    ndf: int = 64,
    netD: str = "basic",
    n_layers_D: int = 3,
    norm: str = "batch",
    init_type: str = "normal",
    init_gain: float = 0.02,
    num_D: int = 3,
    spectral: bool = False,
    padding: int = 1,
) -> nn.Module:
    """Build and initialise a discriminator: ``basic`` (70x70 PatchGAN), ``n_layers``, ``pixel``, ``multiscale``;
    with ``spectral``, every convolution spectrally normalised (Miyato et al. 2018: D's Lipschitz constant bounded,
    as SPADE's and most later GANs' discriminators). ``padding``: of the PatchGANs' convolutions (1 pix2pix, 2 pix2pixHD)."""
    check_choice("netD", netD, DISCRIMINATORS)
    norm_layer = get_norm_layer(norm)
    if netD == "basic":
        net: nn.Module = NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=norm_layer, padding=padding)
    elif netD == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf, n_layers_D, norm_layer=norm_layer, padding=padding)
    elif netD == "pixel":
        net = PixelDiscriminator(input_nc, ndf, norm_layer=norm_layer)
    else:
        net = MultiscaleDiscriminator(input_nc, ndf, n_layers_D, norm_layer=norm_layer, num_D=num_D, padding=padding)
    net = init_weights(net, init_type, init_gain)
    if spectral:
        for name, conv in [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]:
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr, spectral_norm(conv))
    return net
