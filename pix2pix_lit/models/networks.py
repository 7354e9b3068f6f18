"""The options of junyanz's generators and PatchGAN discriminators, declared once for the models that build them
(Pix2Pix, CycleGAN): :class:`OfficialNetworksModel` takes them, checks them, and builds a generator or a
discriminator of any channels from them. A model that uses other networks (SPADE, CUT) subclasses
:class:`~pix2pix_lit.models.base.ImageTranslationModel` directly.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn as nn

from pix2pix_lit.errors import check_choice, check_numbers
from pix2pix_lit.losses import GANMode
from pix2pix_lit.models.base import ImageTranslationModel
from pix2pix_lit.nets import DISCRIMINATORS, GENERATORS, DiscriminatorName, GeneratorName, InitName, NormName, define_D, define_G

# the range of each numeric network option (errors.check_numbers)
NETWORK_NUMBERS = {
    "input_nc": ">=1", "output_nc": ">=1", "ngf": ">=1", "ndf": ">=1", "num_downs": ">=1", "n_blocks": ">=0",
    "n_layers_D": ">=1", "num_D": ">=1", "init_gain": ">0", "lambda_gp": ">=0", "pool_size": ">=0",
}


class OfficialNetworksModel(ImageTranslationModel):
    """A model of the official generators and discriminators. The defaults are pix2pix's (``--model pix2pix``);
    a model with other official defaults (CycleGAN: ResNet, instance norm, no dropout, LSGAN, a pool of 50)
    declares just those again and passes them on.

    Args:
        input_nc: channels of the source (domain A) images (linked from the data).
        output_nc: channels of the target (domain B) images (linked from the data).
        netG: unet_256 | unet_128 | unet (with num_downs) | resnet_9blocks | resnet_6blocks | resnet (n_blocks) |
            global | local (pix2pixHD's, with Pix2Pix's options).
        ngf: the generator's filters in its first layer.
        num_downs: netG unet: its downsamplings (the image side must divide by 2**num_downs).
        n_blocks: netG resnet: its residual blocks.
        no_dropout: no dropout in the generator (the official ``--no_dropout``).
        netD: basic (70x70 PatchGAN) | n_layers (n_layers_D) | pixel | multiscale (num_D PatchGANs).
        ndf: the discriminator's filters in its first layer.
        n_layers_D: netD n_layers and multiscale: the PatchGAN's strided layers (3: the basic 70x70 one).
        num_D: netD multiscale: how many PatchGANs, each at half the previous one's resolution.
        norm: batch | instance | none | syncbatch, in every network.
        init_type: conv and linear weights: normal | xavier | kaiming | orthogonal | pix2pixhd (NVIDIA's: normal,
            biases left at torch's default).
        init_gain: normal's standard deviation, xavier's and orthogonal's gain.
        gan_mode: vanilla (BCE on logits) | lsgan | hinge | wgangp (+ lambda_gp * gradient penalty).
        lambda_gp: gan_mode wgangp: the gradient penalty's weight.
        pool_size: the official image buffer of past fakes shown to D (0: none).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        netG: GeneratorName = "unet_256",
        ngf: int = 64,
        num_downs: Optional[int] = None,
        n_blocks: Optional[int] = None,
        no_dropout: bool = False,
        netD: DiscriminatorName = "basic",
        ndf: int = 64,
        n_layers_D: int = 3,
        num_D: int = 3,
        norm: NormName = "batch",
        init_type: InitName = "normal",
        init_gain: float = 0.02,
        gan_mode: GANMode = "vanilla",
        lambda_gp: float = 10.0,
        pool_size: int = 0,
        **kwargs: Any,
    ) -> None:
        check_choice("model.netG", netG, GENERATORS)
        check_choice("model.netD", netD, DISCRIMINATORS)
        check_numbers(locals(), NETWORK_NUMBERS)
        super().__init__(**kwargs)

    def make_G(self, input_nc: int, output_nc: int, **extra: Any) -> nn.Module:
        """A generator of the options, ``input_nc`` -> ``output_nc`` channels (``extra``: define_G's others)."""
        h = self.hparams
        return define_G(input_nc, output_nc, h.ngf, h.netG, h.norm, not h.no_dropout, h.init_type, h.init_gain,
                        h.num_downs, h.n_blocks, **extra)

    def make_D(self, input_nc: int, **extra: Any) -> nn.Module:
        """A discriminator of the options over ``input_nc`` channels (``extra``: define_D's others)."""
        h = self.hparams
        return define_D(input_nc, h.ndf, h.netD, h.n_layers_D, h.norm, h.init_type, h.init_gain, h.num_D, **extra)
