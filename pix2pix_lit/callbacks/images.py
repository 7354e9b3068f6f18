"""Image grids of fixed samples (pix2pix: source | output | target; CycleGAN: A | G_A(A) | G_B(G_A(A)) and the
B side), to PNG files and to the loggers. What the rows hold is the model's ``grid_rows``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid

from pix2pix_lit.callbacks.pages import link, write_page
from pix2pix_lit.data.io import save_image_atomic, to_pil

log = logging.getLogger(__name__)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 1:
        return x.expand(3, -1, -1)
    return x[:3]


def rows_grid(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """One row per list of images (each (C, H, W) in [-1, 1], C of 1, 3 or 4), as one (3, H, W) tensor."""
    tiles = [_rgb(t.float().cpu()) for row in rows for t in row]
    return make_grid(tiles, nrow=len(rows[0]), padding=2, pad_value=1.0)


class ImageGridCallback(pl.Callback):
    """Every ``every_n_epochs`` validations, render fixed val (and train) samples as grids.

    Grids go to ``<output_dir>/{val,train}_epoch{E}_step{S}.png`` (default: ``<run folder>/images``),
    plus ``*_start_step*.png`` before the first training step, each with its L1 logged as
    ``samples/val_l1``/``samples/train_l1``
    and to W&B (``images/val``, ``images/train``) or TensorBoard when those loggers are used.
    The samples are the same at every epoch: evenly spaced val items and the first train items,
    the latter with a fixed augmentation.
    """

    def __init__(
        self, every_n_epochs: int = 1, num_val_samples: int = 8, num_train_samples: int = 4,
        output_dir: Optional[str] = None,
    ) -> None:
        self.every_n_epochs, self.output_dir = every_n_epochs, output_dir
        self.num_val, self.num_train = num_val_samples, num_train_samples
        self._batches: dict[str, dict[str, torch.Tensor]] = {}
        self.written: list[Path] = []
        self.l1_history: list[tuple[str, int, float]] = []

    @staticmethod
    def _take(dataset, indices: list[int]) -> dict[str, torch.Tensor]:
        items = [dataset[i] for i in indices]
        return {k: torch.stack([it[k] for it in items]) for k, v in items[0].items() if isinstance(v, torch.Tensor)}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        self._batches = {}
        if dm is None or self.every_n_epochs < 1:
            return
        for split, dataset, n in (("val", getattr(dm, "val_dataset", None), self.num_val),
                                  ("train", getattr(dm, "train_dataset", None), self.num_train)):
            if dataset is None or n < 1 or len(dataset) == 0:
                continue
            n = min(n, len(dataset))
            idx = [int(i * len(dataset) / n) for i in range(n)] if split == "val" else list(range(n))
            self._batches[split] = self._take(dataset, idx)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the starting point, to compare the later grids (and their L1) with
        if self._batches and self.every_n_epochs >= 1:
            self.render(trainer, pl_module, tag="start")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._batches or self.every_n_epochs < 1:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        self.render(trainer, pl_module, tag=f"epoch{trainer.current_epoch:04d}")

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> None:
        """Write the grids and log ``samples/{split}_l1``: the mean |output - target| of the shown samples."""
        out_dir = Path(self.output_dir or Path(trainer.default_root_dir) / "images")
        for split, batch in self._batches.items():
            rows, l1, columns = pl_module.grid_rows(batch)
            grid = rows_grid(rows)
            if not trainer.is_global_zero:
                continue
            if l1 is not None:  # a segmenter's grid has no output to compare with a target
                self.l1_history.append((split, trainer.global_step, l1))
                for logger in trainer.loggers:
                    logger.log_metrics({f"samples/{split}_l1": l1}, step=trainer.global_step)
            path = out_dir / f"{split}_{tag}_step{trainer.global_step:07d}.png"
            img = to_pil(grid)
            save_image_atomic(img, path)
            self.written.append(path)
            caption = f"{split}: {columns} (epoch {trainer.current_epoch}, step {trainer.global_step})"
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"images/{split}", images=[img], caption=[caption])
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"images/{split}", (grid + 1) / 2, trainer.global_step)
            self._write_page(out_dir, columns)

    @staticmethod
    def _write_page(out_dir: Path, columns: str) -> None:
        """``images/index.html``: every grid in the folder (a resumed run's earlier ones too), newest first."""
        import re

        rows = []
        for path in out_dir.glob("*.png"):
            m = re.fullmatch(r"(val|train)_(.+)_step(\d+)\.png", path.name)
            if m:
                rows.append({"name": path.name, "grid": link(path, out_dir), "step": int(m.group(3))})
        rows.sort(key=lambda r: (-r["step"], r["name"]))
        write_page(out_dir, f"fit: {len(rows)} grids", rows, ["grid"], ["step"], {"rows of each grid": columns})
