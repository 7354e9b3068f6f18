"""Paired and unpaired image data: datasets, joint transforms, the DataModule and the built-in synthetic set."""

from pix2pix_lit.data.base import ImageDataModule
from pix2pix_lit.data.datasets import AlignedDataset, FolderPairDataset, SeededSampler, SingleImageDataset
from pix2pix_lit.data.paired import PairedDataModule, SyntheticLabelDataModule, SyntheticPairedDataModule
from pix2pix_lit.data.streaming import StreamingPairedDataModule, StreamingUnpairedDataModule
from pix2pix_lit.data.unpaired import SyntheticUnpairedDataModule, UnpairedDataModule

__all__ = [
    "AlignedDataset",
    "FolderPairDataset",
    "ImageDataModule",
    "PairedDataModule",
    "SeededSampler",
    "SingleImageDataset",
    "StreamingPairedDataModule",
    "StreamingUnpairedDataModule",
    "SyntheticLabelDataModule",
    "SyntheticPairedDataModule",
    "SyntheticUnpairedDataModule",
    "UnpairedDataModule",
]
