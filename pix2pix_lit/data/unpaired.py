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

import torch
from torch.utils.data import DataLoader, Dataset

from pix2pix_lit.data.datamodule import PairedDataModule
from pix2pix_lit.data.datasets import Index, SingleImageDataset, _split_index, fingerprint
from pix2pix_lit.data.io import (
    check_decodable,
    check_mode,
    convert_channels,
    list_images,
    load_image,
    log_converted,
    oriented_size,
    peek_image,
    to_tensor,
)
from pix2pix_lit.data.synthetic import BuiltInData
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import DataError

log = logging.getLogger(__name__)

HALVES = {"left", "right"}


class DomainImages:
    """The images of one domain: files, or one half of side-by-side files (``half``: left | right)."""

    def __init__(self, files: list[Path], nc: int, option: str, half: Optional[str] = None, check: bool = True,
                 strict_channels: bool = False) -> None:
        self.files, self.nc, self.option, self.half = list(files), nc, option, half
        self.strict_channels = strict_channels
        if check:
            converted = 0
            for path in self.files:
                with peek_image(path) as img:
                    width = oriented_size(img)[0]
                    if half is not None and width % 2:
                        raise DataError(f"{path} is {width} pixels wide, an odd width: side-by-side A|B files "
                                        "need an even width; re-export it or use data.layout: folders")
                    converted += check_mode(path, img.mode, img.getbands(), nc, option, strict_channels)
            if self.files:
                log_converted(converted, option, str(self.files[0].parent))
            check_decodable(self.files)

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
        i, rng = _split_index(index)
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
        i, rng = _split_index(index)
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


class UnpairedDataModule(PairedDataModule):
    """Two unpaired domains A and B on disk (see the module docstring).

    Args:
        root: dataset folder.
        layout: ``folders`` (default): the official ``root/trainA``, ``root/trainB``, ``testA``, ``testB``
            (``a_dir``/``b_dir`` with ``{split}``; ``valA``/``valB`` when present); ``aligned``: side-by-side A|B
            files in ``root/{train,val,test}``, the halves used as two domains.
        direction: the way ``predict`` translates its images: ``AtoB`` (G_A) or ``BtoA`` (G_B).
        input_nc, output_nc: channels of domain A and domain B.
        preprocess, load_size, crop_size, no_flip, eval_load_size: as for paired data.
        serial_batches: B image ``i mod |B|`` with A image ``i`` and no shuffling (official option).
        val_fraction: without a val split, this part of each domain's train images is held out (seeded).
        predict_dir: images (any size) of the direction's source domain; default: the test split's.
        strict_channels: as for paired data (grayscale images of an RGB domain are read as RGB unless true).
    """

    def __init__(
        self,
        root: str = "data",
        layout: Literal["folders", "aligned"] = "folders",
        direction: Literal["AtoB", "BtoA"] = "AtoB",
        input_nc: int = 3,
        output_nc: int = 3,
        preprocess: Literal["resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"] = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        no_flip: bool = False,
        eval_load_size: Optional[int] = None,
        batch_size: int = 1,
        eval_batch_size: Optional[int] = None,
        num_workers: Optional[int] = None,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        serial_batches: bool = False,
        max_dataset_size: Optional[int] = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        a_dir: str = "{split}A",
        b_dir: str = "{split}B",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        predict_dir: Optional[str] = None,
        strict_channels: bool = False,
    ) -> None:
        super().__init__(
            root=root, layout=layout, direction=direction, input_nc=input_nc, output_nc=output_nc, preprocess=preprocess,
            load_size=load_size, crop_size=crop_size, no_flip=no_flip, eval_load_size=eval_load_size,
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
            persistent_workers=persistent_workers, pin_memory=pin_memory,
            serial_batches=serial_batches, max_dataset_size=max_dataset_size, val_fraction=val_fraction, seed=seed,
            a_dir=a_dir, b_dir=b_dir, train_split=train_split, val_split=val_split, test_split=test_split,
            predict_dir=predict_dir, strict_channels=strict_channels,
        )
        # one image at a time: the joint transform of the paired data, applied to each domain on its own
        self.train_transform = JointTransform(preprocess, load_size, crop_size, flip=not no_flip, train=True)

    # -- building datasets -------------------------------------------------------------------------
    def _split_exists(self, split: str) -> bool:
        h = self.hparams
        if h.layout == "aligned":
            return (self.root / split).is_dir()
        return (self.root / h.a_dir.format(split=split)).is_dir() and (self.root / h.b_dir.format(split=split)).is_dir()

    def _domains(self, split: str) -> tuple[DomainImages, DomainImages]:
        h = self.hparams
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist; set data.root to your dataset")
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

    def _carve(self, n: int, salt: int) -> tuple[list[int], list[int]]:
        if n < 2:
            raise DataError(f"{self.root}: a domain of the train split has {n} image(s); a val split needs at least 2")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed + salt)).tolist()
        n_val = max(1, round(n * self.hparams.val_fraction))
        return sorted(perm[n_val:]), sorted(perm[:n_val])

    def _split_sets(self, split: str, train: bool, part: Optional[str] = None) -> UnpairedDataset:
        """The split's two domains; ``part`` = train | val carves a held-out val part from the train split."""
        h = self.hparams
        A, B = self._domains(split)
        paired = h.layout == "aligned"
        if part is not None:
            if paired:  # the same files in both domains: one carve-out keeps val pairs whole
                keep_a = self._carve(len(A), 0)[0 if part == "train" else 1]
                A, B = A.subset(keep_a), B.subset(keep_a)
            else:
                A = A.subset(self._carve(len(A), 0)[0 if part == "train" else 1])
                B = B.subset(self._carve(len(B), 1)[0 if part == "train" else 1])
        transform = self.train_transform if train else self.eval_transform
        return UnpairedDataset(A, B, transform, serial=h.serial_batches or not train, paired=paired and not train)

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        """Each domain's training images (``A``, ``B``), read as evaluation reads images, with a fingerprint of
        them: what MiFID's memorization term compares generated images with."""
        h = self.hparams
        split = self._split_sets(h.train_split, train=False, part=None if self._split_exists(h.val_split) else "train")
        views = {d: DomainView(split, d) for d in "AB"}
        return {d: (view, fingerprint(view)) for d, view in views.items()}

    def _val_set(self) -> UnpairedDataset:
        h = self.hparams
        if self._split_exists(h.val_split):
            return self._split_sets(h.val_split, train=False)
        log.info("no %s split in %s: holding out part of each domain's train images for validation", h.val_split,
                 self.root)
        return self._split_sets(h.train_split, train=False, part="val")

    def _build(self, stage: str) -> dict[str, Any]:
        h = self.hparams
        if stage == "fit":
            carve = None if self._split_exists(h.val_split) else "train"
            return {"train_dataset": self._split_sets(h.train_split, train=True, part=carve), "val_dataset": self._val_set()}
        if stage == "validate":
            return {"val_dataset": self._val_set()}
        if stage == "test":
            if self._split_exists(h.test_split) and h.test_split != h.val_split:
                self.test_split_used = h.test_split
                return {"test_dataset": self._split_sets(h.test_split, train=False)}
            self.test_split_used = h.val_split
            log.warning("testing on the validation split (%s): the split that chose best-*.ckpt, so these numbers are "
                        "optimistic; name a held-out split with data.test_split", h.val_split)
            return {"test_dataset": self._val_set()}
        if stage == "predict":
            return {"predict_dataset": self._predict_dataset()}
        return {}

    def _predict_dataset(self) -> Dataset:
        h = self.hparams
        nc = h.input_nc if h.direction == "AtoB" else h.output_nc
        if h.predict_dir is not None:
            folder = Path(h.predict_dir)
            return SingleImageDataset(list_images(folder), folder, nc, direction=h.direction, strict_channels=h.strict_channels)
        split = h.test_split if self._split_exists(h.test_split) else h.val_split
        if not self._split_exists(split):
            raise DataError(f"no {h.test_split} or {h.val_split} split in {self.root} to predict; set data.predict_dir")
        A, B = self._domains(split)
        images = A if h.direction == "AtoB" else B
        log.info("data.predict_dir is not set: predicting the %s split's %s images", split, h.direction[0])
        return _DomainImagesForPredict(images, h.direction)

    def _evaluated_sizes(self, dataset: Dataset, name: str) -> dict[str, int]:
        return {f"{name}'s domain {d}": len(getattr(dataset, d)) for d in "AB"}

    # -- loaders -------------------------------------------------------------------------------------

    def val_dataloader(self) -> list[DataLoader]:
        # two loaders: A images (translated by G_A, the reals of FID_A) and B images
        return [self._eval_loader(DomainView(self.val_dataset, d), self.eval_batch_size) for d in "AB"]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(DomainView(self.test_dataset, d), self.eval_batch_size) for d in "AB"]


class _DomainImagesForPredict(Dataset):
    def __init__(self, images: DomainImages, direction: str) -> None:
        self.images, self.direction = images, direction

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        t = to_tensor(self.images.read(index))
        return {"source": t, "name": f"{self.images.name(index)}.png", "size": torch.tensor(t.shape[-2:]),
                "direction": self.direction}


class SyntheticUnpairedDataModule(BuiltInData, UnpairedDataModule):
    """The built-in data as two unpaired domains: label layouts (A) and shaded "photos" (B), each B drawn
    independently of its A in training (the files' halves are never shown as pairs). No download; the
    val pairs give SSIM/PSNR besides FID. ``image_size``: the side of the stored images."""

    def __init__(
        self,
        root: str = "data/synthetic",
        num_train: int = 400,
        num_val: int = 48,
        num_test: int = 48,
        image_size: int = 72,
        dataset_seed: int = 0,
        direction: Literal["AtoB", "BtoA"] = "AtoB",
        input_nc: int = 3,
        output_nc: int = 3,
        preprocess: Literal["resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"] = "resize_and_crop",
        load_size: int = 72,
        crop_size: int = 64,
        no_flip: bool = False,
        eval_load_size: Optional[int] = None,
        batch_size: int = 1,
        eval_batch_size: Optional[int] = None,
        num_workers: Optional[int] = None,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        serial_batches: bool = False,
        max_dataset_size: Optional[int] = None,
        seed: int = 0,
        test_split: str = "test",
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(
            root=root, layout="aligned", direction=direction, input_nc=input_nc, output_nc=output_nc,
            preprocess=preprocess, load_size=load_size, crop_size=crop_size, no_flip=no_flip,
            eval_load_size=eval_load_size, batch_size=batch_size, eval_batch_size=eval_batch_size,
            num_workers=num_workers, persistent_workers=persistent_workers, pin_memory=pin_memory, serial_batches=serial_batches,
            max_dataset_size=max_dataset_size, seed=seed, test_split=test_split, predict_dir=predict_dir,
        )
        self.use_built_in(num_train, num_val, num_test, image_size, dataset_seed)
