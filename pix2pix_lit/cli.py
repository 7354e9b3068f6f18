"""``pix2pix-lit``: LightningCLI with fit / validate / test / predict, plus ``compare``, ``eval``, ``export``,
``serve`` and ``prepare``.

Everything a run writes goes under ``trainer.default_root_dir`` (the run folder) unless set
otherwise: ``checkpoints/``, ``images/``, ``predictions/``, ``wandb/``, ``csv/`` and ``config.yaml``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import shutil
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import yaml
from jsonargparse import DefaultHelpFormatter
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from pix2pix_lit.callbacks import ImageGridCallback, PredictionWriter, Requeued, RequeueOnSlurmSignal, SaveOnSigterm, TestReport
from pix2pix_lit.checkpoint_io import remove_stale_partials
from pix2pix_lit.checkpoints import check_checkpoint_fits, load_checkpoint
from pix2pix_lit.data import DATA_MODULES, ImageDataModule, resolve_data_class
from pix2pix_lit.errors import CheckpointError, ConfigError, Pix2PixLitError, find_class, find_in_chain
from pix2pix_lit.loggers import LoggerSaveConfigCallback, download_wandb_checkpoint
from pix2pix_lit.models import DEFAULT_MODEL, resolve_model_class
from pix2pix_lit.modes import metric_mode
from pix2pix_lit.precision import cpu_precision_fallback

log = logging.getLogger("pix2pix_lit")

_RUN_DIR_LOGGERS = ("WandbLogger", "CSVLogger", "TensorBoardLogger")
# model options the data decides (linked from data.init_args): the channels and the label-map source
DATA_LINKED = ("input_nc", "output_nc", "label_nc", "contain_dontcare_label", "no_instance")
_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")
# ckpt_path values that Lightning resolves itself (to a file it finds later)
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
_UNSUPPORTED_STRATEGIES = ("fsdp", "deepspeed")
# a run folder this command created (None if it existed): removed again if the run stops before it saved anything
_NEW_RUN_DIR: dict[str, Optional[str]] = {"path": None}
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by it
# What every run gets unless its config says otherwise (one place, not repeated in each config): W&B (offline
# without network) and CSV logs in the run folder, and the learning rates logged once per epoch.
SHARED_DEFAULTS = {
    "trainer.logger": [
        {"class_path": "pix2pix_lit.loggers.WandbLogger", "init_args": {"project": "pix2pix-lit"}},
        {"class_path": "pix2pix_lit.loggers.CSVLogger"},
    ],
    "trainer.callbacks": [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
    ],
    # writes checkpoints without first holding the whole file in memory (pix2pix_lit/checkpoint_io.py)
    "trainer.plugins": [{"class_path": "pix2pix_lit.checkpoint_io.StreamingCheckpointIO"}],
}


def given_settings(argv: list[str]) -> list[tuple[str, Any]]:
    """The settings the config files (``-c``) and the command line give, in the order they apply, as
    (``section.key``, value) with the value as written (a config file's YAML value, a command line's string).

    Only what the CLI must know before jsonargparse parses (and changes) them: the model and data classes and
    the ``trainer.limit_*`` values."""
    out: list[tuple[str, Any]] = []
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if not value and i + 1 < len(argv):
            value = argv[i + 1]
        if name in ("-c", "--config"):
            try:
                config = yaml.safe_load(Path(value).read_text()) or {}
            except (OSError, yaml.YAMLError):
                config = {}  # jsonargparse reports an unreadable config itself
            for section in ("model", "data", "trainer"):
                part = config.get(section) if isinstance(config, dict) else None
                if isinstance(part, dict):
                    out += [(f"{section}.{k}", v) for k, v in part.items()]
        elif name.startswith("--"):
            out.append((name[2:], value))
    return out


def given_class(argv: list[str], section: str) -> Optional[str]:
    """The class the config files and command line name for ``section`` (``model``, ``data``; the last one wins;
    ``--model.help NAME`` too, so that its class is imported and jsonargparse finds it by its name)."""
    found = None
    for key, value in given_settings(argv):
        named = key in (section, f"{section}.class_path", f"{section}.help")
        if named and isinstance(value, str) and value and not value.startswith("{"):
            found = value
    return found


def model_class_path(argv: list[str]) -> str:
    """The model class the config files and command line name, e.g. for ``-c configs/cyclegan/quickstart.yaml``:
    ``pix2pix_lit.models.CycleGAN``; else Pix2Pix.

    It becomes the parser's default model, so a config naming CycleGAN gets CycleGAN's defaults, not
    Pix2Pix's carried over (jsonargparse keeps the previous class's values when the class changes)."""
    model_class = resolve_model_class(given_class(argv, "model") or DEFAULT_MODEL)  # one line for a non-model
    return f"{model_class.__module__}.{model_class.__qualname__}"


def default_data(argv: list[str], model_class_path: str) -> dict[str, Any]:
    """Where no config or option names a data class: the model's kind (``DATA_MODULES``), so ``--data.root DIR``
    alone reads DIR (none where one is named: a default class would carry its values into the named one)."""
    named = given_class(argv, "data")
    if named is not None:
        resolve_data_class(named)  # one line for a class that is not a data module here
        return {}
    data = DATA_MODULES[getattr(resolve_model_class(model_class_path), "data_kind", "paired")]
    return {"data": {"class_path": f"{data.__module__}.{data.__qualname__}", "init_args": {}}}


def whole_number_limits(argv: list[str]) -> dict[str, int]:
    """``trainer.limit_*_batches`` given as whole numbers (``1``, not ``1.0``) in the config files or on the
    command line, in the order they apply.

    jsonargparse turns ``1`` into ``1.0``, which Lightning reads as 100%; a whole number means batches.
    """
    out: dict[str, int] = {}
    for key, value in given_settings(argv):
        section, _, name = key.partition(".")
        if section != "trainer" or name not in _LIMITS or isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\d+", value.strip())):
            out[name] = int(value)
        else:
            out.pop(name, None)
    return out


# where the shipped configs of each model live (a hint in the checkpoint/config mismatch error)
CONFIG_FOLDERS = {"Pix2Pix": "configs/quickstart.yaml, configs/maps.yaml, configs/pix2pixhd/...",
                  "CycleGAN": "configs/cyclegan/...", "CUT": "configs/cut/...", "SPADE": "configs/spade/...",
                  "Segmenter": "configs/segmenter/..."}


def config_hint(model_class: type) -> str:
    """`` (e.g. -c configs/...)`` for a shipped model class, else nothing."""
    where = CONFIG_FOLDERS.get(model_class.__name__)
    return f" (e.g. -c {where})" if where else ""


class Pix2PixCLI(LightningCLI):
    """LightningCLI with the checkpoint rule: with ``--ckpt_path``, what defines the trained networks comes
    from the checkpoint, how it is run (the model class's ``runtime_options``: inference mode, predict fit, metrics ...) from the
    command line and config. A missing, damaged or mismatched checkpoint is a one-line error, before any
    run folder is written."""

    def __init__(self, *args, argv: Optional[list[str]] = None, **kwargs) -> None:
        self._limits = whole_number_limits(list(argv or []))
        self._argv = list(argv or [])
        self._model_class_path = model_class_path(self._argv)
        self._ckpt: Optional[dict[str, Any]] = None
        self._finetune_from: Optional[str] = None
        super().__init__(*args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in _SPECIAL_CKPT_PATHS:
            return
        if str(ckpt_path).startswith("wandb:"):  # a W&B model artifact (WandbLogger logs best and latest)
            ckpt_path = download_wandb_checkpoint(str(ckpt_path))
            self.config[self.config.subcommand]["ckpt_path"] = ckpt_path
        self._ckpt = load_checkpoint(ckpt_path)
        if self.config.subcommand == "fit" and "imported" in (self._ckpt.get("pix2pix_lit") or {}):
            # official weights (import-official): no optimizer or loop state to resume; fine-tuning starts at
            # step 0 from them (instantiate_classes loads them)
            self._finetune_from = ckpt_path
            self.config[self.config.subcommand]["ckpt_path"] = None
        hparams = dict(self._ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        # checkpoints from before the models/ layer name no class: they are pix2pix
        trained = resolve_model_class(hparams.pop("_class_path", DEFAULT_MODEL))
        configured = self.config[self.config.subcommand].model.class_path
        if resolve_model_class(configured) is not trained:
            raise CheckpointError(
                f"checkpoint {ckpt_path} holds a {trained.__name__} model but the config runs "
                f"{configured.rsplit('.', 1)[-1]}; use the config it was trained with{config_hint(trained)}"
            )
        for key in (*getattr(trained, "runtime_options", ()), *DATA_LINKED):  # what the data gives comes from the data
            hparams.pop(key, None)
        if hparams:
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": {"class_path": configured, "init_args": hparams}}}, self.config)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.subcommand == "fit" and not any(isinstance(cb, SaveOnSigterm) for cb in self.trainer.callbacks):
            self.trainer.callbacks += [SaveOnSigterm(), RequeueOnSlurmSignal(), _KeepRunDirOnceTrained()]
        for key, batches in self._limits.items():
            # jsonargparse hands the Trainer 1.0 (= 100%) for a 1; set the whole number of batches meant
            setattr(self.trainer, key, batches)
        if self._ckpt is not None:
            check_checkpoint_fits(self.model, self._ckpt, self._finetune_from or self.config[self.subcommand].ckpt_path)
            if self._finetune_from:
                self.model.on_load_checkpoint(self._ckpt)  # the EMA copies start from their generators
                self.model.load_state_dict(self._ckpt["state_dict"])
                logging.getLogger(__name__).info("fine-tuning from the imported weights of %s (step 0)",
                                                 self._finetune_from)
            self._ckpt = None  # Lightning reads the file again when it restores

    def add_arguments_to_parser(self, parser) -> None:
        # channels are a property of the data: the model takes them from there
        for option in DATA_LINKED:
            parser.link_arguments(f"data.init_args.{option}", f"model.init_args.{option}")
        parser.set_defaults({"model": {"class_path": self._model_class_path, "init_args": {}},
                             **default_data(self._argv, self._model_class_path), **SHARED_DEFAULTS})
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
        root = self._run_dir(cfg)
        if self.subcommand == "fit":
            self._check_run_length(cfg.trainer)
        self._check_data_kind(cfg)
        if not os.path.exists(root) and _is_launching_process():
            _NEW_RUN_DIR["path"] = os.path.abspath(root)
        self._place_checkpoints(cfg, root)
        self._check_accelerator(cfg.trainer.accelerator)
        self._refuse_unsupported_precision(cfg.trainer.precision)
        self._fall_back_precision(cfg)
        self._refuse_unsupported_strategy(cfg.trainer.strategy)
        self._place_loggers(cfg, root)
        if self.subcommand in ("validate", "test", "predict") and not cfg.get("ckpt_path") and rank_zero_only.rank == 0:
            # allowed (a protocol check, an untrained baseline), but rarely meant: say so before the numbers
            last = os.path.join(root, "checkpoints", "last.ckpt")
            log.warning("%s without --ckpt_path runs the networks' initial weights (untrained); pass --ckpt_path %s",
                        self.subcommand, last if os.path.isfile(last) else "runs/NAME/checkpoints/last.ckpt (or best-*)")

    @staticmethod
    def _check_data_kind(cfg) -> None:
        """The data module gives the batches the model trains on (paired ``source``/``target``, unpaired ``A``/``B``):
        a mismatch stops here in one line, not at the first batch with a run folder half written."""
        model_class = resolve_model_class(cfg.model.class_path)
        data_class = resolve_data_class(str(cfg.data.class_path))
        wanted = getattr(model_class, "data_kind", "paired")
        if data_class is ImageDataModule:
            raise ConfigError(f"data: {cfg.data.class_path} is the base of the data modules, not one; use "
                              f"{DATA_MODULES[wanted].__name__} (the default for model {model_class.__name__}) or "
                              "another in pix2pix_lit.data")
        given = next((kind for kind, base in DATA_MODULES.items() if issubclass(data_class, base)), None)
        if given is not None and given != wanted:
            raise ConfigError(f"model {model_class.__name__} trains on {wanted} data but data {data_class.__name__} "
                              f"gives {given} data; use {DATA_MODULES[wanted].__name__} or another {wanted} data "
                              f"module{config_hint(model_class)}")

    def _run_dir(self, cfg) -> str:
        """``trainer.default_root_dir``; a W&B sweep trial gets a folder of its own below it."""
        root = cfg.trainer.default_root_dir or os.getcwd()
        sweep, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
        if self.subcommand == "fit" and sweep and run_id:
            root = cfg.trainer.default_root_dir = os.path.join(root, f"sweep-{sweep}", run_id)
        return root

    def _place_checkpoints(self, cfg, root: str) -> None:
        """Checkpoints in ``<run>/checkpoints``; the best one by the metric the model logs, in its direction."""
        for key in ("checkpoint", "periodic_checkpoint", "best_checkpoint"):
            if cfg[key].dirpath is None:
                cfg[key].dirpath = os.path.join(root, "checkpoints")
        if cfg.best_checkpoint.monitor == "val/fid":
            self._default_monitor(cfg, cfg.model.init_args)
        if cfg.best_checkpoint.monitor:
            # best is the lowest FID/KID/L1/loss and the highest SSIM/PSNR, whatever the metric asked for
            mode = metric_mode(cfg.best_checkpoint.monitor)
            if cfg.best_checkpoint.mode != mode and mode == "max":
                log.info("best_checkpoint: %s is higher-is-better: keeping its maximum", cfg.best_checkpoint.monitor)
            cfg.best_checkpoint.mode = mode

    @staticmethod
    def _refuse_unsupported_precision(precision: Any) -> None:
        # the data, the metrics and the losses are float32 (or autocast's 16 bits): a float64 model meets float32
        # images at its first convolution
        if str(precision).startswith(("64", "transformer-engine")):
            raise ConfigError(f"trainer.precision={precision} is not supported: use 32-true, bf16-mixed or 16-mixed "
                              "(configs/trainer/cpu.yaml, gpu.yaml)")

    @staticmethod
    def _refuse_unsupported_strategy(strategy: Any) -> None:
        if isinstance(strategy, str) and strategy.startswith(_UNSUPPORTED_STRATEGIES):
            raise ConfigError(
                f"trainer.strategy={strategy} is not supported: the GANs here step two optimizers by hand, which "
                "pix2pix-lit runs and tests with DDP only; use --trainer.strategy ddp (or leave it auto)"
            )

    def _place_loggers(self, cfg, root: str) -> None:
        """The loggers write into the run folder; W&B names the run after it; evaluation keeps ``csv/`` apart."""
        loggers = cfg.trainer.logger
        if loggers in (False, None, []) and isinstance(cfg.trainer.callbacks, list):
            # the configs' LearningRateMonitor refuses to run without a logger: with logging off it has nothing to do
            cfg.trainer.callbacks = [c for c in cfg.trainer.callbacks
                                     if not str(getattr(c, "class_path", "")).endswith("LearningRateMonitor")]
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            if hasattr(lg, "class_path") and lg.class_path.rsplit(".", 1)[-1] in _RUN_DIR_LOGGERS:
                if lg.init_args.get("save_dir") in (None, "", "."):
                    # absolute: W&B resolves the git repository (and commit) of the run from it
                    lg.init_args.save_dir = os.path.abspath(root)
                if lg.class_path.endswith("WandbLogger") and not lg.init_args.get("name"):
                    lg.init_args.name = os.path.basename(os.path.normpath(os.path.abspath(root)))
                if lg.class_path.endswith("CSVLogger") and self.subcommand not in (None, "fit"):
                    # keep csv/ for the training history that `compare` reads
                    lg.init_args.name = f"csv-{self.subcommand}"

    @staticmethod
    def _check_run_length(trainer_cfg) -> None:
        steps, epochs = trainer_cfg.max_steps, trainer_cfg.max_epochs
        if steps is not None and (steps == 0 or steps < -1):
            raise ConfigError(f"trainer.max_steps={steps}: give a positive number of steps, or -1 for no step limit "
                              "(trainer.max_epochs then ends the run)")
        if epochs is not None and (epochs == 0 or epochs < -1):
            raise ConfigError(f"trainer.max_epochs={epochs}: give a positive number of epochs, or -1 for no epoch limit")
        every, interval = trainer_cfg.get("check_val_every_n_epoch"), trainer_cfg.get("val_check_interval")
        if every is not None and every < 1:  # Lightning divides by these at the first epoch's end
            raise ConfigError(f"trainer.check_val_every_n_epoch={every}: give a positive number of epochs, or null "
                              "(with trainer.val_check_interval in steps)")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval <= 0:
            raise ConfigError(f"trainer.val_check_interval={interval}: give a fraction of an epoch in (0, 1] or a "
                              "number of steps >= 1")

    # -- checks before a stage starts (before any process is launched or any file is written) ------------------
    def before_fit(self) -> None:
        self._check_process_count("fit")
        self._check_crop_fits()
        if self.trainer.is_global_zero:
            for cb in self.trainer.checkpoint_callbacks:
                if getattr(cb, "dirpath", None):
                    remove_stale_partials(Path(cb.dirpath))

    def before_validate(self) -> None:
        self._check_process_count("validate")
        self._check_crop_fits()

    def before_test(self) -> None:
        self._check_process_count("test")
        self._check_crop_fits()

    def _check_crop_fits(self) -> None:
        """Where every training and evaluation image is ``crop_size`` square, a side the generator cannot take stops
        here, not at the first batch of a started run (other preprocessing is checked batch by batch)."""
        h = getattr(self.datamodule, "hparams", {})
        crop, check = h.get("crop_size"), getattr(self.model, "check_size", None)
        if crop and check is not None and h.get("preprocess", "resize_and_crop") in CROPPED:
            check(torch.empty(0, 0, crop, crop))

    def _check_process_count(self, stage: str) -> None:
        """Every process must get at least one evaluation image (Lightning's sampler stops otherwise)."""
        world = self.trainer.world_size
        sizes = getattr(self.datamodule, "evaluation_sizes", None)
        if world < 2 or sizes is None:
            return
        for name, n in sizes(stage).items():
            if n < world:
                raise ConfigError(
                    f"the {name} has {n} image(s) but {world} processes evaluate it (trainer.devices x num_nodes): "
                    f"each needs one at least; use --trainer.devices {max(1, n)} or fewer, or more images"
                )

    def _default_monitor(self, cfg, model_args) -> None:
        """``val/fid`` (the default) as the model logs it: ``val/fid_B`` for CycleGAN; SSIM when FID is off; a
        model that names its own (the Segmenter: ``val/miou``) gets that."""
        model_class = resolve_model_class(cfg.model.class_path)
        own = getattr(model_class, "default_best_monitor", None)
        if own:
            cfg.best_checkpoint.monitor = own
            return
        suffix = next(iter(model_class.metric_domains.values()))
        if model_args.get("fid", True):
            clean = model_args.get("fid_protocol", "legacy") == "clean"  # clean-FID only: its name is clean_fid
            cfg.best_checkpoint.monitor = f"val/{'clean_fid' if clean else 'fid'}{suffix}"
        elif model_class.data_kind == "paired":
            cfg.best_checkpoint.monitor, cfg.best_checkpoint.mode = "val/ssim", "max"
            log.info("model.fid is off: best_checkpoint keeps the best val/ssim")
        else:
            # no monitor, no saving: every_n_epochs 0 also keeps its state key apart from `checkpoint`'s
            cfg.best_checkpoint.monitor, cfg.best_checkpoint.save_top_k, cfg.best_checkpoint.every_n_epochs = None, 0, 0
            log.info("model.fid is off: no best checkpoint (unpaired data has no SSIM); last.ckpt is kept")

    @staticmethod
    def _check_accelerator(accelerator: Any) -> None:
        """A GPU setting (``-c configs/trainer/gpu.yaml`` copied to a laptop) where none is visible: one line, not
        Lightning's traceback."""
        name = str(accelerator).lower() if isinstance(accelerator, str) else ""
        mps = getattr(torch.backends, "mps", None)
        has_mps = mps is not None and mps.is_available()
        if (name == "cuda" and not torch.cuda.is_available()) or (name == "mps" and not has_mps) or (
                name == "gpu" and not (torch.cuda.is_available() or has_mps)):
            build = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(f"trainer.accelerator {name}: no GPU is visible to this process (torch {torch.__version__}, "
                              f"{build}); use --trainer.accelerator cpu (or auto), or leave out -c configs/trainer/gpu.yaml")

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


CROPPED = ("resize_and_crop", "crop", "scale_width_and_crop")  # data.preprocess giving crop_size x crop_size images

# jsonargparse's refusal of a model/data option, inside its dump of the union of classes it tried
_CLASS_OPTION = re.compile(r"Parser key \"(?P<section>\w+)\":.*?Problem with given class_path '(?P<cls>[\w.]+)':\s*"
                           r"(?:Option '(?P<unknown>\w+)' is not accepted|Parser key \"(?P<name>[\w.]+)\":\s*(?P<why>[^\n]+))",
                           re.S)


def _class_option_error(message: str) -> Optional[str]:
    """jsonargparse's refusal of a model or data option (its dump of the union it tried) as one line: an option the
    class does not take, with the nearest one it does; or a value of the wrong type, with what the option takes."""
    m = _CLASS_OPTION.search(message)
    if m is None:
        return None
    section, cls = m["section"], find_class(m["cls"], [])
    cls_name = m["cls"].rpartition(".")[2]
    help_hint = f"(pix2pix-lit fit --{section}.help {cls_name} lists the options of {cls_name})"
    if m["unknown"]:
        import difflib

        from jsonargparse import ArgumentParser

        options = []
        if cls is not None:
            parser = ArgumentParser(exit_on_error=False)
            parser.add_class_arguments(cls, "x")
            options = [a.dest[2:] for a in parser._actions if a.dest.startswith("x.")]
        near = difflib.get_close_matches(m["unknown"], options, n=1)
        hint = f"; did you mean {section}.{near[0]}?" if near else ""
        return (f"{section}.{m['unknown']} is not an option of {cls_name}{hint} (pix2pix-lit fit --{section}.help "
                f"{cls_name} lists them)")
    typed = re.fullmatch(r"Expected a (?P<type>.+?)\. Got value: (?P<got>.*)", m["why"].strip())
    if typed is None:
        return f"{section}.{m['name']}: {m['why'].strip()} {help_hint}"
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", typed["type"])
    kind = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", typed["type"])  # <class 'collections.abc.Sequence'> -> Sequence
    if literal:
        wanted = "one of " + literal[1].replace("'", "")
    elif kind in ("Sequence", "List", "list"):
        wanted = "a list, written [a, b, c]"
    else:
        wanted = f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"
    return f"{section}.{m['name']}={typed['got']!r} is not {wanted} {help_hint}"


def _one_line(err: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in its traceback."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else type(err).__name__
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return line[len(prefix):] if line.startswith(prefix) else line


def _rejected(err: BaseException) -> Optional[BaseException]:
    """The Pix2PixLitError behind a parse error, if any (jsonargparse instantiates classes to validate), or
    Lightning's refusal of a Trainer setting (``MisconfigurationException``: its messages name the setting), as a
    ConfigError."""
    ours = find_in_chain(err, Pix2PixLitError)
    if ours is None and (theirs := find_in_chain(err, MisconfigurationException)) is not None:
        return ConfigError(f"Lightning: {_one_line(theirs)}")
    return ours


class _KeepRunDirOnceTrained(Callback):
    """Once a training step has run, the run folder holds a run (logs, grids): never removed after that."""

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        _NEW_RUN_DIR["path"] = None


def _is_launching_process() -> bool:
    """Not a process that Lightning's DDP launcher started for another rank (those re-run the command)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _remove_new_run_dir() -> None:
    """The run folder this command created, if the run stopped before it saved a checkpoint: no half-started run
    is left behind (config.yaml, logs and a W&B run of a run that never trained)."""
    path = _NEW_RUN_DIR["path"]
    if not path or (os.path.isdir(path) and any(Path(path).rglob("*.ckpt"))):
        return
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        # a W&B run that started writes its files (output.log, ...) until it is finished: finish it first, or it
        # recreates the folder after it was removed
        try:
            wandb.finish(exit_code=1)
        except Exception:  # noqa: BLE001 - the run folder goes anyway; the error the user sees is the one above
            pass
    shutil.rmtree(path, ignore_errors=True)


def build_cli(args: Optional[list[str]], argv: list[str], run: bool = True) -> Pix2PixCLI:
    """The CLI as ``pix2pix-lit`` runs it: any model (``model.class_path``) and any data module."""
    return Pix2PixCLI(
        pl.LightningModule,  # any of MODEL_BASES (resolve_model_class refuses the rest in one line)
        ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parser_kwargs={"prog": "pix2pix-lit", "description": _DESCRIPTION, "epilog": _EPILOG, "formatter_class": _HelpFormatter,
                       **({"exit_on_error": False} if run else {})},
        argv=argv,
    )


# the commands besides LightningCLI's fit/validate/test/predict: plain argparse, no Trainer (name: module, what it does)
TOOLS = {
    "prepare": ("pix2pix_lit.prepare", "your own images as training data: pairs, edge maps, splits, label maps, streaming shards"),
    "eval": ("pix2pix_lit.evaluate", "score a folder of generated images against real ones (FID, KID, ..., mIoU)"),
    "compare": ("pix2pix_lit.compare", "config differences, best/last metrics and curves of runs"),
    "export": ("pix2pix_lit.serving.export", "a checkpoint's generator as TorchScript or ONNX"),
    "serve": ("pix2pix_lit.serving.app", "a checkpoint or exported generator over HTTP, with a drawing page"),
    "import-official": ("pix2pix_lit.official", "official pretrained network files as pix2pix-lit checkpoints"),
    "zoo": ("pix2pix_lit.zoo", "the official pretrained models by name: list, fetch (check and import)"),
}
_DESCRIPTION = "Image-to-image translation GANs on PyTorch Lightning: train, score, translate, export and serve."
_EPILOG = "other commands (pix2pix-lit COMMAND --help):\n" + "\n".join(
    f"  {name:<22}{what}" for name, (_, what) in TOOLS.items())


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the epilog's list of commands kept one per line (argparse would refill it)."""


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in TOOLS:  # plain argparse commands, no Trainer
        sys.exit(importlib.import_module(TOOLS[argv[0]][0]).main(argv[1:]))
    if not argv:
        print(f"pix2pix-lit: error: give a command: fit, validate, test, predict or {', '.join(TOOLS)} "
              "(pix2pix-lit --help)", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A checkpoint written between batches holds the state after both updates of the last batch, which
    # is what resume needs; Lightning's advice for manual optimization does not apply.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    # Lightning's own noise, nothing a user can act on: a tip advertising a cloud logger at every Trainer,
    # torch's deprecation of a class Lightning 2.6 still builds (utilities/_pytree.py) at every predict,
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip:"))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    # and the summary's word that it counts bf16-mixed weights as 32 bits, which under mixed precision they are
    warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
    _NEW_RUN_DIR["path"] = None
    try:
        if "--zoo" in argv or any(a.startswith("--zoo=") for a in argv):  # an official model by its zoo name
            from pix2pix_lit.zoo import predict_arguments

            args = argv = predict_arguments(argv)
        build_cli(args, argv, run=True)
    except ArgumentError as e:
        cause = _rejected(e)
        msg = _one_line(cause) if cause else (
            _class_option_error(str(e)) or " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()))
        print(f"pix2pix-lit: error: {msg}", file=sys.stderr)
        sys.exit(2)
    except Requeued as e:
        print(f"pix2pix-lit: {e}; the requeued job resumes from it (no --ckpt_path needed on SLURM)", file=sys.stderr)
        sys.exit(SIGTERM_EXIT_CODE)
    except SIGTERMException:
        # Lightning stops the loops at the next batch and ends with SystemExit(0): a scheduler could not tell
        # that from a finished run
        print("pix2pix-lit: stopped by SIGTERM before the run finished; resume it with --ckpt_path last",
              file=sys.stderr)
        sys.exit(SIGTERM_EXIT_CODE)
    except Exception as e:
        # jsonargparse validates a class by instantiating it and wraps what it raised: unwrap ours
        cause = _rejected(e)
        if cause is None:
            raise
        if _is_launching_process():
            _remove_new_run_dir()
        print(f"pix2pix-lit: error: {_one_line(cause)}", file=sys.stderr)
        sys.exit(cause.exit_code)


if __name__ == "__main__":
    main()
