"""What every DataModule here shares: the options, the split policy, samplers and loaders.

:class:`ImageDataModule` owns how splits are chosen (a held-out part of train when there is no val split,
the warning when test falls back to val), the seeded training sampler (exact mid-epoch resume), the
evaluation samplers (every image once over all processes) and the DataLoaders. Its two children say how
the images of a split are read: :class:`~pix2pix_lit.data.paired.PairedDataModule` (source/target pairs)
and :class:`~pix2pix_lit.data.unpaired.UnpairedDataModule` (two domains).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from pix2pix_lit.data.datasets import SeededSampler
from pix2pix_lit.data.io import check_channels_option
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import ConfigError, DataError
from pix2pix_lit.lightning_internals import batches_done_in_epoch

log = logging.getLogger(__name__)

Preprocess = Literal["resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none", "fixed"]
# which part of the train split a dataset holds when there is no val split: the trained part or the held-out one
Part = Optional[Literal["train", "val"]]


def dist_info() -> tuple[int, int]:
    """(world size, rank) of the process group, (1, 0) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ImageDataModule(pl.LightningDataModule):
    """The options and loaders of every data module here (see the module docstring).

    Args:
        root: dataset folder.
        input_nc, output_nc: channels of the source (domain A) and target (domain B) images: 1 = grayscale,
            3 = RGB, 4 = RGBA.
        preprocess, load_size, crop_size, no_flip: the official preprocessing of training images; ``fixed`` (SPADE's)
            resizes every image to ``crop_size`` x ``crop_size / aspect_ratio`` (Cityscapes: 512 and 2.0).
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
        max_dataset_size: use at most this many samples (images of a domain) per split.
        val_fraction: part of train held out for validation (seeded by ``seed``) when there is no val split.
        seed: drives the split and the per-sample augmentation (see ``SeededSampler``).
        train_split, val_split, test_split: the split names (folders, or the ``{split}`` of ``a_dir``/``b_dir``).
        predict_dir: folder of single images (any size) for ``predict``; default: the test split's sources.
        label_nc: the sources are label maps of this many classes (PNGs of integer ids, read exactly and resized
            nearest-neighbour; see ``data/labels.py``); 0 (default): they are images. contain_dontcare_label: id 255
            ("unlabelled") is one more class. no_instance: label maps come without instance maps (no boundary
            channel). The model takes these three from the data (one-hot classes + edges as its input).
            class_names: the classes' names in id order, for the brushes of ``serve``'s paint page (default:
            Cityscapes' for ``layout: cityscapes``, the built-in's for its label maps, else ``class N``).
        strict_channels: refuse grayscale images where 3 channels are read (default false: they are read as RGB,
            as the official code reads every image, with one log line counting them). Images deeper than 8 bits
            (16-bit PNGs) are scaled to 8 bits and EXIF orientations applied, as viewers show them.
    """

    def __init__(
        self,
        root: str = "data",
        input_nc: int = 3,
        output_nc: int = 3,
        preprocess: Preprocess = "resize_and_crop",
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
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        predict_dir: Optional[str] = None,
        strict_channels: bool = False,
        label_nc: int = 0,
        contain_dontcare_label: bool = False,
        no_instance: bool = False,
        class_names: Optional[list[str]] = None,
        aspect_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) > label_nc:
            raise ConfigError(f"data.class_names has {len(class_names)} names but data.label_nc={label_nc} classes; "
                              "give one name per class id (or set data.label_nc)")
        if label_nc < 0 or label_nc > 65535:
            raise ConfigError(f"data.label_nc={label_nc}: give the number of classes of the label maps, or 0 for images")
        check_channels_option("data.input_nc", input_nc)
        check_channels_option("data.output_nc", output_nc)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{name}={value} must be >= 1")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be >= 0")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be between 0 and 1")
        if max_dataset_size is not None and max_dataset_size < 1:
            raise ConfigError(f"data.max_dataset_size={max_dataset_size} must be >= 1 (or null for all)")
        # every __init__ of the class chain (a child's layout, the built-in data's sizes) is recorded
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.train_transform = JointTransform(preprocess, load_size, crop_size, flip=not no_flip, train=True,
                                              aspect_ratio=aspect_ratio)
        # the official test.py: "to avoid cropping, the load_size should be the same as crop_size"
        self.eval_transform = JointTransform(preprocess, eval_load_size or crop_size, crop_size, flip=False, train=False,
                                             aspect_ratio=aspect_ratio)
        self.test_split_used: Optional[str] = None
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None
        self.predict_dataset: Optional[Dataset] = None

    # -- what a child says: how a split is read ---------------------------------------------------------
    def split_exists(self, split: str) -> bool:
        """Whether the data has the folder(s) of ``split``."""
        raise NotImplementedError

    def make_split(self, split: str, train: bool, part: Part = None) -> Dataset:
        """The dataset of ``split`` (each file checked: a DataError names the first bad one), with the training
        or the evaluation transform. ``part`` ``train``/``val``: the trained or the held-out part of it."""
        raise NotImplementedError

    def make_predict_dataset(self) -> Dataset:
        """Single images (``{"source", "name", "size"}``) for ``predict``."""
        raise NotImplementedError

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        """The training images of each output domain (``{"image"}`` items read as evaluation reads images) with
        a fingerprint of them: what MiFID's memorization term compares generated images with."""
        raise NotImplementedError

    def evaluated_sizes(self, dataset: Dataset, name: str) -> dict[str, int]:
        """How many images each evaluated set of ``dataset`` holds, by a name for messages."""
        return {name: len(dataset)}

    # -- the split policy -------------------------------------------------------------------------------
    def require_root(self) -> None:
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist; set data.root to your dataset")

    def carve(self, n: int, salt: int = 0, what: str = "the train split") -> tuple[list[int], list[int]]:
        """Seeded (train, val) indices of ``n`` training samples, for data with no val split."""
        if n < 2:
            raise DataError(f"{self.root}: {what} has {n} sample(s); a val split needs at least 2 in all")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed + salt)).tolist()
        n_val = max(1, round(n * self.hparams.val_fraction))
        return sorted(perm[n_val:]), sorted(perm[:n_val])

    @property
    def trained_part(self) -> Part:
        """``train`` when the train split also gives the val images (there is no val split), else None."""
        return None if self.split_exists(self.hparams.val_split) else "train"

    def val_set(self) -> Dataset:
        h = self.hparams
        if self.split_exists(h.val_split):
            return self.make_split(h.val_split, train=False)
        log.info("no %s split in %s: holding out part of the train split for validation", h.val_split, self.root)
        return self.make_split(h.train_split, train=False, part="val")

    def build(self, stage: str) -> dict[str, Dataset]:
        """The datasets a stage needs, each file checked (a DataError names the first bad one)."""
        h = self.hparams
        if stage == "fit":
            return {"train_dataset": self.make_split(h.train_split, train=True, part=self.trained_part),
                    "val_dataset": self.val_set()}
        if stage == "validate":
            return {"val_dataset": self.val_set()}
        if stage == "test":
            if self.split_exists(h.test_split) and h.test_split != h.val_split:
                self.test_split_used = h.test_split
                return {"test_dataset": self.make_split(h.test_split, train=False)}
            self.test_split_used = h.val_split
            log.warning(
                "testing on the validation split (%s): the split that chose best-*.ckpt and was watched during "
                "training, so these numbers are optimistic; name a held-out split with data.test_split%s",
                h.val_split, "" if self.split_exists(h.test_split) else f" ({self.root / h.test_split} does not exist)",
            )
            return {"test_dataset": self.val_set()}
        if stage == "predict":
            return {"predict_dataset": self.make_predict_dataset()}
        return {}

    def predict_split(self) -> str:
        """The split ``predict`` reads without ``predict_dir``: test, else val."""
        h = self.hparams
        split = h.test_split if self.split_exists(h.test_split) else h.val_split
        if not self.split_exists(split):
            raise DataError(f"no {h.test_split} or {h.val_split} split in {self.root} to predict; set data.predict_dir")
        return split

    def evaluation_sizes(self, stage: str) -> dict[str, int]:
        """How many images each evaluated set of ``stage`` holds (each process needs one at least)."""
        datasets = self.build(stage)
        out: dict[str, int] = {}
        for key, name in (("val_dataset", "val split"), ("test_dataset", "test split")):
            if key in datasets:
                out.update(self.evaluated_sizes(datasets[key], name))
        return out

    # -- Lightning's hooks ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Lightning calls this before it starts the loggers (a W&B run) and callbacks: bad data stops the
        # run here, before anything is written. The checked datasets are kept for setup() (on the processes
        # that did not run this, setup() builds and checks them itself).
        trainer = getattr(self, "trainer", None)
        stage = trainer.state.fn.value if trainer is not None and trainer.state.fn is not None else None
        if stage is not None:
            self._prepared = (stage, self.build(stage))

    def setup(self, stage: str) -> None:
        prepared = getattr(self, "_prepared", None)
        datasets = prepared[1] if prepared is not None and prepared[0] == stage else self.build(stage)
        self._prepared = None
        for name, dataset in datasets.items():
            setattr(self, name, dataset)

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

    def loader(self, dataset: Dataset, batch_size: int, sampler: Any, persistent: bool = True) -> DataLoader:
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

    def train_sampler(self, dataset: Dataset) -> SeededSampler:
        world, rank = dist_info()
        sampler = SeededSampler(dataset, num_replicas=world, rank=rank, shuffle=not self.hparams.serial_batches,
                                seed=self.hparams.seed, drop_last=False)
        # resumed mid-epoch: the sampler leaves out what was trained on, so the rest of the epoch follows
        done = batches_done_in_epoch(self.trainer, -(-len(sampler) // self.hparams.batch_size))
        if done:
            sampler.resume_within(self.trainer.current_epoch, done * self.hparams.batch_size)
        return sampler

    def eval_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        world, rank = dist_info()
        # every sample exactly once over all processes, so metrics equal a single-process run
        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        # Evaluation workers end with each pass: persistent ones idle through the training epochs holding every
        # page the training process has changed since it forked them (the weights, for a start: ~0.5 GB more
        # for the maps recipe, experiments/RESULTS.md); starting them again costs about a second a validation.
        return self.loader(dataset, batch_size, sampler, persistent=False)

    @property
    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def eval_datasets(self, dataset: Dataset) -> list[Dataset]:
        """The evaluated sets of a val/test dataset, one loader each (two domains: two)."""
        return [dataset]

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_dataset, self.hparams.batch_size, self.train_sampler(self.train_dataset))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self.eval_loader(d, self.eval_batch_size) for d in self.eval_datasets(self.val_dataset)]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self.eval_loader(d, self.eval_batch_size) for d in self.eval_datasets(self.test_dataset)]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        # images may differ in size: one per batch
        return self.eval_loader(self.predict_dataset, 1)
