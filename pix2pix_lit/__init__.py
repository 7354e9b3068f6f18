"""pix2pix-lit: image-to-image translation GANs (pix2pix, pix2pixHD, SPADE, CycleGAN, CUT) on PyTorch Lightning."""

from pix2pix_lit.data import PairedDataModule, SyntheticPairedDataModule
from pix2pix_lit.module import Pix2Pix

__all__ = ["PairedDataModule", "Pix2Pix", "SyntheticPairedDataModule"]
__version__ = "0.1.0"
