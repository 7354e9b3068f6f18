"""PairedDataModule: train/val/test splits of paired images (source -> target), and single images for predict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Subset

from pix2pix_lit.data.base import ImageDataModule, Part
from pix2pix_lit.data.datasets import AlignedDataset, FolderPairDataset, SingleImageDataset, fingerprint, match_pairs
from pix2pix_lit.data.io import list_images
from pix2pix_lit.data.synthetic import BuiltInData
from pix2pix_lit.errors import check_choice
from pix2pix_lit.modes import DIRECTIONS, Direction

log = logging.getLogger(__name__)


class PairedDataModule(ImageDataModule):
    """Paired images on disk, in one of two layouts.

    Args:
        layout: ``aligned``: side-by-side A|B files in ``root/{train,val,test}`` (the official format);
            ``folders``: A and B images in separate folders (``a_dir``/``b_dir``, ``{split}`` is
            replaced by the split name) matched by name, ``a_suffix``/``b_suffix`` stripped.
        direction: ``AtoB`` or ``BtoA`` (the source is B, the target A).
        The other options (root, channels, preprocessing, loaders, splits, predict_dir, ...) are those of
        :class:`~pix2pix_lit.data.base.ImageDataModule`; ``input_nc``/``output_nc`` are the source's and the
        target's channels.
    """

    def __init__(
        self,
        root: str = "data",
        layout: Literal["aligned", "folders"] = "aligned",
        direction: Direction = "AtoB",
        a_dir: str = "{split}/A",
        b_dir: str = "{split}/B",
        a_suffix: str = "",
        b_suffix: str = "",
        **kwargs: Any,
    ) -> None:
        check_choice("data.layout", layout, ("aligned", "folders"))
        check_choice("data.direction", direction, DIRECTIONS)
        super().__init__(root=root, **kwargs)

    # -- how a split is read ------------------------------------------------------------------------------
    def split_exists(self, split: str) -> bool:
        h = self.hparams
        if h.layout == "aligned":
            return (self.root / split).is_dir()
        return (self.root / h.a_dir.format(split=split)).is_dir()

    def _pairs(self, split: str, train: bool) -> Dataset:
        h = self.hparams
        self.require_root()
        transform = self.train_transform if train else self.eval_transform
        if h.layout == "aligned":
            files = list_images(self.root / split)[: h.max_dataset_size]
            return AlignedDataset(files, transform, h.direction, h.input_nc, h.output_nc, strict_channels=h.strict_channels)
        pairs = match_pairs(
            self.root / h.a_dir.format(split=split), self.root / h.b_dir.format(split=split), h.a_suffix, h.b_suffix
        )[: h.max_dataset_size]
        return FolderPairDataset(pairs, transform, h.direction, h.input_nc, h.output_nc,
                                 strict_channels=h.strict_channels)

    def make_split(self, split: str, train: bool, part: Part = None) -> Dataset:
        dataset = self._pairs(split, train)
        if part is None:
            return dataset
        trained, held_out = self.carve(len(dataset))
        return Subset(dataset, trained if part == "train" else held_out)

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        """The training targets (``target``), read as evaluation reads images, with their fingerprint."""
        train = self.make_split(self.hparams.train_split, train=False, part=self.trained_part)
        return {"target": (_Field(train, "target"), fingerprint(train, "target"))}

    def make_predict_dataset(self) -> Dataset:
        h = self.hparams
        if h.predict_dir is not None:
            folder = Path(h.predict_dir)
            return SingleImageDataset(list_images(folder), folder, h.input_nc, strict_channels=h.strict_channels)
        split = self.predict_split()
        log.info("data.predict_dir is not set: predicting the %s split's sources", split)
        return _SourcesOnly(self.make_split(split, train=False))


class _Field(Dataset):
    """One image of each sample of a dataset, as ``{"image"}``."""

    def __init__(self, dataset: Dataset, key: str) -> None:
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.dataset[index][self.key]}


class _SourcesOnly(Dataset):
    """A paired dataset seen as single images (its sources), for predict without predict_dir."""

    def __init__(self, paired: Dataset) -> None:
        self.paired = paired

    def __len__(self) -> int:
        return len(self.paired)

    def __getitem__(self, index: int) -> dict:
        item = self.paired[index]
        src = item["source"]
        return {"source": src, "name": f"{item['name']}.png", "size": torch.tensor(src.shape[-2:])}


class SyntheticPairedDataModule(BuiltInData, PairedDataModule):
    """The built-in dataset (label layouts -> "photos"), generated into ``root`` on first use; needs no download.
    Options: :class:`~pix2pix_lit.data.synthetic.BuiltInData`'s and :class:`PairedDataModule`'s."""

    def __init__(self, root: str = "data/synthetic", batch_size: int = 4, **kwargs: Any) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
