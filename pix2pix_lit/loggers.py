"""Loggers whose run folder defaults to the trainer's (filled in by the CLI), W&B offline without credentials and
holding the run's best and last checkpoints as artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
import netrc
import os
import re
from typing import Any, Literal, Optional, Union

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from pix2pix_lit.errors import ConfigError

log = logging.getLogger(__name__)


def wandb_credentials_available() -> bool:
    """Whether W&B could log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC") or None)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def wandb_offline() -> bool:
    """Whether W&B runs offline here: ``WANDB_MODE`` says so, or it says nothing and there are no credentials."""
    mode = os.environ.get("WANDB_MODE")
    return mode in ("offline", "dryrun", "disabled") or (mode is None and not wandb_credentials_available())


CHECKPOINT_CHOICES = ("best_and_last", "best", "last")  # what log_checkpoints keeps as artifact versions


def config_sha256(hparams: Any) -> str:
    """A hash of a model's hyper-parameters (what a checkpoint was trained with), for artifact metadata."""
    text = json.dumps(hparams, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger that decides online/offline by itself and keeps the run's checkpoints.

    ``offline=None`` (the default): online when W&B has credentials (``wandb login`` or
    ``WANDB_API_KEY``) and ``WANDB_MODE`` does not say otherwise; else offline, said once in the log:
    the run is written to ``<save_dir>/wandb/offline-run-*`` and ``wandb sync`` uploads it later.

    ``log_checkpoints`` (default on = ``best_and_last``; ``best``, ``last`` or off): when the run ends (finished
    or stopped), the best checkpoint and the last
    one are logged as versions of the model artifact ``model-<run id>`` with the aliases ``best`` and ``latest``
    and their step, epoch, monitored metric and score, and a hash of the model's hyper-parameters as metadata —
    offline too: the offline run records them and ``wandb sync`` uploads them. (Lightning's ``log_model``
    refuses offline runs, so it is not used.) ``--ckpt_path wandb:ENTITY/PROJECT/model-ID:best`` resumes or
    evaluates from such an artifact on any machine that is online. Each logged file is copied into W&B's staging
    folder (``WANDB_DATA_DIR``, by default ``~/.local/share/wandb``) until it is synced: best + last of every fit;
    ``log_checkpoints: last`` halves that, and ``add_file_policy: immutable`` stages no copy (the file must then stay
    unchanged until ``wandb sync``).
    """

    def __init__(self, *args: Any, offline: Optional[bool] = None, save_dir: Optional[str] = None,
                 log_checkpoints: Union[bool, Literal["best_and_last", "best", "last"]] = True, **kwargs: Any):
        self._offline_note: Optional[str] = None
        if offline is None:
            offline = wandb_offline()
            if offline and os.environ.get("WANDB_MODE") is None:
                # said when the run folder is made (experiment), not here: a command that then stops on a bad
                # option or file writes no run, and must not say it logs one
                self._offline_note = (
                    "W&B: no credentials found (wandb login / WANDB_API_KEY): logging offline to "
                    f"{os.path.join(save_dir or '.', 'wandb')}; upload later with `wandb sync <run folder>`")
        super().__init__(*args, offline=offline, save_dir=save_dir or ".", **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning passes anonymous=None, which current wandb versions warn about on every run
            self._wandb_init.pop("anonymous", None)
        if log_checkpoints not in (True, False, *CHECKPOINT_CHOICES):
            raise ConfigError(f"WandbLogger log_checkpoints={log_checkpoints!r}: choose true (best_and_last), "
                              f"{', '.join(CHECKPOINT_CHOICES[1:])} or false")
        if self._log_model:  # Lightning's own way instead
            log_checkpoints = False
        self.log_checkpoints = "best_and_last" if log_checkpoints is True else log_checkpoints
        self._seen_checkpoint_callbacks: dict[int, Any] = {}
        self._logged_checkpoints: dict[str, float] = {}  # path -> modification time when logged

    @property
    def experiment(self):
        if getattr(self, "_experiment", None) is None:
            # the run folder exists before wandb starts, so it finds the git repository (and commit) around it
            if self._save_dir:
                os.makedirs(self._save_dir, exist_ok=True)
            if self._offline_note is not None:
                rank_zero_info(self._offline_note)
                self._offline_note = None
        return super().experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        self._seen_checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.log_checkpoints and getattr(self, "_experiment", None) is not None:
            try:
                self._log_checkpoint_artifacts()
            except Exception as e:  # never hide why a run ended (e.g. a full disk) behind an artifact failure
                log.warning("W&B: the checkpoints could not be logged as artifacts (%s); they are on disk", e)
        super().finalize(status)

    def _log_checkpoint_artifacts(self) -> None:
        import wandb

        from pix2pix_lit.checkpoints import load_checkpoint

        aliases: dict[str, list[str]] = {}
        monitors: dict[str, tuple[Optional[str], Any]] = {}
        keep = self.log_checkpoints
        for cb in self._seen_checkpoint_callbacks.values():
            if getattr(cb, "best_model_path", "") and cb.monitor and keep in ("best_and_last", "best"):
                aliases.setdefault(cb.best_model_path, []).append("best")
                monitors[cb.best_model_path] = (cb.monitor, cb.best_model_score)
            if getattr(cb, "last_model_path", "") and keep in ("best_and_last", "last"):
                aliases.setdefault(cb.last_model_path, []).append("latest")
        # the best first: W&B moves "latest" to the version logged last, which is then the last checkpoint
        for path, names in sorted(aliases.items(), key=lambda item: "best" not in item[1]):
            if not os.path.isfile(path) or self._logged_checkpoints.get(path) == os.path.getmtime(path):
                continue
            ckpt = load_checkpoint(path)
            monitor, score = monitors.get(path, (None, None))
            metadata = {
                "step": int(ckpt.get("global_step", 0)), "epoch": int(ckpt.get("epoch", 0)), "monitor": monitor,
                "score": float(score) if score is not None else None, "original_filename": os.path.basename(path),
                "config_sha256": config_sha256(ckpt.get("hyper_parameters", {})),
            }
            del ckpt
            artifact = wandb.Artifact(name=f"model-{self.experiment.id}", type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            self.experiment.log_artifact(artifact, aliases=sorted(set(names)))
            self._logged_checkpoints[path] = os.path.getmtime(path)
            log.info("W&B: %s logged as model-%s:%s", path, self.experiment.id, ",".join(sorted(set(names))))


# ENTITY/PROJECT/ARTIFACT:ALIAS, each part non-empty, no further separators
WANDB_ARTIFACT = re.compile(r"[^/:\s]+/[^/:\s]+/[^/:\s]+:[^/:\s]+")


def download_wandb_checkpoint(spec: str) -> str:
    """``wandb:ENTITY/PROJECT/ARTIFACT:ALIAS`` -> the local path of its ``model.ckpt`` (downloaded; needs W&B online)."""
    from pix2pix_lit.errors import CheckpointError

    name = spec[len("wandb:"):]
    if not WANDB_ARTIFACT.fullmatch(name):
        raise CheckpointError(f"--ckpt_path {spec}: give wandb:ENTITY/PROJECT/ARTIFACT:ALIAS, e.g. "
                              "wandb:me/pix2pix-lit/model-1a2b3c4d:best")
    if wandb_offline():
        raise CheckpointError(f"--ckpt_path {spec} needs W&B online (wandb login, or WANDB_API_KEY; WANDB_MODE is "
                              f"{os.environ.get('WANDB_MODE', 'unset')}): download the artifact on a machine that is, "
                              "and pass its model.ckpt")
    import wandb

    try:
        folder = wandb.Api().artifact(name, type="model").download()
    except Exception as e:  # wandb raises CommError, ValueError, requests errors, ...
        raise CheckpointError(f"--ckpt_path {spec}: W&B could not give that artifact ({str(e).splitlines()[0][:160]})") from None
    path = os.path.join(folder, "model.ckpt")
    if not os.path.isfile(path):
        raise CheckpointError(f"--ckpt_path {spec}: the artifact holds no model.ckpt (not logged by pix2pix-lit)")
    return path


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger writing ``<save_dir>/csv/version_N/metrics.csv`` (one version per fit, resumes too)."""

    def __init__(self, save_dir: Optional[str] = None, name: str = "csv", version: Optional[int | str] = None, **kwargs: Any):
        super().__init__(save_dir=save_dir or ".", name=name, version=version, **kwargs)


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"model.init_args.lr": 0.0002, ...}`` (lists of sections as one string)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        out[prefix[:-1]] = str(d) if any(isinstance(x, (dict, list)) for x in d) else d
    else:
        out[prefix[:-1]] = d
    return out


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Writes ``config.yaml`` to the run folder and records the whole resolved config as hyper-parameters.

    validate/test/predict write ``config-<stage>.yaml`` instead, so the fit's config stays as it was.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum) here
        if stage != "fit":
            self.config_filename = f"config-{stage}.yaml"
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        params = {k: v for k, v in flatten_config(self.config.as_dict()).items() if not k.startswith("config")}
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
