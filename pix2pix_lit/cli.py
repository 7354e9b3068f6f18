"""``pix2pix-lit``: LightningCLI with fit / validate / test / predict, plus ``compare``.

Everything a run writes goes under ``trainer.default_root_dir`` (the run folder) unless set
otherwise: ``checkpoints/``, ``images/``, ``predictions/``, ``wandb/``, ``csv/`` and ``config.yaml``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from argparse import ArgumentError
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from pix2pix_lit.callbacks import ImageGridCallback, PredictionWriter, TestReport
from pix2pix_lit.data import PairedDataModule
from pix2pix_lit.errors import Pix2PixLitError
from pix2pix_lit.module import Pix2Pix
from pix2pix_lit.precision import cpu_precision_fallback

log = logging.getLogger("pix2pix_lit")

_RUN_DIR_LOGGERS = ("WandbLogger", "CSVLogger", "TensorBoardLogger")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
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
        if stage != "fit":
            self.config_filename = f"config-{stage}.yaml"
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        params = {k: v for k, v in _flatten(self.config.as_dict()).items() if not k.startswith("config")}
        for logger in trainer.loggers:
            logger.log_hyperparams(params)


class Pix2PixCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # channels are a property of the data: the model takes them from there
        parser.link_arguments("data.init_args.input_nc", "model.input_nc")
        parser.link_arguments("data.init_args.output_nc", "model.output_nc")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 0,
                "checkpoint.every_n_epochs": 1,
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(ModelCheckpoint, "periodic_checkpoint")
        parser.set_defaults(
            {
                "periodic_checkpoint.save_last": True,
                "periodic_checkpoint.save_top_k": 0,
                "periodic_checkpoint.every_n_train_steps": 500,
                "periodic_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults(
            {
                "best_checkpoint.monitor": "val/fid",
                "best_checkpoint.mode": "min",
                "best_checkpoint.save_top_k": 1,
                "best_checkpoint.filename": "best-epoch{epoch:04d}-step{step:07d}",
                "best_checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--precision_fallback", type=bool, default=True,
            help="On a CPU with no bf16 kernels (AVX2-only), run bf16/16-bit precisions in 32-true, which is "
            "an order of magnitude faster there; false keeps the precision as given.",
        )
        parser.add_lightning_class_args(ImageGridCallback, "image_grid")
        parser.add_lightning_class_args(PredictionWriter, "predict_writer")
        parser.add_lightning_class_args(TestReport, "test_report")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = cfg.trainer.default_root_dir or os.getcwd()
        sweep, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
        if self.subcommand == "fit" and sweep and run_id:  # a W&B sweep trial: one run folder each
            root = cfg.trainer.default_root_dir = os.path.join(root, f"sweep-{sweep}", run_id)
        for key in ("checkpoint", "periodic_checkpoint", "best_checkpoint"):
            if cfg[key].dirpath is None:
                cfg[key].dirpath = os.path.join(root, "checkpoints")
        if not cfg.model.fid and cfg.best_checkpoint.monitor == "val/fid":
            # without FID the best checkpoint is kept by SSIM
            cfg.best_checkpoint.monitor, cfg.best_checkpoint.mode = "val/ssim", "max"
            log.info("model.fid is off: best_checkpoint keeps the best val/ssim")
        self._fall_back_precision(cfg)
        loggers = cfg.trainer.logger
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            if hasattr(lg, "class_path") and lg.class_path.rsplit(".", 1)[-1] in _RUN_DIR_LOGGERS:
                if lg.init_args.get("save_dir") in (None, "", "."):
                    # absolute: W&B resolves the git repository (and commit) of the run from it
                    lg.init_args.save_dir = os.path.abspath(root)
                if lg.class_path.endswith("CSVLogger") and self.subcommand not in (None, "fit"):
                    # keep csv/ for the training history that `compare` reads
                    lg.init_args.name = f"csv-{self.subcommand}"

    @staticmethod
    def _fall_back_precision(cfg) -> None:
        if not cfg.get("precision_fallback", True):
            return
        asked = cfg.trainer.precision
        new = cpu_precision_fallback(cfg.trainer.accelerator, asked)
        if new is None:
            return
        cfg.trainer.precision = new
        if rank_zero_only.rank == 0:
            log.warning(
                "trainer.precision=%s: this CPU has no bf16 kernels (PyTorch sees %s, no AVX-512/AMX), where bf16 "
                "convolutions run in slow reference code (about 30x slower than fp32); using precision %s instead "
                "(--precision_fallback false keeps %s)", asked, torch.backends.cpu.get_cpu_capability(), new, asked,
            )


def _one_line(err: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in its traceback."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else type(err).__name__
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return line[len(prefix):] if line.startswith(prefix) else line


def _rejected(err: BaseException) -> Optional[BaseException]:
    """The Pix2PixLitError behind a parse error, if any (jsonargparse instantiates classes to validate)."""
    seen = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Pix2PixLitError):
            return e
        stack += [e.__cause__, e.__context__]
    return None


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "compare":
        from pix2pix_lit.compare import main as compare_main

        sys.exit(compare_main(argv[1:]))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A checkpoint written between batches holds the state after both updates of the last batch, which
    # is what resume needs; Lightning's advice for manual optimization does not apply.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    try:
        Pix2PixCLI(
            Pix2Pix,
            PairedDataModule,
            subclass_mode_data=True,
            save_config_callback=LoggerSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as e:
        cause = _rejected(e)
        msg = _one_line(cause) if cause else " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
        print(f"pix2pix-lit: error: {msg}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        # jsonargparse validates a class by instantiating it and wraps what it raised: unwrap ours
        cause = _rejected(e)
        if cause is None:
            raise
        print(f"pix2pix-lit: error: {_one_line(cause)}", file=sys.stderr)
        sys.exit(cause.exit_code)


if __name__ == "__main__":
    main()
