"""The shared plumbing of every image-translation GAN here: one LightningModule base class.

An algorithm (``models/pix2pix.py``, ``models/cyclegan.py``) subclasses :class:`ImageTranslationModel`,
builds its networks and writes a ``training_step`` that reads like its paper, with its losses in named
``discriminator_loss(...)`` / ``generator_loss(...)`` methods returning ``(loss, logs)``. This class owns
what all of them need: optimizers and LR policies, precision and memory-format setup, the inference
modes and ``generate``, the EMA generators, metrics (val/test/predict steps), the non-finite guard, step
accounting (one batch = one step, whatever the number of optimizers) and RNG state in checkpoints.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, ReduceLROnPlateau, StepLR

from pix2pix_lit.data.datasets import fingerprint
from pix2pix_lit.data.transforms import crop_box, pad_to_multiple
from pix2pix_lit.ema import make_ema
from pix2pix_lit.errors import ConfigError, NonFiniteLossError, check_choice
from pix2pix_lit.metrics import ImageQualityMetrics, find_inception_weights, load_inception
from pix2pix_lit.modes import DIRECTIONS, HIGHER_IS_BETTER, INFERENCE_MODES, higher_is_better, metric_mode  # noqa: F401
from pix2pix_lit.nets.norm import batch_norm_own_statistics
from pix2pix_lit.optim import Adam
from pix2pix_lit.precision import autocast_ready_copy, cpu_precision_fallback, is_16bit

log = logging.getLogger(__name__)

LR_POLICIES = ("linear", "step", "plateau", "cosine")

# Options that say how a trained model is run, not what was trained: with --ckpt_path they come from
# the command line/config, never from the checkpoint's hyper-parameters (see Pix2PixCLI).
RUNTIME_OPTIONS = (
    "inference_mode", "predict_fit", "predict_size", "channels_last", "compile", "fid", "kid", "mifid", "mifid_eps",
    "inception_weights", "kid_subset_size", "max_nonfinite_steps", "use_ema_for_eval",
)


class ImagePool:
    """The official image buffer: D sees a mix of current and past fakes (``pool_size=0`` disables it).

    Each call returns, image by image, either the new image or (with probability 1/2, once the pool is
    full) a stored one that the new image replaces.
    """

    def __init__(self, pool_size: int) -> None:
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                i = random.randint(0, self.pool_size - 1)
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


def linear_decay(n_epochs: int, n_epochs_decay: int):
    """The official 'linear' rule: lr constant for ``n_epochs``, then linearly to ~0 over ``n_epochs_decay``."""

    def rule(epoch: int) -> float:
        # clamped at 0: the official formula turns negative if training runs past the schedule
        return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1))

    return rule


class ImageTranslationModel(pl.LightningModule):
    """Base class of the GANs here (see the module docstring). Manual optimization: a subclass's
    ``training_step`` updates its optimizers with :meth:`toggled` and :meth:`update` and ends with
    :meth:`end_batch`.

    What a subclass declares:
        ``generator_names``: its generators (attributes), e.g. ``("G",)`` or ``("G_A", "G_B")``; each gets an
            EMA copy ``<name>_ema`` when ``ema_decay`` is set.
        ``data_kind``: ``"paired"`` (batches ``source``/``target``) or ``"unpaired"`` (``A``/``B``).
        ``metric_domains``: metric name suffix per evaluated output domain (``{"out": ""}`` logs ``val/fid``,
            ``{"B": "_B", "A": "_A"}`` logs ``val/fid_B``, ``val/fid_A``).
        ``generator_for(direction)``, ``evaluate_batch(...)``, ``grid_rows(...)``, ``configure_optimizers``.

    Shared options (official names where the official code has them):
        lr, beta1, beta2: Adam. lr_policy: linear (n_epochs constant + n_epochs_decay to 0) | step (x0.1 every
            lr_decay_iters epochs) | plateau (x0.2 when ``plateau_monitor`` stalls 5 epochs) | cosine (over n_epochs).
        inference_mode: how the generators run at validation/test/predict. ``paper`` (default): the official
            ``test.py`` without ``--eval``: dropout as in training, every image normalised with its own
            statistics (one image at a time; running statistics untouched). ``eval``: the official ``--eval``:
            dropout off, batch norm with the running statistics.
        predict_fit: how ``predict`` fits any image size: ``pad`` (reflect-pad to a multiple of the generator's
            stride, then crop back) or ``resize`` (to ``predict_size``, then back).
        channels_last: NHWC memory format. ``null``: on with 16-bit/bf16 precision and on GPUs, off for fp32 on CPU.
        compile: ``torch.compile`` the networks.
        fid, kid, mifid, mifid_eps, inception_weights, kid_subset_size: metric settings (``pix2pix_lit.metrics``).
        max_nonfinite_steps: stop after this many consecutive batches with NaN/Inf losses (they are skipped).
        ema_decay, ema_warmup: an exponential moving average of each generator (``<name>_ema``), updated after
            every generator step (``null``: none, as the official code). use_ema_for_eval: evaluate/predict/export it.
    """

    generator_names: tuple[str, ...] = ("G",)
    data_kind: str = "paired"
    metric_domains: dict[str, str] = {"out": ""}
    # which of the data module's training_references() each metric domain's MiFID compares with
    reference_domains: dict[str, str] = {"out": "target"}

    def __init__(
        self,
        lr: float = 0.0002,
        beta1: float = 0.5,
        beta2: float = 0.999,
        lr_policy: str = "linear",
        n_epochs: int = 100,
        n_epochs_decay: int = 100,
        lr_decay_iters: int = 50,
        plateau_monitor: str = "val/fid",
        inference_mode: str = "paper",
        predict_fit: str = "pad",
        predict_size: int = 256,
        channels_last: Optional[bool] = None,
        compile: bool = False,
        fid: bool = True,
        kid: bool = True,
        mifid: bool = False,
        mifid_eps: float = 0.1,
        inception_weights: Optional[str] = None,
        kid_subset_size: int = 1000,
        max_nonfinite_steps: int = 20,
        ema_decay: Optional[float] = None,
        ema_warmup: bool = True,
        use_ema_for_eval: bool = True,
    ) -> None:
        super().__init__()
        check_choice("model.lr_policy", lr_policy, LR_POLICIES)
        check_choice("model.inference_mode", inference_mode, INFERENCE_MODES)
        check_choice("model.predict_fit", predict_fit, ("pad", "resize"))
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay={ema_decay} must be between 0 and 1 (e.g. 0.999), or null for no EMA")
        if lr <= 0 or max_nonfinite_steps < 1:
            raise ConfigError("model.lr must be > 0 and model.max_nonfinite_steps >= 1")
        if mifid and not (fid and kid):
            raise ConfigError("model.mifid needs model.fid and model.kid (MiFID is FID divided by a memorization term "
                              "computed on the Inception features KID keeps)")
        if not 0.0 < mifid_eps <= 1.0:
            raise ConfigError(f"model.mifid_eps={mifid_eps} must be in (0, 1] (Kaggle's threshold is 0.1)")
        # the subclass's own arguments are collected too (Lightning walks the __init__ frames)
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({d: ImageQualityMetrics(fid, kid, kid_subset_size, mifid=mifid, mifid_eps=mifid_eps)
                                  for d in self.metric_domains})
            for stage in ("val", "test")
        })
        self.nonfinite_total = 0
        self._nonfinite_run = 0
        self._batch_failed: list[str] = []
        self._eval_pass_nets: Optional[dict] = None  # see autocast_ready; a dict only during an evaluation pass
        self._inception_attached = False  # the FID Inception is set on the metrics (see _attach_inception)
        self._rng_to_restore: Optional[dict[str, Any]] = None
        self.use_channels_last: bool = bool(channels_last)  # resolved against the Trainer in setup()
        self.test_results: dict[str, float] = {}

    # -- for subclasses: networks ----------------------------------------------------------------------
    def add_ema_generators(self) -> None:
        """Give every generator its EMA copy (``<name>_ema``), if ``ema_decay`` is set. Call after building them.

        Submodules, so checkpoints hold them and DDP starts them equal on every rank."""
        decay = self.hparams.ema_decay
        for name in self.generator_names:
            setattr(self, f"{name}_ema", make_ema(getattr(self, name), decay, self.hparams.ema_warmup) if decay else None)

    def ema_of(self, name: str):
        return getattr(self, f"{name}_ema", None)

    def networks(self) -> list[nn.Module]:
        """Every trained network and EMA copy (for the memory format and compile)."""
        return [m for m in self.children() if not isinstance(m, (ImageQualityMetrics, nn.ModuleDict))
                and any(True for _ in m.parameters())]

    # -- setup ---------------------------------------------------------------------------------------
    def _stage_metrics(self, stage: Optional[str]) -> Optional[nn.ModuleDict]:
        key = {"fit": "val", "validate": "val", "test": "test"}.get(stage or "")
        return self.eval_metrics[key] if key else None

    def _needs_inception(self, stage: Optional[str]) -> bool:
        metrics = self._stage_metrics(stage)
        return metrics is not None and any(m.needs_inception for m in metrics.values())

    def _attach_inception(self, stage: Optional[str]) -> None:
        if self._needs_inception(stage) and not self._inception_attached:
            extractor = load_inception(self.hparams.inception_weights)
            for stage_metrics in self.eval_metrics.values():
                for m in stage_metrics.values():
                    m.set_extractor(extractor)
            self._inception_attached = True

    def _detach_inception(self) -> None:
        # While fit trains, the FID Inception (95 MB) is not needed: it goes when training starts and after each
        # validation, and is loaded again (~0.15 s) for the next one, so a training's peak memory does not carry
        # it (experiments/RESULTS.md, "issue 10: memory").
        for stage_metrics in self.eval_metrics.values():
            for m in stage_metrics.values():
                m.set_extractor(None)
        self._inception_attached = False

    def prepare_data(self) -> None:
        # Lightning calls this before it starts the loggers: missing FID weights stop the run before a
        # W&B run or any other file is written (setup() then loads them)
        stage = self.trainer.state.fn.value if self._trainer is not None and self.trainer.state.fn else None
        if self._needs_inception(stage):
            find_inception_weights(self.hparams.inception_weights)

    def setup(self, stage: str) -> None:
        self._let_ddp_skip_unused_parameters()
        self._attach_inception(stage)  # loaded now: a bad weights file stops the run before training
        self.use_channels_last = self._resolve_channels_last()
        fmt = torch.channels_last if self.use_channels_last else torch.contiguous_format
        for net in self.networks():
            net.to(memory_format=fmt)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            for name in (*self.generator_names, *self.discriminator_names()):
                getattr(self, name).compile()
            self._compiled = True

    def discriminator_names(self) -> list[str]:
        return [n for n, m in self.named_children() if n not in self.generator_names and not n.endswith("_ema")
                and not isinstance(m, (ImageQualityMetrics, nn.ModuleDict)) and any(True for _ in m.parameters())]

    def _let_ddp_skip_unused_parameters(self) -> None:
        """Make every DDP spelling train (``ddp``, ``ddp_spawn``, ``devices: N``, ...).

        Each backward of a GAN step reaches only the networks of one optimizer (D's loss does not reach G,
        and D is frozen while G's loss flows through it), so DDP must be told that parameters can go
        unused in a backward, or it stops at the next step. Lightning runs this hook before the strategy
        wraps the model; it has no public setting for it once the strategy is built, hence ``_ddp_kwargs``.
        """
        if self._trainer is None:
            return
        strategy = self.trainer.strategy
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        if isinstance(strategy, DDPStrategy) and isinstance(kwargs, dict) and not kwargs.get("find_unused_parameters"):
            kwargs["find_unused_parameters"] = True
            rank_zero_info(
                "DDP: find_unused_parameters=True (each backward of a GAN step updates only the generators or only "
                "the discriminators), as strategy=ddp_find_unused_parameters_true"
            )

    def _resolve_channels_last(self) -> bool:
        if self.hparams.channels_last is not None:
            return bool(self.hparams.channels_last)
        if self._trainer is None:
            return False
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        return not on_cpu or is_16bit(self.trainer.precision)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the networks' memory format."""
        if self.use_channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def size_multiple(self) -> int:
        """What image sides every generator accepts must divide by."""
        return max(getattr(self, n).size_multiple for n in self.generator_names)

    @property
    def min_size(self) -> int:
        """The smallest image side every generator accepts (a multiple of :attr:`size_multiple`)."""
        side = max(getattr(getattr(self, n), "min_size", 1) for n in self.generator_names)
        return side + (-side % self.size_multiple)

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ConfigError(
                f"images are {h}x{w} but netG={self.hparams.netG} needs sides divisible by {m}; "
                f"set data.crop_size to a multiple of {m} (or choose another netG)"
            )

    # -- optimizers and the training-step helpers --------------------------------------------------------
    def adam(self, params) -> torch.optim.Adam:
        """The official Adam (lr, β1, β2), on torch's fused kernel (``pix2pix_lit.optim``: same update, faster)."""
        h = self.hparams
        return Adam(params, lr=h.lr, betas=(h.beta1, h.beta2))

    def schedulers_for(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[dict[str, Any]]:
        """The LR policy for each optimizer, logged as ``lr/<name>``; stepped once per epoch (official)."""
        return [{"scheduler": self._scheduler(opt), "name": f"lr/{name}"} for name, opt in optimizers.items()]

    def _scheduler(self, opt: torch.optim.Optimizer):
        h = self.hparams
        if h.lr_policy == "linear":
            return LambdaLR(opt, lr_lambda=linear_decay(h.n_epochs, h.n_epochs_decay))
        if h.lr_policy == "step":
            return StepLR(opt, step_size=h.lr_decay_iters, gamma=0.1)
        if h.lr_policy == "plateau":
            return ReduceLROnPlateau(opt, mode=metric_mode(h.plateau_monitor), factor=0.2, threshold=0.01, patience=5)
        return CosineAnnealingLR(opt, T_max=h.n_epochs, eta_min=0)

    @contextmanager
    def toggled(self, optimizer) -> Iterator[None]:
        """Only ``optimizer``'s networks require gradients inside (Lightning's toggle, undone on exit)."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def update(self, optimizer, loss: torch.Tensor, name: str) -> bool:
        """zero_grad, backward, step, unless ``loss`` is NaN/Inf on any process (then the update is skipped).

        The backward goes through Lightning (precision plugin: GradScaler under 16-mixed; DDP) and the step
        through the strategy, but not through the LightningOptimizer, whose step would count one trainer
        step per optimizer: :meth:`end_batch` counts the batch as one step.
        """
        bad = (~torch.isfinite(loss.detach())).float()
        ok = bool(self.trainer.strategy.reduce(bad, reduce_op="sum").item() == 0)  # all processes step or skip
        if ok:
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=_no_closure)
        else:
            self._batch_failed.append(name)
        return ok

    def update_ema(self) -> None:
        """Move every EMA generator towards its generator (after a generator step)."""
        for name in self.generator_names:
            ema = self.ema_of(name)
            if ema is not None:
                ema.update_parameters(getattr(self, name))

    def end_batch(self, logs: dict[str, torch.Tensor], batch_size: int, progress: Optional[str] = None) -> None:
        """Count the batch as one trainer step, apply the non-finite guard and log ``logs`` (as ``train/...``)."""
        steps = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        steps.increment_ready()
        steps.increment_completed()
        failed, self._batch_failed = self._batch_failed, []
        if failed:
            self.nonfinite_total += 1
            self._nonfinite_run += 1
            log.warning("non-finite %s at step %d: the update is skipped", failed[0], self.global_step)
            if self._nonfinite_run >= self.hparams.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self._nonfinite_run} consecutive batches had NaN/Inf losses (last: {failed[0]}); training "
                    "stopped. Lower model.lr, try trainer.precision=32 or bf16-mixed, or check the data for corrupt images"
                )
        else:
            self._nonfinite_run = 0
        self.log_dict({f"train/{k}": torch.as_tensor(v).detach().float() for k, v in logs.items()}, batch_size=batch_size)
        self.log("train/nonfinite_skipped", float(self.nonfinite_total), batch_size=batch_size)
        if progress is not None:
            self.log(progress, torch.as_tensor(logs[progress]).detach().float(), prog_bar=True, logger=False,
                     batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(sched, ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get(self.hparams.plateau_monitor)
                if metric is None:
                    raise ConfigError(
                        f"lr_policy=plateau watches {self.hparams.plateau_monitor!r}, which was not logged; "
                        "set model.plateau_monitor (e.g. train/loss_G) or enable validation"
                    )
                sched.step(metric)
            else:
                sched.step()

    def on_fit_start(self) -> None:
        h, t = self.hparams, self.trainer
        if h.lr_policy == "linear" and t.max_epochs not in (None, -1) and t.max_steps == -1:
            if t.max_epochs != h.n_epochs + h.n_epochs_decay:
                log.warning(
                    "trainer.max_epochs=%d but the linear LR policy spans n_epochs + n_epochs_decay = %d epochs",
                    t.max_epochs, h.n_epochs + h.n_epochs_decay,
                )
        if self.device.type == "cpu" and cpu_precision_fallback("cpu", t.precision) is not None:
            # the CLI switches to 32-true by itself (precision_fallback); a Trainer built in Python does not
            rank_zero_warn(
                f"precision={t.precision} on a CPU with no bf16 kernels (no AVX-512/AMX): convolutions run in slow "
                "reference code, about 30x slower than precision=32 here"
            )

    # -- inference -----------------------------------------------------------------------------------
    def generator_for(self, direction: str = "AtoB") -> str:
        """The name of the generator that translates in ``direction``."""
        raise NotImplementedError

    def inference_net(self, direction: str = "AtoB") -> nn.Module:
        """The network validation, test, predict and export run for ``direction``: the EMA copy if there is one
        (and ``use_ema_for_eval``), else the generator."""
        name = self.generator_for(direction)
        ema = self.ema_of(name)
        if ema is not None and self.hparams.get("use_ema_for_eval", True):
            return ema.module
        return getattr(self, name)

    def inference_net_name(self, direction: str = "AtoB") -> str:
        name = self.generator_for(direction)
        return f"{name}_ema" if self.inference_net(direction) is not getattr(self, name) else name

    @property
    def inference_G_name(self) -> str:
        """The generator(s) that evaluation runs, e.g. ``G_ema`` or ``G_A_ema+G_B_ema`` (named in metrics.json)."""
        dirs = DIRECTIONS if len(self.generator_names) > 1 else ("AtoB",)
        return "+".join(self.inference_net_name(d) for d in dirs)

    @contextmanager
    def inference(self, net: nn.Module) -> Iterator[None]:
        """``net`` in the chosen inference mode (see ``inference_mode``); changes no parameter or buffer."""
        was_training = net.training
        if self.hparams.inference_mode == "eval":
            net.eval()
            context = nullcontext()
        else:  # paper: dropout on, batch norm with the statistics of the images given
            net.train()
            context = batch_norm_own_statistics(net)
        try:
            with context:
                yield
        finally:
            net.train(was_training)

    @torch.no_grad()
    def generate(self, source: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        """The translation of ``source`` in ``direction``, in the configured inference mode, as float in [-1, 1].

        In ``paper`` mode each image goes through the generator alone: its normalisation statistics are its
        own, as in the official test (batch size 1), whatever the eval batch size or the number of processes.
        """
        source = self.prep(source)
        net = self.autocast_ready(self.inference_net(direction), source.device.type)
        with self.inference(net):
            if self.hparams.inference_mode == "paper" and source.shape[0] > 1:
                return torch.cat([net(x.unsqueeze(0)).float() for x in source])
            return net(source).float()

    def forward(self, source: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        return self.generate(source, direction)

    def autocast_ready(self, net: nn.Module, device_type: str) -> nn.Module:
        """During a validation/test/predict pass under autocast, ``net`` with its convolution weights cast once
        for the whole pass (:func:`~pix2pix_lit.precision.autocast_ready_copy`), else ``net``.

        Autocast casts every fp32 weight at every call: for unet_256 that is 54 M parameters per image, which
        was 43% of a paper-mode forward in bf16 on the CPU (16.4 against 28.7 img/s, outputs equal to the
        bit; ``experiments/RESULTS.md``). Weights cannot change within a pass; the copies are made at the
        first batch and dropped when the pass ends (``_begin_eval_pass``/``_end_eval_pass``).
        """
        cache = self._eval_pass_nets
        if cache is None or not torch.is_autocast_enabled(device_type) or hasattr(net, "_orig_mod"):
            return net
        dtype = torch.get_autocast_dtype(device_type)
        key = (id(net), dtype)
        if key not in cache:
            cache[key] = autocast_ready_copy(net, dtype) or net
        return cache[key]

    def _begin_eval_pass(self) -> None:
        self._eval_pass_nets = {}

    def _end_eval_pass(self) -> None:
        self._eval_pass_nets = None

    def grid_rows(self, batch: dict[str, torch.Tensor]) -> tuple[list[list[torch.Tensor]], float, str]:
        """Rows of images for the grids of fixed samples, their L1 and what the columns are."""
        raise NotImplementedError

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate_batch(self, batch: dict[str, Any], metrics: nn.ModuleDict, dataloader_idx: int) -> dict[str, Any]:
        """Update ``metrics`` (one ImageQualityMetrics per output domain) with a batch; return its outputs."""
        raise NotImplementedError

    def real_set_loaders(self) -> dict[str, int]:
        """Which eval dataloader holds the real images of each metric domain (to key the cached features)."""
        return {d: 0 for d in self.metric_domains}

    def _use_real_sets(self, metrics: nn.ModuleDict, loaders: Any, num_batches: list[int]) -> None:
        """Key the cached real features to the images this pass evaluates (dataset, limits, batch size)."""
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        for domain, i in self.real_set_loaders().items():
            if i < len(loaders) and loaders[i] is not None:
                loader = loaders[i]
                metrics[domain].use_real_set(
                    fingerprint(loader.dataset, list(num_batches), loader.batch_size, self.trainer.world_size))

    def _scores_before_training(self) -> bool:
        """A sanity check over the whole val set (``trainer.num_sanity_val_steps: -1``) scores the untrained
        generators: the starting point of the val curves, logged at step 0."""
        return self.trainer.sanity_checking and self.trainer.num_sanity_val_steps == float("inf")

    def _eval_epoch_end(self, metrics: nn.ModuleDict, prefix: str) -> dict[str, float]:
        if self.trainer.sanity_checking and not self._scores_before_training():
            for m in metrics.values():
                m.reset()
            return {}
        out = {}
        for domain, m in metrics.items():
            values = m.compute()
            m.reset()
            out.update({f"{prefix}/{k}{self.metric_domains[domain]}": v.float() for k, v in values.items()})
        if self.trainer.sanity_checking:  # Lightning drops what is logged in the sanity check: to the loggers
            for logger in self.trainer.loggers if self.trainer.is_global_zero else []:
                logger.log_metrics({k: float(v) for k, v in out.items()}, step=0)
            return {k: float(v) for k, v in out.items()}
        self.log_dict(out, sync_dist=False)
        return {k: float(v) for k, v in out.items()}

    def on_validation_epoch_start(self) -> None:
        self._begin_eval_pass()
        self._attach_inception(self.trainer.state.fn.value)
        self._use_real_sets(self.eval_metrics["val"], self.trainer.val_dataloaders, self.trainer.num_val_batches)
        if not self.trainer.sanity_checking or self._scores_before_training():
            self._use_training_references(self.eval_metrics["val"])

    def on_test_epoch_start(self) -> None:
        self._begin_eval_pass()
        self._use_real_sets(self.eval_metrics["test"], self.trainer.test_dataloaders, self.trainer.num_test_batches)
        self._use_training_references(self.eval_metrics["test"])

    def _use_training_references(self, metrics: nn.ModuleDict) -> None:
        """Give MiFID the Inception features of the training images (computed once per set of images, each
        process a share of them), which its memorization term compares the generated images with."""
        domains = [d for d, m in metrics.items() if m.mifid]
        if not domains:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "training_references"):
            raise ConfigError("model.mifid compares generated images with the training images, which this data module "
                              "does not give (training_references()); set model.mifid: false")
        references = datamodule.training_references()
        for domain in domains:
            dataset, key = references[self.reference_domains[domain]]
            m = metrics[domain]
            if m.training_key != key:
                m.set_training_reference(self._inception_features(dataset, m), key)
                rank_zero_info(f"MiFID: the memorization term compares with the {m.training_features.shape[0]} "
                               f"training images of {self.reference_domains[domain]}")

    @torch.no_grad()
    def _inception_features(self, dataset, metrics: ImageQualityMetrics) -> torch.Tensor:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        share = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
        loader = torch.utils.data.DataLoader(share, batch_size=8, num_workers=0)
        feats = [metrics.features(batch["image"].to(self.device)) for batch in loader]
        local = torch.cat(feats) if feats else torch.zeros(0, 2048, device=self.device)
        if world > 1:
            from torchmetrics.utilities.distributed import gather_all_tensors

            local = torch.cat(gather_all_tensors(local))
        return local

    def on_predict_epoch_start(self) -> None:
        self._begin_eval_pass()

    def on_predict_epoch_end(self) -> None:
        self._end_eval_pass()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        # a partial sanity check only runs the networks
        scored = not self.trainer.sanity_checking or self._scores_before_training()
        self.evaluate_batch(batch, self.eval_metrics["val"] if scored else None, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._end_eval_pass()
        self._eval_epoch_end(self.eval_metrics["val"], "val")

    def on_validation_end(self) -> None:
        # A partial pass (the sanity check, limit_val_batches < 1) leaves its DataLoader iterator, and with it
        # the loader's worker processes, alive until the next validation, holding memory through a whole
        # training epoch (see PairedDataModule._eval_loader). Lightning ends them only when fit ends and has
        # no public call for it; its fetcher's own teardown does it, and the next validation makes a new one.
        if self.trainer.state.fn == "fit":
            self._detach_inception()
            loop = self.trainer.fit_loop.epoch_loop.val_loop
            fetcher = getattr(loop, "_data_fetcher", None)
            if fetcher is not None:  # what the loop's own teardown does, without moving its logged results
                fetcher.teardown()
                loop._data_fetcher = None

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self.evaluate_batch(batch, self.eval_metrics["test"], dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._end_eval_pass()
        self.test_results = self._eval_epoch_end(self.eval_metrics["test"], "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Any image size: padded to what the generator accepts (or resized), translated, brought back."""
        source = batch["source"]
        direction = batch.get("direction", ["AtoB"])[0]
        h, w = source.shape[-2:]
        if self.hparams.predict_fit == "resize":
            s = self.hparams.predict_size
            # antialiased bicubic, as PIL resizes the training images (plain bicubic aliases when shrinking)
            x = F.interpolate(source.float(), size=(s, s), mode="bicubic", align_corners=False, antialias=True)
            fake = self.generate(x.clamp(-1, 1), direction)
            fake = F.interpolate(fake, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
        else:
            x, box = pad_to_multiple(source, self.size_multiple, self.min_size)
            fake = crop_box(self.generate(x, direction), box)
        return {"fake": fake, "name": batch["name"]}

    # -- checkpoints ---------------------------------------------------------------------------------
    def image_pools(self) -> dict[str, ImagePool]:
        """The algorithm's image pools by name (saved in checkpoints for exact resume)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not store RNG states; dropout and the image pools draw from them, so exact resume
        # needs them. The data order and augmentation are seeded per epoch (SeededSampler).
        # which model class this is, also for models built in Python (LightningCLI writes it for its own)
        checkpoint.setdefault("hyper_parameters", {}).setdefault(
            "_class_path", f"{type(self).__module__}.{type(self).__qualname__}")
        checkpoint["pix2pix_lit"] = {
            "rng_states": collect_rng_states(),
            "image_pools": {k: [t.cpu() for t in pool.images] for k, pool in self.image_pools().items()},
            "nonfinite_total": self.nonfinite_total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.get("state_dict", {})
        for name in self.generator_names:
            prefix = f"{name}_ema."
            has = any(k.startswith(prefix) for k in weights)
            if self.ema_of(name) is not None and not has:
                # a checkpoint from a run without EMA: the average starts from its generator
                log.info("the checkpoint has no EMA of %s: %s_ema starts from its %s", name, name, name)
                for k, v in list(weights.items()):
                    if k.startswith(f"{name}."):
                        weights[f"{prefix}module.{k[len(name) + 1:]}"] = v.clone()
                weights[f"{prefix}n_averaged"] = torch.tensor(0, dtype=torch.long)
            elif self.ema_of(name) is None and has:
                log.info("the checkpoint's EMA of %s is not used (model.ema_decay is null)", name)
                for k in [k for k in weights if k.startswith(prefix)]:
                    del weights[k]
        state = checkpoint.get("pix2pix_lit", {})
        self._rng_to_restore = state.get("rng_states")
        self.restore_pools(state)
        self.nonfinite_total = int(state.get("nonfinite_total", 0))

    def restore_pools(self, state: dict[str, Any]) -> None:
        saved = state.get("image_pools", {})
        for name, pool in self.image_pools().items():
            pool.images = list(saved.get(name, []))

    def on_train_start(self) -> None:
        # after the sanity check, so the RNG continues exactly where the interrupted run left it
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        for pool in self.image_pools().values():
            pool.images = [t.to(self.device) for t in pool.images]
        self._detach_inception()  # loaded at setup (or kept from the sanity check): not needed until validation


def collect_rng_states() -> dict[str, Any]:
    """Global RNG states of torch (CPU, CUDA), numpy and Python, as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _no_closure() -> None:
    return None


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
