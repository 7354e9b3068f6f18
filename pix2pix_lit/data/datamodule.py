"""PairedDataModule: train/val/test splits of paired images, and single images for predict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Subset

from pix2pix_lit.data.datasets import (
    AlignedDataset,
    FolderPairDataset,
    SeededSampler,
    SingleImageDataset,
    fingerprint,
    match_pairs,
)
from pix2pix_lit.data.io import check_channels_option, list_images
from pix2pix_lit.data.synthetic import BuiltInData
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import ConfigError, DataError
from pix2pix_lit.lightning_internals import batches_done_in_epoch

log = logging.getLogger(__name__)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class PairedDataModule(pl.LightningDataModule):
    """Paired images on disk, in one of two layouts.

    Args:
        root: dataset folder.
        layout: ``aligned``: side-by-side A|B files in ``root/{train,val,test}`` (the official format);
            ``folders``: A and B images in separate folders (``a_dir``/``b_dir``, ``{split}`` is
            replaced by the split name) matched by name, ``a_suffix``/``b_suffix`` stripped.
        direction: ``AtoB`` or ``BtoA`` (the source is B, the target A).
        input_nc, output_nc: channels of source and target (1 = grayscale, e.g. sketches; 3; 4).
        preprocess, load_size, crop_size, no_flip: the official preprocessing of training images.
        eval_load_size: the load size of val/test images. ``null`` (default): the official test protocol,
            ``load_size = crop_size``: the whole image resized to ``crop_size``, no crop (as published numbers).
            A larger value (e.g. 286) resizes to it and takes the centre ``crop_size`` crop. Never flipped.
        batch_size, num_workers, persistent_workers, pin_memory: DataLoader settings (persistent_workers: the
            training loader; evaluation workers end with each pass). ``num_workers: null`` (default) picks by
            device: none when the model runs on the CPU, else 4 (the official default) capped by the CPUs there
            are per process. On the CPU the step's threads use every core, so workers compete with them: on 2
            cores the maps recipe ran 0.34 s an iteration loading in the training process against 0.41 s with
            2 workers, and without the ~0.7 GB of the trainer's old pages forked workers keep
            (experiments/RESULTS.md, the training-memory section).
        eval_batch_size: batch size of the val/test loaders (default: ``batch_size``). Scores do not depend on it
            (the ``paper`` inference mode runs the generator one image at a time, ``eval`` uses running statistics);
            larger batches feed the FID Inception faster.
        serial_batches: keep file order in training instead of shuffling (official option).
        max_dataset_size: use at most this many samples per split.
        val_fraction: part of train held out for validation (seeded by ``seed``) when there is no val split.
        seed: drives the split and the per-sample augmentation (see ``SeededSampler``).
        predict_dir: folder of single images (any size) for ``predict``; default: the test split's sources.
        strict_channels: refuse grayscale images where 3 channels are read (default false: they are read as RGB,
            as the official code reads every image, with one log line counting them). Images deeper than 8 bits
            (16-bit PNGs) are scaled to 8 bits and EXIF orientations applied, as viewers show them.
    """

    def __init__(
        self,
        root: str = "data",
        layout: Literal["aligned", "folders"] = "aligned",
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
        a_dir: str = "{split}/A",
        b_dir: str = "{split}/B",
        a_suffix: str = "",
        b_suffix: str = "",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        predict_dir: Optional[str] = None,
        strict_channels: bool = False,
    ) -> None:
        options = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        if layout not in ("aligned", "folders"):
            raise ConfigError(f"data.layout={layout!r} is not known; choose one of: aligned, folders")
        if direction not in ("AtoB", "BtoA"):
            raise ConfigError(f"data.direction={direction!r} is not known; choose one of: AtoB, BtoA")
        check_channels_option("data.input_nc", input_nc)
        check_channels_option("data.output_nc", output_nc)
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError(f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} must be >= 1")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be >= 0")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be between 0 and 1")
        if max_dataset_size is not None and max_dataset_size < 1:
            raise ConfigError(f"data.max_dataset_size={max_dataset_size} must be >= 1 (or null for all)")
        self.save_hyperparameters(options, logger=False)
        self.root = Path(root)
        self.train_transform = JointTransform(preprocess, load_size, crop_size, flip=not no_flip, train=True)
        # the official test.py: "to avoid cropping, the load_size should be the same as crop_size"
        self.eval_transform = JointTransform(preprocess, eval_load_size or crop_size, crop_size, flip=False, train=False)
        self.test_split_used: Optional[str] = None
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None
        self.predict_dataset: Optional[Dataset] = None

    # -- building datasets -------------------------------------------------------------------------
    def _split_exists(self, split: str) -> bool:
        h = self.hparams
        if h.layout == "aligned":
            return (self.root / split).is_dir()
        return (self.root / h.a_dir.format(split=split)).is_dir()

    def _make(self, split: str, train: bool) -> Dataset:
        h = self.hparams
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist; set data.root to your dataset")
        transform = self.train_transform if train else self.eval_transform
        if h.layout == "aligned":
            files = list_images(self.root / split)[: h.max_dataset_size]
            return AlignedDataset(files, transform, h.direction, h.input_nc, h.output_nc, strict_channels=h.strict_channels)
        pairs = match_pairs(
            self.root / h.a_dir.format(split=split), self.root / h.b_dir.format(split=split), h.a_suffix, h.b_suffix
        )[: h.max_dataset_size]
        return FolderPairDataset(pairs, transform, h.direction, h.input_nc, h.output_nc,
                                 strict_channels=h.strict_channels)

    def _carved_split(self) -> tuple[list[int], list[int], int]:
        """Seeded (train, val) indices of the train split, for data with no val folder."""
        n = len(self._make(self.hparams.train_split, train=False))
        if n < 2:
            raise DataError(f"{self.root}: the train split has {n} sample(s); a val split needs at least 2 in all")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed)).tolist()
        n_val = max(1, round(n * self.hparams.val_fraction))
        return sorted(perm[n_val:]), sorted(perm[:n_val]), n

    def _val_dataset(self) -> Dataset:
        h = self.hparams
        if self._split_exists(h.val_split):
            return self._make(h.val_split, train=False)
        _, val_idx, _ = self._carved_split()
        log.info("no %s split in %s: holding out %d train samples for validation", h.val_split, self.root, len(val_idx))
        return Subset(self._make(h.train_split, train=False), val_idx)

    def _build(self, stage: str) -> dict[str, Dataset]:
        """The datasets a stage needs, each file checked (a DataError names the first bad one)."""
        h = self.hparams
        if stage == "fit":
            train = self._make(h.train_split, train=True)
            if not self._split_exists(h.val_split):
                train_idx, _, _ = self._carved_split()
                train = Subset(train, train_idx)
            return {"train_dataset": train, "val_dataset": self._val_dataset()}
        if stage == "validate":
            return {"val_dataset": self._val_dataset()}
        if stage == "test":
            if self._split_exists(h.test_split) and h.test_split != h.val_split:
                self.test_split_used = h.test_split
                return {"test_dataset": self._make(h.test_split, train=False)}
            self.test_split_used = h.val_split
            log.warning(
                "testing on the validation split (%s): the split that chose best-*.ckpt and was watched during "
                "training, so these numbers are optimistic; name a held-out split with data.test_split%s",
                h.val_split, "" if self._split_exists(h.test_split) else f" ({self.root / h.test_split} does not exist)",
            )
            return {"test_dataset": self._val_dataset()}
        if stage == "predict":
            return {"predict_dataset": self._predict_dataset()}
        return {}

    def evaluation_sizes(self, stage: str) -> dict[str, int]:
        """How many images each evaluated set of ``stage`` holds (each process needs one at least)."""
        datasets = self._build(stage)
        out: dict[str, int] = {}
        for key, name in (("val_dataset", "val split"), ("test_dataset", "test split")):
            if key in datasets:
                out.update(self._evaluated_sizes(datasets[key], name))
        return out

    def _evaluated_sizes(self, dataset: Dataset, name: str) -> dict[str, int]:
        return {name: len(dataset)}

    def prepare_data(self) -> None:
        # Lightning calls this before it starts the loggers (a W&B run) and callbacks: bad data stops the
        # run here, before anything is written. The checked datasets are kept for setup() (on the processes
        # that did not run this, setup() builds and checks them itself).
        trainer = getattr(self, "trainer", None)
        stage = trainer.state.fn.value if trainer is not None and trainer.state.fn is not None else None
        if stage is not None:
            self._prepared = (stage, self._build(stage))

    def setup(self, stage: str) -> None:
        prepared = getattr(self, "_prepared", None)
        datasets = prepared[1] if prepared is not None and prepared[0] == stage else self._build(stage)
        self._prepared = None
        for name, dataset in datasets.items():
            setattr(self, name, dataset)

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        """The training images of each output domain (here ``target``), read as evaluation reads images, with a
        fingerprint of them: what MiFID's memorization term compares generated images with."""
        h = self.hparams
        train = self._make(h.train_split, train=False)
        if not self._split_exists(h.val_split):
            train = Subset(train, self._carved_split()[0])
        return {"target": (_Field(train, "target"), fingerprint(train, "target"))}

    def _predict_dataset(self) -> Dataset:
        h = self.hparams
        if h.predict_dir is not None:
            folder = Path(h.predict_dir)
            return SingleImageDataset(list_images(folder), folder, h.input_nc, strict_channels=h.strict_channels)
        split = h.test_split if self._split_exists(h.test_split) else h.val_split
        paired = self._make(split, train=False)
        log.info("data.predict_dir is not set: predicting the %s split's sources", split)
        return _SourcesOnly(paired)

    # -- loaders -------------------------------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        """``data.num_workers``, or when it is null the choice for the device the model runs on (see the class)."""
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        trainer = self.trainer
        device = trainer.strategy.root_device.type if trainer is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            return 0
        return min(4, suggested_max_num_workers(trainer.num_devices if trainer is not None else 1))

    def _loader(self, dataset: Dataset, batch_size: int, sampler, persistent: bool = True) -> DataLoader:
        h = self.hparams
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=persistent and h.persistent_workers and workers > 0,
            pin_memory=h.pin_memory,
            # its own generator: creating an iterator then leaves the global RNG (dropout's) alone,
            # which exact resume relies on; augmentation is seeded by SeededSampler, not by workers
            generator=torch.Generator().manual_seed(h.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.hparams.batch_size, self._train_sampler(self.train_dataset))

    def _train_sampler(self, dataset: Dataset) -> SeededSampler:
        world, rank = _dist_info()
        sampler = SeededSampler(dataset, num_replicas=world, rank=rank, shuffle=not self.hparams.serial_batches,
                                seed=self.hparams.seed, drop_last=False)
        # resumed mid-epoch: the sampler leaves out what was trained on, so the rest of the epoch follows
        done = batches_done_in_epoch(self.trainer, -(-len(sampler) // self.hparams.batch_size))
        if done:
            sampler.resume_within(self.trainer.current_epoch, done * self.hparams.batch_size)
        return sampler

    def _eval_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        world, rank = _dist_info()
        # every sample exactly once over all processes, so metrics equal a single-process run
        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        # Evaluation workers end with each pass: persistent ones idle through the training epochs holding every
        # page the training process has changed since it forked them (the weights, for a start: ~0.5 GB more
        # for the maps recipe, experiments/RESULTS.md); starting them again costs about a second a validation.
        return self._loader(dataset, batch_size, sampler, persistent=False)

    @property
    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        # images may differ in size: one per batch
        return self._eval_loader(self.predict_dataset, 1)


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
    """The built-in dataset (label layouts -> "photos"), generated into ``root`` on first use.

    Needs no download; ``image_size`` is the side of the stored images (``load_size`` should match).
    """

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
        batch_size: int = 4,
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
            eval_load_size=eval_load_size, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
            persistent_workers=persistent_workers,
            pin_memory=pin_memory, serial_batches=serial_batches, max_dataset_size=max_dataset_size, seed=seed,
            test_split=test_split, predict_dir=predict_dir,
        )
        self.use_built_in(num_train, num_val, num_test, image_size, dataset_seed)
