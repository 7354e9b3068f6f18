"""PairedDataModule: train/val/test splits of paired images (source -> target), and single images for predict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional

from torch.utils.data import Dataset

from pix2pix_lit.data.base import ImageDataModule, Part
from pix2pix_lit.data.datasets import (
    AlignedDataset,
    FolderPairDataset,
    SeededSubset,
    SingleImageDataset,
    fingerprint,
    keyed_images,
    match_pairs,
)
from pix2pix_lit.data.io import list_images, predict_item
from pix2pix_lit.data.labels import LabelMapsForPredict, LabelPairDataset
from pix2pix_lit.data.synthetic import CLASSES, BuiltInData
from pix2pix_lit.errors import ConfigError, DataError, check_choice
from pix2pix_lit.modes import DIRECTIONS, Direction

log = logging.getLogger(__name__)


# where the label-map datasets keep their files, as users download them
LABEL_LAYOUTS = {
    # gtFine/{split}/{city}/*_gtFine_labelIds.png (+ *_gtFine_instanceIds.png), leftImg8bit/{split}/{city}/*_leftImg8bit.png
    "cityscapes": dict(a_dir="gtFine/{split}", b_dir="leftImg8bit/{split}", a_suffix="_gtFine_labelIds.png",
                       b_suffix="_leftImg8bit.png", instance_dir="gtFine/{split}", instance_suffix="_gtFine_instanceIds.png"),
    # ADEChallengeData2016: annotations/{training,validation}/*.png, images/{training,validation}/*.jpg
    "ade20k": dict(a_dir="annotations/{split}", b_dir="images/{split}", a_suffix="", b_suffix="", instance_dir=None,
                   instance_suffix=""),
}


class PairedDataModule(ImageDataModule):
    """Paired images on disk: image -> image, or label map -> photo.

    Args:
        layout: ``aligned``: side-by-side A|B files in ``root/{train,val,test}`` (the official format);
            ``folders``: A and B images in separate folders (``a_dir``/``b_dir``, ``{split}`` is
            replaced by the split name) matched by name, ``a_suffix``/``b_suffix`` stripped. With label maps
            (``label_nc`` > 0): ``folders`` (A: id maps, B: photos, instance maps in ``instance_dir`` named with
            ``instance_suffix``), ``cityscapes`` (the download's ``gtFine/`` and ``leftImg8bit/``, label and
            instance ids) or ``ade20k`` (``annotations/`` and ``images/``; 0 is unlabelled, the classes 1..150).
        direction: ``AtoB`` or ``BtoA`` (the source is B, the target A); label maps are always the source.
        The other options (root, channels, preprocessing, loaders, splits, predict_dir, ...) are those of
        :class:`~pix2pix_lit.data.base.ImageDataModule`; ``input_nc``/``output_nc`` are the source's and the
        target's channels.
    """

    def __init__(
        self,
        root: str = "data",
        layout: Literal["aligned", "folders", "cityscapes", "ade20k"] = "aligned",
        direction: Direction = "AtoB",
        a_dir: str = "{split}/A",
        b_dir: str = "{split}/B",
        a_suffix: str = "",
        b_suffix: str = "",
        instance_dir: Optional[str] = None,
        instance_suffix: str = "",
        **kwargs: Any,
    ) -> None:
        check_choice("data.layout", layout, ("aligned", "folders", *LABEL_LAYOUTS))
        check_choice("data.direction", direction, DIRECTIONS)
        labels = kwargs.get("label_nc", 0) > 0
        if layout in LABEL_LAYOUTS and not labels:
            raise ConfigError(f"data.layout={layout} holds label maps: set data.label_nc (Cityscapes 35, ADE20K 150)")
        if labels and layout == "aligned":
            raise ConfigError("data.label_nc: label maps cannot be one half of a side-by-side file (their ids would be "
                              "resampled with the photo); use data.layout folders, cityscapes or ade20k")
        if labels and direction != "AtoB":
            raise ConfigError("data.direction=BtoA: label maps are the source (labels -> photos); use AtoB")
        super().__init__(root=root, **kwargs)

    # -- how a split is read ------------------------------------------------------------------------------
    def folders(self) -> dict[str, Any]:
        """a_dir, b_dir, a_suffix, b_suffix, instance_dir, instance_suffix: the options, or the label layout's."""
        h = self.hparams
        keys = ("a_dir", "b_dir", "a_suffix", "b_suffix", "instance_dir", "instance_suffix")
        return LABEL_LAYOUTS.get(h.layout) or {k: h.get(k) for k in keys}

    def split_exists(self, split: str) -> bool:
        h = self.hparams
        if h.layout == "aligned":
            return (self.root / split).is_dir()
        return (self.root / self.folders()["a_dir"].format(split=split)).is_dir()

    @property
    def instance_edges(self) -> bool:
        """Whether label maps come with instance maps (an edge channel for the model)."""
        return self.hparams.label_nc > 0 and not self.hparams.no_instance

    def _label_pairs(self, split: str, transform) -> LabelPairDataset:
        h, f = self.hparams, self.folders()
        dir_a, dir_b = self.root / f["a_dir"].format(split=split), self.root / f["b_dir"].format(split=split)
        pairs = match_pairs(dir_a, dir_b, f["a_suffix"], f["b_suffix"])[: h.max_dataset_size]
        instances: dict[str, Path] = {}
        if self.instance_edges:
            if not f["instance_dir"]:
                raise ConfigError("label maps with instance edges need instance maps: set data.instance_dir (and "
                                  "data.instance_suffix), or data.no_instance true to train without them")
            instances = keyed_images(self.root / f["instance_dir"].format(split=split), f["instance_suffix"])
            missing = [name for name, _, _ in pairs if name not in instances]
            if missing:
                raise DataError(f"{len(missing)} label map(s) have no instance map in "
                                f"{self.root / f['instance_dir'].format(split=split)} (e.g. {missing[0]!r} + "
                                f"{f['instance_suffix'] or 'the same name'!r}); set data.no_instance true to train without them")
        entries = [(name, a, b, instances.get(name)) for name, a, b in pairs]
        return LabelPairDataset(entries, transform, h.label_nc, h.contain_dontcare_label, h.output_nc,
                                ade20k=h.layout == "ade20k", strict_channels=h.strict_channels)

    def _pairs(self, split: str, train: bool) -> Dataset:
        h = self.hparams
        self.require_root()
        transform = self.train_transform if train else self.eval_transform
        if h.label_nc > 0:
            return self._label_pairs(split, transform)
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
        return SeededSubset(dataset, trained if part == "train" else held_out)

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        """The training targets (``target``), read as evaluation reads images, with their fingerprint."""
        train = self.make_split(self.hparams.train_split, train=False, part=self.trained_part)
        return {"target": (_Field(train, "target"), fingerprint(train, "target"))}

    def make_predict_dataset(self) -> Dataset:
        h = self.hparams
        if h.predict_dir is not None:
            folder = Path(h.predict_dir)
            if h.label_nc > 0:
                return LabelMapsForPredict(list_images(folder), folder, h.label_nc, h.contain_dontcare_label,
                                           self.instance_edges, ade20k=h.layout == "ade20k")
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
        return predict_item(item["source"], f"{item['name']}.png", item.get("edges"))


class SyntheticPairedDataModule(BuiltInData, PairedDataModule):
    """The built-in dataset (label layouts -> "photos"), generated into ``root`` on first use; needs no download.
    Options: :class:`~pix2pix_lit.data.synthetic.BuiltInData`'s and :class:`PairedDataModule`'s."""

    def __init__(self, root: str = "data/synthetic", batch_size: int = 4, **kwargs: Any) -> None:
        super().__init__(root=root, batch_size=batch_size, layout="aligned", **kwargs)
        # under LightningCLI the hyper-parameters are the config's, which has no layout (not an option here)
        self.hparams["layout"] = "aligned"


class SyntheticLabelDataModule(BuiltInData, PairedDataModule):
    """The built-in scenes as label maps -> photos: class ids (sky, building, vegetation, road, car), 16-bit
    instance ids (each building, tree and car an object) and the photos, generated into ``root`` on first use;
    needs no download. Options: :class:`~pix2pix_lit.data.synthetic.BuiltInData`'s and :class:`PairedDataModule`'s
    (``no_instance`` true leaves the instance edges out)."""

    built_in_form = "labels"
    folders_written = dict(layout="folders", a_dir="{split}/labels", b_dir="{split}/photos",
                           instance_dir="{split}/instances")

    def __init__(self, root: str = "data/synthetic-labels", batch_size: int = 4, label_nc: int = len(CLASSES),
                 **kwargs: Any) -> None:
        if label_nc < len(CLASSES):
            raise ConfigError(f"data.label_nc={label_nc}: the built-in label maps have {len(CLASSES)} classes "
                              f"({', '.join(CLASSES)})")
        super().__init__(root=root, batch_size=batch_size, label_nc=label_nc, layout="folders", a_dir="{split}/labels",
                         b_dir="{split}/photos", instance_dir="{split}/instances", **kwargs)
        # under LightningCLI the hyper-parameters are the config's, which has none of these (not options here)
        self.hparams.update(self.folders_written)
        if not self.hparams.get("class_names"):  # what export writes into the file for the paint page
            self.hparams["class_names"] = list(CLASSES)
