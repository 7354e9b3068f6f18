"""What a run does when a scheduler stops it: SIGTERM saves ``last.ckpt`` before the process exits."""

from __future__ import annotations

import logging
import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class SaveOnSigterm(pl.Callback):
    """On SIGTERM (a scheduler's preemption, ``kill``), Lightning stops at the next batch boundary; this saves
    the state there as ``last.ckpt`` of the first checkpoint callback that keeps one, so ``--ckpt_path last``
    goes on with the rest of the epoch exactly (the CLI then exits 143, not 0)."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        keeper = next((cb for cb in trainer.checkpoint_callbacks
                       if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath), None)
        if keeper is None:
            return
        path = os.path.join(keeper.dirpath, f"{keeper.CHECKPOINT_NAME_LAST}{keeper.FILE_EXTENSION}")
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.info("SIGTERM: saved %s at step %d", path, trainer.global_step)
