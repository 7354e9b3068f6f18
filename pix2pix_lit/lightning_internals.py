"""Every place pix2pix-lit reaches into Lightning's private parts, each a named function.

Lightning has no public call for these; each was checked against Lightning 2.6, and
``tests/test_lightning_internals.py`` fails when a Lightning release moves one of them.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy

CHECKED_WITH = "2.6"


def ddp_constructor_kwargs(strategy: Any) -> Optional[dict]:
    """The keyword arguments a DDP strategy will build ``DistributedDataParallel`` with (``_ddp_kwargs``), which can
    still be changed until the strategy wraps the model; None for other strategies."""
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    return kwargs if isinstance(strategy, DDPStrategy) and isinstance(kwargs, dict) else None


def allow_unused_parameters(strategy: Any) -> bool:
    """Have a DDP strategy build ``DistributedDataParallel`` with ``find_unused_parameters=True``; True if this
    changed it. A GAN's backward reaches only the networks of one optimizer (D's loss does not reach G, and D is
    frozen while G's loss flows through it), so parameters go unused in a backward, or DDP stops at the next step.
    Lightning runs ``setup`` before the strategy wraps the model; it has no public setting for it once the
    strategy is built."""
    kwargs = ddp_constructor_kwargs(strategy)
    if kwargs is None or kwargs.get("find_unused_parameters"):
        return False
    kwargs["find_unused_parameters"] = True
    return True


def count_manual_step(trainer: "pl.Trainer") -> None:
    """Count one trainer step under manual optimization (``global_step`` reads this counter). Stepping through the
    LightningOptimizer would count one per optimizer; a GAN batch with two optimizers is one step."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def end_validation_workers(trainer: "pl.Trainer") -> None:
    """End the DataLoader iterator (and so the worker processes) of a validation that stopped early (the sanity
    check, ``limit_val_batches``); Lightning keeps it until fit ends. Its fetcher's own teardown does it, and the
    next validation makes a new one."""
    loop = trainer.fit_loop.epoch_loop.val_loop
    fetcher = getattr(loop, "_data_fetcher", None)
    if fetcher is not None:
        fetcher.teardown()
        loop._data_fetcher = None


def batches_done_in_epoch(trainer: Optional["pl.Trainer"], batches_per_epoch: int) -> int:
    """The batches of the current epoch trained before the checkpoint a fit resumes from (0 at an epoch's start).

    Lightning restores its loop counters before it asks for the train loader, then runs the rest of the epoch's
    batches from a fresh iterator, which would start again at the epoch's first samples."""
    if trainer is None:
        return 0
    progress = trainer.fit_loop.epoch_loop.batch_progress
    done = progress.current.processed
    return done if 0 < done < batches_per_epoch and not progress.is_last_batch else 0


def epoch_cut_short(trainer: "pl.Trainer") -> bool:
    """Whether the epoch that is ending stopped before its last batch (``max_steps`` reached inside it): then its
    epoch-end work (the LR step) belongs to the run that finishes it."""
    batches = trainer.fit_loop.epoch_loop.batch_progress
    return _cut(batches.current.completed, batches.is_last_batch, trainer.num_training_batches)


def _cut(done: int, is_last_batch: bool, per_epoch: float) -> bool:
    return 0 < done and not is_last_batch and done < per_epoch


def settle_epoch_counts(trainer: Optional["pl.Trainer"], checkpoint: dict[str, Any]) -> bool:
    """The loop counters of a checkpoint written after an epoch's last trained batch as a resumed fit must find
    them; True if it changed them.

    When its batch loop stops, the fit loop marks the epoch processed, then completed, also when ``max_steps``
    cut it short, and it keeps the epoch's batch count until the next epoch starts. Resumed as they are, an epoch
    cut at batch k is finished as the next epoch, and a finished one counted twice (``ModelCheckpoint``'s
    ``on_train_end`` save): every later epoch (number, LR schedule, file names) is one ahead. Here a cut epoch goes
    back to "batch k of epoch N" (what a step-wise save at that batch holds), and a finished, counted one to
    "epoch N+1 not started"."""
    if trainer is None or "loops" not in checkpoint:
        return False
    loop = checkpoint["loops"].get("fit_loop", {})
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return False
    started, processed, completed = (epochs["current"][k] for k in ("started", "processed", "completed"))
    if _cut(batches["current"]["completed"], batches.get("is_last_batch", True), trainer.num_training_batches):
        if processed != started:
            return False  # saved inside the epoch: Lightning resumes that
        for part in ("total", "current"):
            epochs[part]["processed"] = epochs[part]["completed"] = epochs[part]["started"] - 1
    elif completed == started and batches["current"]["completed"] > 0:
        for key in batches["current"]:
            batches["current"][key] = 0
        batches["is_last_batch"] = False
    else:
        return False
    checkpoint["epoch"] = epochs["current"]["completed"]
    return True


def logs_this_step(trainer: "pl.Trainer") -> bool:
    """Whether what a training step logs now is kept: the loggers write at this step (``log_every_n_steps``,
    Lightning's own test, ``_logger_connector.should_update_logs``), or it is the epoch's or the run's last batch
    (whose values stay in ``callback_metrics`` for callbacks, LR plateaus and whoever reads them after ``fit``).
    Lightning drops the step values of every other step, so logging them only costs host time."""
    if trainer._logger_connector.should_update_logs:
        return True
    loop = trainer.fit_loop.epoch_loop
    last_in_epoch = loop.batch_progress.current.ready >= trainer.num_training_batches
    return last_in_epoch or (trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps)


def cluster_environment(trainer: "pl.Trainer") -> Any:
    """The trainer's cluster environment (SLURM's, torchrun's, ...): Lightning keeps it on its private accelerator
    connector (``trainer._accelerator_connector``), with no public accessor."""
    return trainer._accelerator_connector.cluster_environment


def hpc_checkpoint_path(trainer: "pl.Trainer") -> str:
    """Where Lightning's own SLURM requeue saves (``hpc_ckpt_<n>.ckpt`` in the run folder), which ``fit`` resumes
    from by itself: the private checkpoint connector's ``hpc_save_path``."""
    return trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
