"""What a run does when a scheduler stops it: SIGTERM saves ``last.ckpt`` before the process exits; on SLURM,
the requeue signal (SIGUSR1) saves an HPC checkpoint at a batch boundary and requeues the job."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pix2pix_lit.lightning_internals import cluster_environment, hpc_checkpoint_path

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


class Requeued(SIGTERMException):
    """The run saved an HPC checkpoint and requeued its SLURM job (:class:`RequeueOnSlurmSignal`)."""

    def __init__(self, path: str, step: int, job_id: str) -> None:
        super().__init__(f"saved {path} at step {step} and requeued SLURM job {job_id}")
        self.path, self.step, self.job_id = path, step, job_id


class RequeueOnSlurmSignal(pl.Callback):
    """SLURM auto-requeue, saved at a batch boundary.

    Lightning (``SLURMEnvironment(auto_requeue=True)``, its default on SLURM) answers the requeue signal
    (SIGUSR1, sent by ``#SBATCH --signal=SIGUSR1@90`` before the time limit) by saving ``hpc_ckpt_N.ckpt`` from
    inside the signal handler — wherever the signal landed, between D's update and G's if so — and requeueing
    the job; the requeued job, started with no ``--ckpt_path``, resumes from that file. Here the handler only
    notes the signal; after the batch (every rank agrees, so no process is left waiting in a collective) the
    checkpoint is saved between batches, ``scontrol requeue`` is called and the run stops, so the requeued job
    goes on exactly as an uninterrupted run. Elsewhere than on SLURM with auto-requeue this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._signum = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        env = cluster_environment(trainer)
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue):
            return
        # registered by Lightning just before; its handler comes back at teardown (the signal connector's)
        self._signum = env.requeue_signal or signal.SIGUSR1
        signal.signal(self._signum, self._note)

    def _note(self, signum, frame) -> None:
        log.info("received the requeue signal %s: saving after this batch", signum)
        self.requested = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._signum is None:
            return
        requested = trainer.strategy.reduce_boolean_decision(self.requested, all=False)
        if not requested:
            return
        self.requested = False
        path = hpc_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        job_id = os.environ.get("SLURM_JOB_ID", "")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if trainer.is_global_zero:
            result = subprocess.call(["scontrol", "requeue", job_id])
            if result != 0:
                log.warning("scontrol requeue %s failed (exit %d): resume by hand from %s", job_id, result, path)
        raise Requeued(path, trainer.global_step, job_id)
