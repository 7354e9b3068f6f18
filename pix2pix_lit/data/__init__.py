"""Paired and unpaired image data: datasets, joint transforms, the DataModule and the built-in synthetic set."""

from pix2pix_lit.data.base import ImageDataModule
from pix2pix_lit.data.datasets import AlignedDataset, FolderPairDataset, SeededSampler, SingleImageDataset
from pix2pix_lit.data.paired import PairedDataModule, SyntheticLabelDataModule, SyntheticPairedDataModule
from pix2pix_lit.data.streaming import StreamingPairedDataModule, StreamingUnpairedDataModule
from pix2pix_lit.data.unpaired import SyntheticUnpairedDataModule, UnpairedDataModule

__all__ = [
    "DATA_MODULES",
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

# the data module of each kind of model (its ``data_kind``): what ``--data.root DIR`` alone reads, as the official
# code's default dataset_mode per model (pix2pix: aligned A|B pairs; CycleGAN: unaligned trainA/trainB)
DATA_MODULES = {"paired": PairedDataModule, "unpaired": UnpairedDataModule}
