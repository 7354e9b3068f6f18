"""The LightningModule contract every image-translation GAN here fills in.

An algorithm (``models/pix2pix.py``, ``models/cyclegan.py``) subclasses :class:`ImageTranslationModel`,
builds its networks and writes a ``training_step`` that reads like its paper. This class owns setup (memory
format, compile, DDP), the optimizer and step helpers (one batch = one step), the EMA generators and the
EMA generators; evaluation (``models/evaluation.py``), inference (``models/inference.py``) and the state a checkpoint
holds for exact resume (``models/training_state.py``) are its parts.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from pix2pix_lit.checkpoints import EMA_SUFFIX
from pix2pix_lit.ema import ema_update, make_ema
from pix2pix_lit.errors import ConfigError, check_choice, check_numbers
from pix2pix_lit.lightning_internals import allow_unused_parameters, count_manual_step, epoch_cut_short, logs_this_step
from pix2pix_lit.metrics import ImageQualityMetrics
from pix2pix_lit.models.evaluation import Evaluation
from pix2pix_lit.models.inference import Inference
from pix2pix_lit.models.nonfinite import NonFiniteGuard
from pix2pix_lit.models.training_state import TrainingState
from pix2pix_lit.modes import INFERENCE_MODES, InferenceMode
from pix2pix_lit.nets.generators import checkpoint_residual_blocks
from pix2pix_lit.nets.norm import plain_batch_norms
from pix2pix_lit.optim import LR_POLICIES, Adam, make_scheduler
from pix2pix_lit.precision import cpu_precision_fallback, is_16bit

log = logging.getLogger(__name__)

# Options that say how a trained model is run, not what was trained: with --ckpt_path they come from
# the command line/config, never from the checkpoint's hyper-parameters (see Pix2PixCLI).
RUNTIME_OPTIONS = (
    "inference_mode", "predict_fit", "predict_size", "predict_tile", "predict_tile_overlap", "predict_direction",
    "channels_last", "compile", "fid", "kid",
    "mifid", "mifid_eps", "inception_weights", "fid_real_stats", "kid_subset_size", "max_nonfinite_steps", "use_ema_for_eval",
    "vgg_weights", "vgg_sha256", "segmenter", "segmenter_weights", "checkpoint_activations",
)

# the range of every shared numeric option (errors.check_numbers); each model adds a table of its own
SHARED_NUMBERS = {
    "lr": ">0", "beta1": "[0,1)", "beta2": "[0,1)", "n_epochs": ">=0", "n_epochs_decay": ">=0",
    "lr_decay_iters": ">=1", "predict_size": ">=1", "predict_tile": ">=0", "kid_subset_size": ">=1",
    "max_nonfinite_steps": ">=1", "mifid_eps": "(0,1]", "label_nc": ">=0",
}
# what the GANs' network options share (Pix2Pix, CycleGAN; SPADE's are in its file)
NETWORK_NUMBERS = {
    "input_nc": ">=1", "output_nc": ">=1", "ngf": ">=1", "ndf": ">=1", "num_downs": ">=1", "n_blocks": ">=0",
    "n_layers_D": ">=1", "num_D": ">=1", "init_gain": ">0", "lambda_gp": ">=0", "pool_size": ">=0",
}


class ImageTranslationModel(TrainingState, Inference, Evaluation):
    """Base class of the GANs here (see the module docstring). Manual optimization: a subclass's
    ``training_step`` updates its optimizers with :meth:`toggled` and :meth:`update` and ends with
    :meth:`end_batch`.

    The contract with a subclass (``models/pix2pix.py`` is the shortest example):

    Declared (class attributes):
        ``generator_names``: its generators (attributes), e.g. ``("G",)`` or ``("G_A", "G_B")``; each gets an
            EMA copy ``<name>_ema`` when ``ema_decay`` is set.
        ``discriminator_names``: its discriminators, e.g. ``("D",)``.
        ``data_kind``: ``"paired"`` (batches ``source``/``target``) or ``"unpaired"`` (``A``/``B``).
        ``metric_domains``: metric name suffix per evaluated output domain (``{"out": ""}`` logs ``val/fid``,
            ``{"B": "_B", "A": "_A"}`` logs ``val/fid_B``, ``val/fid_A``); ``reference_domains``: which of the
            data's ``training_references()`` each domain's MiFID compares with.
    ``__init__``: ``super().__init__(**kwargs)`` first (the shared options below), then build the declared
        networks, then :meth:`finish_networks` once.
    Hooks (each raises until written): ``configure_optimizers`` (with :meth:`adam` and :meth:`schedulers_for`),
        ``training_step``, :meth:`generator_for`, :meth:`evaluate_batch`, :meth:`grid_rows`; optionally
        :meth:`image_pools` (saved for exact resume).
    Shared options (official names where the official code has them):
        lr, beta1, beta2: Adam. lr_policy: linear (n_epochs constant + n_epochs_decay to 0, junyanz's rule) |
            linear_nvidia (the same with pix2pixHD's and SPADE's rule, one epoch later) | step (x0.1 every
            lr_decay_iters epochs) | plateau (x0.2 when ``plateau_monitor`` stalls 5 epochs) | cosine (over n_epochs).
        inference_mode: how the generators run at validation/test/predict. ``paper`` (default): the official
            ``test.py`` without ``--eval``: dropout as in training, every image normalised with its own
            statistics (one image at a time; running statistics untouched). ``eval``: the official ``--eval``:
            dropout off, batch norm with the running statistics.
        predict_fit: how ``predict`` fits any image size: ``pad`` (reflect-pad to a multiple of the generator's
            stride, then crop back) or ``resize`` (to ``predict_size``, then back).
        predict_tile, predict_tile_overlap: ``predict`` (with ``pad``) of images larger than ``predict_tile`` pixels
            a side runs the generator on tiles of that side overlapping by ``predict_tile_overlap`` pixels (``null``:
            a quarter tile), blended with weights that fall off linearly across each overlap: memory of one tile,
            not of the image. Normalisation layers then see each tile's statistics, not the image's (docs/data.md, predict).
            0: the whole image at once.
        channels_last: NHWC memory format. ``null``: on with 16-bit/bf16 precision and on GPUs, off for fp32 on CPU.
        compile: ``torch.compile`` the networks.
        fid, kid, mifid, mifid_eps, inception_weights, kid_subset_size: metric settings (``pix2pix_lit.metrics``).
        fid_real_stats: a file of stored FID statistics (``pix2pix-lit eval --save_stats``) that validation and test
            score FID against instead of the real images' features (``pix2pix_lit.fid_stats``; KID off).
        checkpoint_activations: recompute the generators' residual-block activations in the backward pass instead of
            keeping them (ResNet, global and local generators): less training memory for one more forward of the
            blocks; the same gradients.
        segmenter, segmenter_weights: label-map sources only: also score the generated photos with this segmenter
            (a Segmenter checkpoint, or ``torchvision:NAME`` with its local state dict) against their label maps:
            ``val/miou``, ``val/pixel_acc``, ``val/class_acc`` (``pix2pix_lit.segmentation``).
        max_nonfinite_steps: stop after this many consecutive batches with NaN/Inf losses (they are skipped).
        ema_decay, ema_warmup: an exponential moving average of each generator (``<name>_ema``), updated after
            every generator step (``null``: none, as the official code). use_ema_for_eval: evaluate/predict/export it.
        label_nc, contain_dontcare_label, no_instance: the sources are label maps (linked from the data, as the
            channels): the networks see them one-hot (+ a don't-care class) (+ the instance edges), see
            :meth:`network_input`; ``label_nc`` 0: the sources are images of ``input_nc`` channels.
    """

    generator_names: tuple[str, ...] = ("G",)
    discriminator_names: tuple[str, ...] = ("D",)
    data_kind: str = "paired"
    _REQUIRED_HOOKS = ("configure_optimizers", "training_step", "generator_for", "evaluate_batch", "grid_rows")

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
        inference_mode: InferenceMode = "paper",
        predict_fit: str = "pad",
        predict_size: int = 256,
        predict_tile: int = 0,
        predict_tile_overlap: Optional[int] = None,
        channels_last: Optional[bool] = None,
        compile: bool = False,
        fid: bool = True,
        kid: bool = True,
        mifid: bool = False,
        mifid_eps: float = 0.1,
        inception_weights: Optional[str] = None,
        fid_real_stats: Optional[str] = None,
        kid_subset_size: int = 1000,
        max_nonfinite_steps: int = 20,
        ema_decay: Optional[float] = None,
        ema_warmup: bool = True,
        use_ema_for_eval: bool = True,
        label_nc: int = 0,
        contain_dontcare_label: bool = False,
        no_instance: bool = False,
        segmenter: Optional[str] = None,
        segmenter_weights: Optional[str] = None,
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        check_numbers(locals(), SHARED_NUMBERS)
        check_choice("model.lr_policy", lr_policy, LR_POLICIES)
        check_choice("model.inference_mode", inference_mode, INFERENCE_MODES)
        check_choice("model.predict_fit", predict_fit, ("pad", "resize"))
        if predict_tile and predict_fit != "pad":
            raise ConfigError(f"model.predict_tile={predict_tile}: give a tile side in pixels (with model.predict_fit "
                              "pad), or 0 for whole images")
        if predict_tile_overlap is not None and not 0 <= 2 * predict_tile_overlap <= predict_tile:
            raise ConfigError(f"model.predict_tile_overlap={predict_tile_overlap} must be between 0 and half of "
                              f"model.predict_tile={predict_tile}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay={ema_decay} must be between 0 and 1 (e.g. 0.999), or null for no EMA")
        if mifid and not (fid and kid):
            raise ConfigError("model.mifid needs model.fid and model.kid (MiFID is FID divided by a memorization term "
                              "computed on the Inception features KID keeps)")
        if fid_real_stats is not None:
            if not fid or kid or len(self.metric_domains) > 1:
                raise ConfigError(f"model.fid_real_stats {fid_real_stats} gives FID's real side for one output domain: "
                                  "it needs model.fid: true and model.kid: false (KID needs every real image's features)"
                                  + (f", and {type(self).__name__} scores {len(self.metric_domains)} domains"
                                     if len(self.metric_domains) > 1 else ""))
        if segmenter is not None:
            if label_nc == 0 or self.data_kind != "paired":
                raise ConfigError("model.segmenter scores generated photos against the label maps they were made from: "
                                  "it needs paired label-map data (data.label_nc > 0); for other outputs use "
                                  "pix2pix-lit eval FAKE_DIR --labels LABEL_DIR --segmenter SEG")
        # the subclass's own arguments are collected too (Lightning walks the __init__ frames)
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.make_eval_metrics(fid, kid, kid_subset_size, mifid, mifid_eps)
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._rng_to_restore: Optional[dict[str, Any]] = None
        self.use_channels_last: bool = bool(channels_last)  # resolved against the Trainer in setup()

    # -- for subclasses: networks ----------------------------------------------------------------------
    def finish_networks(self) -> None:
        """The end of a subclass's ``__init__``, once its declared networks exist: checks them and the hooks,
        checks ``predict_size`` against the generators, and gives every generator its EMA copy
        (``<name>_ema``) if ``ema_decay`` is set (submodules, so checkpoints hold them and DDP starts them
        equal on every rank)."""
        cls = type(self).__name__
        for name in (*self.generator_names, *self.discriminator_names):
            if not isinstance(getattr(self, name, None), nn.Module):
                raise TypeError(f"{cls} declares the network {name!r} but has no nn.Module attribute of that name")
        for hook in self._REQUIRED_HOOKS:
            if getattr(type(self), hook) is getattr(ImageTranslationModel, hook):
                raise TypeError(f"{cls} must write {hook}() (see ImageTranslationModel)")
        if self.hparams.predict_size % self.size_multiple:
            raise ConfigError(f"model.predict_size={self.hparams.predict_size} must be a multiple of "
                              f"{self.size_multiple} for netG={self.generator_label}")
        tile = self.hparams.predict_tile
        if tile and (tile % self.size_multiple or tile < self.min_size):
            raise ConfigError(f"model.predict_tile={tile} must be a multiple of {self.size_multiple} and at least "
                              f"{self.min_size} for netG={self.generator_label}")
        if self.hparams.checkpoint_activations:
            for name in self.generator_names:
                if not checkpoint_residual_blocks(getattr(self, name)):
                    raise ConfigError(f"model.checkpoint_activations: the generator {name} "
                                      f"({self.generator_label}) has no residual "
                                      "blocks to checkpoint; use a ResNet, global or local netG, or set it false")
        decay = self.hparams.ema_decay
        for name in self.generator_names:
            setattr(self, f"{name}{EMA_SUFFIX}", make_ema(getattr(self, name), decay, self.hparams.ema_warmup) if decay else None)
        self._networks_finished = True

    def ema_of(self, name: str):
        return getattr(self, f"{name}{EMA_SUFFIX}", None)

    def networks(self) -> list[nn.Module]:
        """Every trained network and EMA copy (for the memory format and compile)."""
        return [m for m in self.children() if not isinstance(m, (ImageQualityMetrics, nn.ModuleDict))
                and any(True for _ in m.parameters())]

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if not getattr(self, "_networks_finished", False):
            raise TypeError(f"{type(self).__name__}.__init__ must end with self.finish_networks()")
        self._let_ddp_skip_unused_parameters()
        if self._trainer is not None and self.trainer.world_size > 1 and self.trainer.strategy.root_device.type == "cpu":
            if plain_batch_norms(self):
                rank_zero_warn("synchronised batch norm runs only between GPU processes: on these CPU processes each "
                               "normalises with its own batch (norm syncbatch -> batch)")
        self._attach_inception(stage)  # loaded now: a bad weights file stops the run before training
        self.make_segmentation_scores()
        if self._trainer is not None:  # reading the counts costs a CPU nothing, an accelerator a wait
            self.nonfinite.every_step = self.trainer.strategy.root_device.type == "cpu"
        self.use_channels_last = self._resolve_channels_last()
        fmt = torch.channels_last if self.use_channels_last else torch.contiguous_format
        for net in self.networks():
            net.to(memory_format=fmt)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            for name in (*self.generator_names, *self.discriminator_names):
                getattr(self, name).compile()
            self._compiled = True

    def _let_ddp_skip_unused_parameters(self) -> None:
        """Make every DDP spelling train (``ddp``, ``ddp_spawn``, ``devices: N``, ...): each backward of a GAN step
        reaches only one optimizer's networks, which DDP must be told (``lightning_internals``)."""
        if self._trainer is not None and allow_unused_parameters(self.trainer.strategy):
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

    # -- optimizers and the training-step helpers --------------------------------------------------------
    def adam(self, params, lr: Optional[float] = None) -> torch.optim.Adam:
        """The official Adam (``lr`` or model.lr, β1, β2), on torch's fused kernel (``pix2pix_lit.optim``: same
        update, faster)."""
        h = self.hparams
        return Adam(params, lr=h.lr if lr is None else lr, betas=(h.beta1, h.beta2))

    def schedulers_for(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[dict[str, Any]]:
        """The LR policy for each optimizer, logged as ``lr/<name>``; stepped once per epoch (official)."""
        return [{"scheduler": self._scheduler(opt), "name": f"lr/{name}"} for name, opt in optimizers.items()]

    def _scheduler(self, opt: torch.optim.Optimizer):
        h = self.hparams
        return make_scheduler(opt, h.lr_policy, h.n_epochs, h.n_epochs_decay, h.lr_decay_iters, h.plateau_monitor)

    @contextmanager
    def toggled(self, optimizer) -> Iterator[None]:
        """Only ``optimizer``'s parameters require gradients inside: the other optimizers' are frozen and given
        back their own setting on exit (what Lightning's ``toggle_optimizer`` does, from lists built once per
        set of optimizers instead of a dict of every parameter at every call: at batch 1 a GPU step feels it)."""
        frozen = self._others_of(optimizer)
        before = [p.requires_grad for p in frozen]
        for p in frozen:
            p.requires_grad = False
        try:
            yield
        finally:
            for p, was in zip(frozen, before):
                p.requires_grad = was

    def _others_of(self, optimizer) -> list[torch.nn.Parameter]:
        """The parameters of the other optimizers (not ``optimizer``'s), cached while the optimizers and the sizes
        of their groups stay the same (pix2pixHD's phase change regroups G's)."""
        optimizers = [getattr(o, "optimizer", o) for o in self.trainer.optimizers]
        key = tuple((id(o), tuple(len(g["params"]) for g in o.param_groups)) for o in optimizers)
        cache = self.__dict__.get("_toggle_cache")
        if cache is None or cache[0] != key:
            cache = (key, {})
            self.__dict__["_toggle_cache"] = cache
        inner = getattr(optimizer, "optimizer", optimizer)
        if id(inner) not in cache[1]:
            own = {id(p) for g in inner.param_groups for p in g["params"]}
            seen: set[int] = set()
            others = []
            for o in optimizers:
                for g in o.param_groups:
                    for p in g["params"]:
                        if id(p) not in own and id(p) not in seen:
                            seen.add(id(p))
                            others.append(p)
            cache[1][id(inner)] = others
        return cache[1][id(inner)]

    def update(self, optimizer, loss: torch.Tensor, name: str) -> torch.Tensor:
        """zero_grad, backward, step — the step skipped if ``loss`` is NaN/Inf on any process. Returns the skip
        flag: a 0-dim device tensor, 1.0 where the update was skipped.

        Nothing here waits for the device: the flag goes to the fused Adam as its ``found_inf`` (its kernel leaves
        weights, moments and step count untouched where it is 1); under a GradScaler (16-mixed) the NaN gradients
        of such a loss make the scaler's own ``found_inf`` skip it. Only an optimizer without the fused kernel needs
        the flag on the host. The backward goes through Lightning (precision plugin, DDP) and the step through the
        strategy, but not through the LightningOptimizer, whose step would count one trainer step per optimizer:
        :meth:`end_batch` counts the batch as one step.
        """
        skipped = (~torch.isfinite(loss.detach())).float().reshape(())
        if self.trainer.world_size > 1:  # all processes step or skip (a collective on the device, no wait)
            skipped = self.trainer.strategy.reduce(skipped, reduce_op="sum").clamp(max=1)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        inner = optimizer.optimizer
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(inner, "_step_supports_amp_scaling", False):
            self.trainer.strategy.optimizer_step(inner, closure=_no_closure)  # the scaler's found_inf skips NaN
        elif scaler is None and inner.defaults.get("fused"):
            inner.found_inf = skipped
            try:
                self.trainer.strategy.optimizer_step(inner, closure=_no_closure)  # Lightning's public step
            finally:
                del inner.found_inf
        elif skipped.item() == 0:  # an optimizer without the fused kernel: the host decides
            self.trainer.strategy.optimizer_step(inner, closure=_no_closure)
        self.nonfinite.record(name, skipped)
        return skipped

    def update_ema(self, skipped: Optional[torch.Tensor] = None) -> None:
        """Move every EMA generator towards its generator (after a generator step; not where ``skipped``)."""
        for name in self.generator_names:
            ema = self.ema_of(name)
            if ema is not None:
                ema_update(ema, getattr(self, name), skipped)

    @property
    def nonfinite_total(self) -> int:
        """Batches whose non-finite loss made their updates be skipped (saved in checkpoints)."""
        return self.nonfinite.total

    @nonfinite_total.setter
    def nonfinite_total(self, value: int) -> None:
        self.nonfinite.total = value

    def end_batch(self, logs: dict[str, torch.Tensor], batch_size: int, progress: Optional[str] = None) -> None:
        """Count the batch as one trainer step, apply the non-finite guard and log ``logs`` (as ``train/...``).

        Logged only at the steps a logger writes (``log_every_n_steps``) and at an epoch's and a run's last batch
        (what ``callback_metrics`` then holds): Lightning keeps nothing else of step values, and each ``log`` call
        costs host time a GPU step at batch 1 can feel."""
        count_manual_step(self.trainer)
        self.nonfinite.end_batch()
        writes = logs_this_step(self.trainer)
        if writes or self.nonfinite.every_step:
            self.nonfinite.check(self.global_step)
        if not writes:
            return
        self.log_dict({f"train/{k}": torch.as_tensor(v).detach().float() for k, v in logs.items()}, batch_size=batch_size)
        self.log("train/nonfinite_skipped", self.nonfinite.logged(), batch_size=batch_size)
        if progress is not None:
            self.log(progress, torch.as_tensor(logs[progress]).detach().float(), prog_bar=True, logger=False,
                     batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        if epoch_cut_short(self.trainer):
            return  # max_steps ended the run inside the epoch: the run that finishes the epoch steps the LR
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
        if h.lr_policy in ("linear", "linear_nvidia") and t.max_epochs not in (None, -1) and t.max_steps == -1:
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

    def on_train_start(self) -> None:
        self.resume_training_state()  # after the sanity check: the RNG goes on where the interrupted run left it
        self._detach_inception()  # loaded at setup (or kept from the sanity check): not needed until validation


def _no_closure() -> None:
    return None


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
