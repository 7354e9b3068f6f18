"""Unpaired data for CycleGAN-like models: two domains A and B with any counts and sizes.

Layouts: the official ``root/{trainA,trainB,testA,testB}`` (``valA/valB`` when present), or side-by-side
A|B files read as two domains (the halves drawn independently, never as pairs in training; their pairs
still give SSIM/PSNR at validation). A training item is ``{"A", "B", "name_A", "name_B"}``: A image ``i``
with a random B image (``serial_batches``: B image ``i mod |B|``), as the official ``UnalignedDataset``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional

from torch.utils.data import Dataset

from pix2pix_lit.data.base import ImageDataModule, Part
from pix2pix_lit.data.datasets import Index, SingleImageDataset, fingerprint, split_index
from pix2pix_lit.data.io import (
    check_image_files,
    convert_channels,
    list_images,
    load_image,
    predict_item,
    to_tensor,
)
from pix2pix_lit.data.synthetic import BuiltInData
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import ConfigError, DataError, check_choice

log = logging.getLogger(__name__)


class DomainImages:
    """The images of one domain: files, or one half of side-by-side files (``half``: left | right)."""

    def __init__(self, files: list[Path], nc: int, option: str, half: Optional[str] = None, check: bool = True,
                 strict_channels: bool = False) -> None:
        self.files, self.nc, self.option, self.half = list(files), nc, option, half
        self.strict_channels = strict_channels
        if check:
            check_image_files(self.files, {option: nc}, strict_channels, even_width=half is not None)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: list[int]) -> "DomainImages":
        return DomainImages([self.files[i] for i in indices], self.nc, self.option, self.half, check=False,
                            strict_channels=self.strict_channels)

    def name(self, i: int) -> str:
        return self.files[i].stem

    def read(self, i: int):
        path = self.files[i]
        with load_image(path) as img:
            if self.half is not None:
                w, h = img.size
                img = img.crop((0, 0, w // 2, h) if self.half == "left" else (w // 2, 0, w, h))
            img.load()
            return convert_channels(img.copy(), self.nc, path, self.option, self.strict_channels)

    def describe(self) -> str:
        return f"DomainImages half={self.half} nc={self.nc}"


class UnpairedDataset(Dataset):
    """A image ``i mod |A|`` with a B image: random (seeded per sample) or ``i mod |B|`` (``serial``).

    The length is ``max(|A|, |B|)``, as the official code; A and B are cropped and flipped independently.
    ``paired``: B image ``i`` is the true counterpart of A image ``i`` (side-by-side files); evaluation then
    also reports SSIM/PSNR.
    """

    def __init__(self, A: DomainImages, B: DomainImages, transform: JointTransform, serial: bool = False,
                 paired: bool = False) -> None:
        if len(A) == 0 or len(B) == 0:
            raise DataError("an unpaired split needs images in both domains (A and B)")
        self.A, self.B, self.transform, self.serial, self.paired = A, B, transform, serial, paired

    def __len__(self) -> int:
        return max(len(self.A), len(self.B))

    def __getitem__(self, index: Index) -> dict[str, Any]:
        i, rng = split_index(index)
        ia = i % len(self.A)
        ib = i % len(self.B) if self.serial else rng.randint(0, len(self.B) - 1)
        (a,) = self.transform([self.A.read(ia)], rng)
        (b,) = self.transform([self.B.read(ib)], rng)  # its own crop and flip
        return {"A": to_tensor(a), "B": to_tensor(b), "name_A": self.A.name(ia), "name_B": self.B.name(ib)}


class DomainView(Dataset):
    """One domain of an unpaired split for evaluation: ``{"image", "name"}`` (+ ``"target"``, the true
    counterpart in the other domain, when the split is paired)."""

    def __init__(self, split: UnpairedDataset, domain: str) -> None:
        self.split, self.domain = split, domain
        self.images = split.A if domain == "A" else split.B
        self.other = split.B if domain == "A" else split.A

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Index) -> dict[str, Any]:
        i, rng = split_index(index)
        item: dict[str, Any] = {"name": self.images.name(i)}
        if self.split.paired:
            image, target = self.split.transform([self.images.read(i), self.other.read(i)], rng)
            item["target"] = to_tensor(target)
        else:
            (image,) = self.split.transform([self.images.read(i)], rng)
        item["image"] = to_tensor(image)
        return item

    def describe(self) -> str:
        return f"DomainView {self.domain} paired={self.split.paired} {self.images.describe()} {self.split.transform!r}"

    def sample_files(self) -> list[Path]:
        return self.images.files + (self.other.files if self.split.paired else [])


class UnpairedDataModule(ImageDataModule):
    """Two unpaired domains A and B on disk (see the module docstring).

    Args:
        layout: ``folders`` (default): the official ``root/trainA``, ``root/trainB``, ``testA``, ``testB``
            (``a_dir``/``b_dir`` with ``{split}``; ``valA``/``valB`` when present); ``aligned``: side-by-side A|B
            files in ``root/{train,val,test}``, the halves used as two domains.
        The other options are those of :class:`~pix2pix_lit.data.base.ImageDataModule`: ``input_nc``/``output_nc``
        are the channels of domain A and domain B; ``serial_batches``: B image ``i mod |B|`` with A image ``i``
        and no shuffling (official option); without a val split, ``val_fraction`` of each domain's train images
        is held out (seeded); ``predict_dir``: images (any size) of the source domain of the model's
        ``predict_direction`` (default: the test split's images of that domain).
    """

    def __init__(
        self,
        root: str = "data",
        layout: Literal["folders", "aligned"] = "folders",
        a_dir: str = "{split}A",
        b_dir: str = "{split}B",
        **kwargs: Any,
    ) -> None:
        check_choice("data.layout", layout, ("folders", "aligned"))
        if kwargs.get("label_nc", 0):
            raise ConfigError("data.label_nc: label maps are paired with their photos; use "
                              "pix2pix_lit.data.PairedDataModule (data.layout folders, cityscapes or ade20k)")
        super().__init__(root=root, **kwargs)

    # -- how a split is read ------------------------------------------------------------------------------
    def split_exists(self, split: str) -> bool:
        h = self.hparams
        if h.layout == "aligned":
            return (self.root / split).is_dir()
        return (self.root / h.a_dir.format(split=split)).is_dir() and (self.root / h.b_dir.format(split=split)).is_dir()

    def _domains(self, split: str) -> tuple[DomainImages, DomainImages]:
        h = self.hparams
        self.require_root()
        if h.layout == "aligned":
            files = list_images(self.root / split)[: h.max_dataset_size]
            return (DomainImages(files, h.input_nc, "data.input_nc", "left", strict_channels=h.strict_channels),
                    DomainImages(files, h.output_nc, "data.output_nc", "right", check=False,
                                 strict_channels=h.strict_channels))
        dirs = [self.root / h.a_dir.format(split=split), self.root / h.b_dir.format(split=split)]
        for d in dirs:
            if not d.is_dir():
                raise DataError(f"{d} does not exist; unpaired data needs {dirs[0].name}/ and {dirs[1].name}/ under "
                                f"{self.root} (or data.layout: aligned for side-by-side files)")
        return (DomainImages(list_images(dirs[0])[: h.max_dataset_size], h.input_nc, "data.input_nc",
                             strict_channels=h.strict_channels),
                DomainImages(list_images(dirs[1])[: h.max_dataset_size], h.output_nc, "data.output_nc",
                             strict_channels=h.strict_channels))

    def make_split(self, split: str, train: bool, part: Part = None) -> UnpairedDataset:
        """The split's two domains; ``part`` = train | val: the trained or held-out part of the train split."""
        h = self.hparams
        A, B = self._domains(split)
        paired = h.layout == "aligned"
        if part is not None:
            keep = 0 if part == "train" else 1
            what = "a domain of the train split"
            if paired:  # the same files in both domains: one carve-out keeps val pairs whole
                keep_a = self.carve(len(A), 0, what)[keep]
                A, B = A.subset(keep_a), B.subset(keep_a)
            else:
                A = A.subset(self.carve(len(A), 0, what)[keep])
                B = B.subset(self.carve(len(B), 1, what)[keep])
        transform = self.train_transform if train else self.eval_transform
        return UnpairedDataset(A, B, transform, serial=h.serial_batches or not train, paired=paired and not train)

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        """Each domain's training images (``A``, ``B``), read as evaluation reads images, with their fingerprint."""
        split = self.make_split(self.hparams.train_split, train=False, part=self.trained_part)
        views = {d: DomainView(split, d) for d in "AB"}
        return {d: (view, fingerprint(view)) for d, view in views.items()}

    def predict_direction(self) -> str:
        """The model's ``predict_direction``: its source domain is the one ``predict`` reads."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(model, "predict_direction", "AtoB")

    def make_predict_dataset(self) -> Dataset:
        h = self.hparams
        direction = self.predict_direction()
        nc = h.input_nc if direction == "AtoB" else h.output_nc
        if h.predict_dir is not None:
            folder = Path(h.predict_dir)
            return SingleImageDataset(list_images(folder), folder, nc, strict_channels=h.strict_channels)
        split = self.predict_split()
        A, B = self._domains(split)
        log.info("data.predict_dir is not set: predicting the %s split's %s images", split, direction[0])
        return _DomainImagesForPredict(A if direction == "AtoB" else B)

    def evaluated_sizes(self, dataset: Dataset, name: str) -> dict[str, int]:
        return {f"{name}'s domain {d}": len(getattr(dataset, d)) for d in "AB"}

    def eval_datasets(self, dataset: Dataset) -> list[Dataset]:
        # two loaders: A images (translated by G_A, the reals of FID_A) and B images
        return [DomainView(dataset, d) for d in "AB"]


class _DomainImagesForPredict(Dataset):
    def __init__(self, images: DomainImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return predict_item(to_tensor(self.images.read(index)), f"{self.images.name(index)}.png")


class SyntheticUnpairedDataModule(BuiltInData, UnpairedDataModule):
    """The built-in data as two unpaired domains: label layouts (A) and shaded "photos" (B), each B drawn
    independently of its A in training (the files' halves are never shown as pairs). No download; the
    val pairs give SSIM/PSNR besides FID. Options: :class:`~pix2pix_lit.data.synthetic.BuiltInData`'s and
    :class:`UnpairedDataModule`'s."""

    def __init__(self, root: str = "data/synthetic", **kwargs: Any) -> None:
        super().__init__(root=root, layout="aligned", **kwargs)
        # under LightningCLI the hyper-parameters are the config's, which has no layout (not an option here)
        self.hparams["layout"] = "aligned"
