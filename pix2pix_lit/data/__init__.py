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
    "resolve_data_class",
]

# the data module of each kind of model (its ``data_kind``): what ``--data.root DIR`` alone reads, as the official
# code's default dataset_mode per model (pix2pix: aligned A|B pairs; CycleGAN: unaligned trainA/trainB)
DATA_MODULES = {"paired": PairedDataModule, "unpaired": UnpairedDataModule}


def resolve_data_class(path: str) -> type:
    """The data module class of a ``class_path`` (a full import path, or a class name in ``pix2pix_lit.data``)."""
    from pix2pix_lit.errors import ConfigError, find_class

    data_class = find_class(path, ["pix2pix_lit.data"])
    if not (data_class is not None and issubclass(data_class, ImageDataModule)):
        raise ConfigError(f"data class {path!r} is not a data module of pix2pix-lit; use e.g. PairedDataModule, "
                          "UnpairedDataModule, SyntheticPairedDataModule (pix2pix_lit.data), or your own subclass of "
                          "pix2pix_lit.data.ImageDataModule by its import path")
    return data_class
