"""Loggers whose run folder defaults to the trainer's (filled in by the CLI), W&B offline without credentials."""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any, Optional

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info

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


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger that decides online/offline by itself.

    ``offline=None`` (the default): online when W&B has credentials (``wandb login`` or
    ``WANDB_API_KEY``) and ``WANDB_MODE`` does not say otherwise; else offline, said once in the log:
    the run is written to ``<save_dir>/wandb/offline-run-*`` and ``wandb sync`` uploads it later.
    """

    def __init__(self, *args: Any, offline: Optional[bool] = None, save_dir: Optional[str] = None, **kwargs: Any):
        mode = os.environ.get("WANDB_MODE")
        if offline is None:
            offline = mode in ("offline", "dryrun") or (mode is None and not wandb_credentials_available())
            if offline and mode is None:
                rank_zero_info(
                    "W&B: no credentials found (wandb login / WANDB_API_KEY): logging offline to "
                    f"{os.path.join(save_dir or '.', 'wandb')}; upload later with `wandb sync <run folder>`"
                )
        super().__init__(*args, offline=offline, save_dir=save_dir or ".", **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning passes anonymous=None, which current wandb versions warn about on every run
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self):
        # the run folder exists before wandb starts, so it finds the git repository (and commit) around it
        if getattr(self, "_experiment", None) is None and self._save_dir:
            os.makedirs(self._save_dir, exist_ok=True)
        return super().experiment


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
