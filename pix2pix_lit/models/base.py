"""The LightningModule contract every image-translation GAN here fills in.

An algorithm (``models/pix2pix.py``, ``models/cyclegan.py``, ...) subclasses :class:`ImageTranslationModel`,
builds its networks and writes a ``training_step`` that reads like its paper. The base owns the shared options,
setup (memory format, compile, DDP), the optimizer and step helpers (one batch = one step) and the EMA
generators, and holds the named parts the Lightning hooks hand their work to: the generator runner, the evaluator
and the training state.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
import torch
import torch.nn as nn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from pix2pix_lit.checkpoints import EMA_SUFFIX, align_ema_weights
from pix2pix_lit.data.datasets import fingerprint
from pix2pix_lit.data.labels import colorize, network_input, semantic_channels
from pix2pix_lit.ema import ema_update, make_ema
from pix2pix_lit.errors import ConfigError, check_choice, check_numbers
from pix2pix_lit.lightning_internals import (
    allow_unused_parameters,
    count_manual_step,
    end_validation_workers,
    epoch_cut_short,
    logs_this_step,
)
from pix2pix_lit.models.evaluator import Evaluator
from pix2pix_lit.models.nonfinite import NonFiniteGuard
from pix2pix_lit.models.runner import GeneratorRunner
from pix2pix_lit.models.training_state import TrainingState
from pix2pix_lit.modes import DIRECTIONS, InferenceMode
from pix2pix_lit.nets.generators import checkpoint_residual_blocks
from pix2pix_lit.nets.image_pool import ImagePool
from pix2pix_lit.nets.norm import plain_batch_norms
from pix2pix_lit.optim import LR_POLICIES, Adam, OptimizerToggle, guarded_step, make_scheduler, step_schedulers
from pix2pix_lit.precision import cpu_precision_fallback, is_16bit

log = logging.getLogger(__name__)

# the range of every shared numeric option (errors.check_numbers); each model adds a table of its own
SHARED_NUMBERS = {
    "lr": ">0", "beta1": "[0,1)", "beta2": "[0,1)", "n_epochs": ">=0", "n_epochs_decay": ">=0",
    "lr_decay_iters": ">=1", "predict_size": ">=1", "predict_tile": ">=0", "kid_subset_size": ">=1",
    "max_nonfinite_steps": ">=1", "mifid_eps": "(0,1]", "label_nc": ">=0",
}


class ImageTranslationModel(pl.LightningModule):
    """Base class of the GANs here (see the module docstring). Manual optimization: a subclass's
    ``training_step`` updates its optimizers with :meth:`toggled` and :meth:`update` and ends with
    :meth:`end_batch`. The contract with a subclass, by example: docs/development.md, "Add a model"
    (``models/pix2pix.py`` is the shortest real one). In brief: it declares ``generator_names`` (each gets an
    EMA copy ``<name>_ema`` with ``ema_decay``), ``discriminator_names``, ``data_kind`` (``paired``:
    ``source``/``target`` batches; ``unpaired``: ``A``/``B``), ``metric_domains`` (metric name suffix per
    evaluated output domain) and ``reference_domains`` (which training references MiFID compares each with);
    its ``__init__`` calls ``super().__init__(**kwargs)``, builds them, then :meth:`finish_networks`; it writes
    ``configure_optimizers`` (:meth:`adam`, :meth:`schedulers_for`), ``training_step``, :meth:`generator_for`,
    :meth:`evaluate_batch` and :meth:`grid_rows`, optionally :meth:`image_pools`, :meth:`real_set_loaders`,
    :meth:`export_extra_inputs` and its own ``runtime_options``. The parts, each usable without a Trainer:
    ``self.runner`` (``models/runner.py``), ``self.evaluator`` (``models/evaluator.py``), ``self.training_state``
    (``models/training_state.py``), ``self.nonfinite`` (``models/nonfinite.py``).

    Args:
        lr: Adam's learning rate (official names throughout, where the official code has the option).
        beta1: Adam's β1.
        beta2: Adam's β2.
        lr_policy: linear (n_epochs constant, then n_epochs_decay to 0: junyanz's rule) | linear_nvidia (the same,
            one epoch later: pix2pixHD's and SPADE's) | step (x0.1 every lr_decay_iters epochs) | plateau (x0.2
            when plateau_monitor stalls 5 epochs) | cosine (over n_epochs).
        n_epochs: epochs at the starting learning rate (linear policies; cosine: its span).
        n_epochs_decay: epochs of linear decay to 0 after n_epochs.
        lr_decay_iters: the step policy's period in epochs.
        plateau_monitor: the metric the plateau policy watches.
        inference_mode: how the generators run at validation, test, predict and export. ``paper``: the official
            test.py without --eval (dropout as in training, each image normalised with its own statistics, the
            running statistics untouched). ``eval``: the official --eval (dropout off, running statistics).
        predict_fit: how predict fits any image size: ``pad`` (reflect-pad to a multiple of the generator's
            stride, crop back) or ``resize`` (to predict_size and back).
        predict_size: the side predict_fit ``resize`` translates at.
        predict_tile: with ``pad``, images larger than this many pixels a side are translated in overlapping
            tiles blended linearly across each overlap: the memory of one tile (normalisation then sees each
            tile's statistics: docs/data.md, predict). 0: whole images.
        predict_tile_overlap: the tiles' overlap in pixels (null: a quarter tile).
        channels_last: NHWC memory format; null: on with 16-bit precision and on GPUs, off for fp32 on CPU.
        compile: torch.compile the networks.
        fid: score FID at validation and test (fid_protocol says which).
        kid: score KID.
        mifid: also MiFID (FID divided by a memorization term against the training images; needs fid and kid).
        mifid_eps: MiFID's memorization threshold.
        inception_weights: the FID Inception's weights file (null: where pix2pix_lit.inception looks).
        fid_real_stats: stored FID statistics (``pix2pix-lit eval --save_stats``) to score against instead of the
            real images' features (KID off).
        kid_subset_size: KID's subset size (capped at the images scored).
        fid_protocol: ``legacy`` (``fid``: torch-fidelity's, as the official TF code), ``clean`` (``clean_fid``:
            clean-fid's resize and NVIDIA's TorchScript Inception at clean_fid_weights) or ``both``.
        clean_fid_weights: the clean-FID Inception's file (null: where pix2pix_lit.clean_fid looks).
        max_nonfinite_steps: stop after this many consecutive batches with NaN/Inf losses (they are skipped).
        ema_decay: an exponential moving average of each generator (``<name>_ema``), updated after every
            generator step; null: none, as the official code.
        ema_warmup: the EMA's decay after n updates is min(ema_decay, (1 + n) / (10 + n)), so early averages
            are not held at the initial weights; false: ema_decay from the first update.
        use_ema_for_eval: validation, test, predict and export run the EMA copy where there is one.
        label_nc: the sources are label maps of this many classes (linked from the data), seen one-hot; 0: images
            of input_nc channels.
        contain_dontcare_label: label maps: one more channel for the don't-care class.
        no_instance: label maps: no instance-edge channel.
        segmenter: label-map sources: also score the generated photos with this segmenter (a Segmenter checkpoint,
            or ``torchvision:NAME``) against their label maps: val/miou, val/pixel_acc, val/class_acc.
        segmenter_weights: the ``torchvision:NAME`` segmenter's local state dict.
        checkpoint_activations: recompute the generators' residual-block activations in the backward pass instead
            of keeping them (ResNet, global and local generators): less memory, one more forward of the blocks.
    """

    generator_names: tuple[str, ...] = ("G",)
    discriminator_names: tuple[str, ...] = ("D",)
    data_kind: str = "paired"
    metric_domains: dict[str, str] = {"out": ""}
    reference_domains: dict[str, str] = {"out": "target"}
    # how a trained model is run, not what was trained: with --ckpt_path they come from the command line/config,
    # never from the checkpoint (Pix2PixCLI; export builds generators without them). A model adds its own.
    runtime_options: tuple[str, ...] = (
        "inference_mode", "predict_fit", "predict_size", "predict_tile", "predict_tile_overlap", "channels_last",
        "compile", "fid", "kid", "mifid", "mifid_eps", "inception_weights", "fid_real_stats", "kid_subset_size",
        "fid_protocol", "clean_fid_weights",
        "max_nonfinite_steps", "use_ema_for_eval", "segmenter", "segmenter_weights", "checkpoint_activations",
    )
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
        fid_protocol: str = "legacy",
        clean_fid_weights: Optional[str] = None,
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
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay={ema_decay} must be between 0 and 1 (e.g. 0.999), or null for no EMA")
        self.runner = GeneratorRunner(inference_mode, predict_fit, predict_size, predict_tile, predict_tile_overlap,
                                      use_ema_for_eval)
        self.evaluator = Evaluator(self.metric_domains, self.reference_domains, fid, kid, kid_subset_size, mifid,
                                   mifid_eps, inception_weights, fid_real_stats, segmenter, segmenter_weights,
                                   label_nc, self.data_kind == "paired", fid_protocol,
                                   clean_fid_weights)
        # the subclass's own arguments are collected too (Lightning walks the __init__ frames)
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.training_state = TrainingState()
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self.toggle = OptimizerToggle()
        self.use_channels_last: bool = bool(channels_last)  # resolved against the Trainer in setup()
        self.test_results: dict[str, float] = {}
        self.untrained: set[str] = set()  # networks an imported checkpoint did not have (import-official)
        self.loaded_from: dict[str, Any] = {}  # the epoch and step of the checkpoint loaded, and whether imported

    # -- for subclasses: networks ----------------------------------------------------------------------
    def finish_networks(self) -> None:
        """The end of a subclass's ``__init__``, once its declared networks exist: checks them, the hooks and the
        predict sizes, and gives every generator its EMA copy ``<name>_ema`` if ``ema_decay`` is set (submodules:
        checkpoints hold them and DDP starts them equal on every rank)."""
        cls = type(self).__name__
        for name in (*self.generator_names, *self.discriminator_names):
            if not isinstance(getattr(self, name, None), nn.Module):
                raise TypeError(f"{cls} declares the network {name!r} but has no nn.Module attribute of that name")
        for hook in self._REQUIRED_HOOKS:
            if getattr(type(self), hook) is getattr(ImageTranslationModel, hook):
                raise TypeError(f"{cls} must write {hook}() (see ImageTranslationModel)")
        self.runner.check_sizes(self.size_multiple, self.min_size, self.generator_label)
        if self.hparams.checkpoint_activations:
            for name in self.generator_names:
                if not checkpoint_residual_blocks(getattr(self, name)):
                    raise ConfigError(f"model.checkpoint_activations: the generator {name} ({self.generator_label}) "
                                      "has no residual blocks to checkpoint; use a ResNet, global or local netG, or "
                                      "set it false")
        decay = self.hparams.ema_decay
        for name in self.generator_names:
            setattr(self, f"{name}{EMA_SUFFIX}", make_ema(getattr(self, name), decay, self.hparams.ema_warmup) if decay else None)
        self._networks_finished = True

    def ema_of(self, name: str):
        return getattr(self, f"{name}{EMA_SUFFIX}", None)

    def networks(self) -> list[nn.Module]:
        """Every trained network and EMA copy (for the memory format and compile)."""
        return [m for m in self.children() if m is not self.evaluator and any(True for _ in m.parameters())]

    @property
    def size_multiple(self) -> int:
        """What image sides every generator accepts must divide by."""
        return max(getattr(self, n).size_multiple for n in self.generator_names)

    @property
    def min_size(self) -> int:
        """The smallest image side every generator accepts (a multiple of :attr:`size_multiple`)."""
        side = max(getattr(getattr(self, n), "min_size", 1) for n in self.generator_names)
        return side + (-side % self.size_multiple)

    @property
    def generator_label(self) -> str:
        """The generator's name in messages: the model's ``netG`` where it has that option, else its class."""
        return str(self.hparams["netG"]) if "netG" in self.hparams else type(self).__name__

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ConfigError(f"images are {h}x{w} but netG={self.generator_label} needs sides divisible by {m}; set "
                              f"data.crop_size to a multiple of {m} (or choose another netG)")

    # -- label-map sources ---------------------------------------------------------------------------------
    def source_channels(self, input_nc: int) -> int:
        """The channels of :meth:`network_input`: ``input_nc`` for images; for label maps one per class
        (+ don't-care) (+ the instance edges)."""
        h = self.hparams
        return semantic_channels(h.label_nc, h.contain_dontcare_label, not h.no_instance) if h.label_nc else input_nc

    def network_input(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the generator (and a conditional D) sees of a batch's ``source`` (``data.labels.network_input``)."""
        h = self.hparams
        return network_input(batch, h.label_nc, h.contain_dontcare_label, not h.no_instance, self.device)

    def shown_source(self, batch: dict[str, Any]) -> torch.Tensor:
        """A batch's sources as images in [-1, 1] for the grids (label maps in a fixed palette)."""
        return colorize(batch["source"]) if self.hparams.label_nc else batch["source"]

    # -- setup ---------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Lightning calls this before it starts the loggers: a missing or bad file the evaluation reads (FID
        # weights, stored statistics, segmenter) stops the run before a W&B run or any other file is written
        self.evaluator.check_files(self._fn())

    def _fn(self) -> Optional[str]:
        return self.trainer.state.fn.value if self._trainer is not None and self.trainer.state.fn else None

    def setup(self, stage: str) -> None:
        if not getattr(self, "_networks_finished", False):
            raise TypeError(f"{type(self).__name__}.__init__ must end with self.finish_networks()")
        if self._trainer is not None and allow_unused_parameters(self.trainer.strategy):
            # each backward of a GAN step reaches only one optimizer's networks, which DDP must be told
            rank_zero_info("DDP: find_unused_parameters=True (each backward of a GAN step updates only the generators "
                           "or only the discriminators), as strategy=ddp_find_unused_parameters_true")
        on_cpu = self._trainer is not None and self.trainer.strategy.root_device.type == "cpu"
        if on_cpu and self.trainer.world_size > 1 and plain_batch_norms(self):
            rank_zero_warn("synchronised batch norm runs only between GPU processes: on these CPU processes each "
                           "normalises with its own batch (norm syncbatch -> batch)")
        self.evaluator.attach_inception(stage)  # loaded now: a bad weights file stops the run before training
        self.evaluator.load_segmenter(self._fn())
        if self._trainer is not None:  # reading the counts costs a CPU nothing, an accelerator a wait
            self.nonfinite.every_step = on_cpu
        self.use_channels_last = self._resolve_channels_last(on_cpu)
        fmt = torch.channels_last if self.use_channels_last else torch.contiguous_format
        for net in self.networks():
            net.to(memory_format=fmt)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            for name in (*self.generator_names, *self.discriminator_names):
                getattr(self, name).compile()
            self._compiled = True

    def _resolve_channels_last(self, on_cpu: bool) -> bool:
        if self.hparams.channels_last is not None:
            return bool(self.hparams.channels_last)
        return self._trainer is not None and (not on_cpu or is_16bit(self.trainer.precision))

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the networks' memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.use_channels_last and x.dim() == 4 else x

    # -- optimizers and the training-step helpers --------------------------------------------------------
    def adam(self, params, lr: Optional[float] = None) -> torch.optim.Adam:
        """The official Adam (``lr`` or model.lr, β1, β2) on torch's fused kernel (``pix2pix_lit.optim``)."""
        h = self.hparams
        return Adam(params, lr=h.lr if lr is None else lr, betas=(h.beta1, h.beta2))

    def schedulers_for(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[dict[str, Any]]:
        """The LR policy for each optimizer, logged as ``lr/<name>``; stepped once per epoch (official)."""
        h = self.hparams
        return [{"scheduler": make_scheduler(opt, h.lr_policy, h.n_epochs, h.n_epochs_decay, h.lr_decay_iters,
                                             h.plateau_monitor), "name": f"lr/{name}"} for name, opt in optimizers.items()]

    @contextmanager
    def toggled(self, optimizer) -> Iterator[None]:
        """Only ``optimizer``'s parameters require gradients inside (``optim.OptimizerToggle``)."""
        with self.toggle.only(getattr(optimizer, "optimizer", optimizer),
                              [getattr(o, "optimizer", o) for o in self.trainer.optimizers]):
            yield

    def update(self, optimizer, loss: torch.Tensor, name: str) -> torch.Tensor:
        """zero_grad, backward, step — the step skipped if ``loss`` is NaN/Inf on any process, with no wait for the
        device (``optim.guarded_step``; the backward through Lightning, the step through the strategy, not the
        LightningOptimizer, whose step would count a trainer step per optimizer: :meth:`end_batch` counts the batch
        as one). Returns the skip flag (a 0-dim device tensor, 1.0 where skipped), counted by ``self.nonfinite``."""
        t = self.trainer
        skipped = guarded_step(optimizer, loss, self.manual_backward, t.strategy, t.world_size,
                               getattr(t.precision_plugin, "scaler", None))
        self.nonfinite.record(name, skipped)
        return skipped

    def update_ema(self, skipped: Optional[torch.Tensor] = None) -> None:
        """Move every EMA generator towards its generator (after a generator step; not where ``skipped``)."""
        for name in self.generator_names:
            if self.ema_of(name) is not None:
                ema_update(self.ema_of(name), getattr(self, name), skipped)

    @property
    def nonfinite_total(self) -> int:
        """Batches whose non-finite loss made their updates be skipped (saved in checkpoints)."""
        return self.nonfinite.total

    def end_batch(self, logs: dict[str, torch.Tensor], batch_size: int, progress: Optional[str] = None) -> None:
        """Count the batch as one trainer step, apply the non-finite guard and log ``logs`` (as ``train/...``) —
        only at the steps a logger writes and at an epoch's and a run's last batch (what ``callback_metrics`` then
        holds): Lightning keeps nothing else of step values, and each ``log`` costs host time a GPU step feels."""
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
        step_schedulers(self.lr_schedulers(), self.trainer.callback_metrics, self.hparams.plateau_monitor)

    def on_fit_start(self) -> None:
        h, t = self.hparams, self.trainer
        if h.lr_policy in ("linear", "linear_nvidia") and t.max_epochs not in (None, -1) and t.max_steps == -1:
            if t.max_epochs != h.n_epochs + h.n_epochs_decay:
                log.warning("trainer.max_epochs=%d but the linear LR policy spans n_epochs + n_epochs_decay = %d "
                            "epochs", t.max_epochs, h.n_epochs + h.n_epochs_decay)
        if self.device.type == "cpu" and cpu_precision_fallback("cpu", t.precision) is not None:
            # the CLI switches to 32-true by itself (precision_fallback); a Trainer built in Python does not
            rank_zero_warn(f"precision={t.precision} on a CPU with no bf16 kernels (no AVX-512/AMX): convolutions run "
                           "in slow reference code, about 30x slower than precision=32 here")

    def on_train_start(self) -> None:
        self.training_state.resume()  # after the sanity check: the RNG goes on where the interrupted run left it
        for pool in self.image_pools().values():
            pool.images = [t.to(self.device) for t in pool.images]
        self.evaluator.detach_inception()  # loaded at setup (or kept from the sanity check): not needed until val

    # -- inference (the runner) -------------------------------------------------------------------------------
    def generator_for(self, direction: str = "AtoB") -> str:
        """The name of the generator that translates in ``direction`` (a one-way model: its generator, the data
        having resolved the direction)."""
        raise NotImplementedError

    @property
    def predict_direction(self) -> str:
        """The way ``predict`` translates: a two-way model's ``model.predict_direction`` (CycleGAN), else AtoB."""
        return str(self.hparams["predict_direction"]) if "predict_direction" in self.hparams else "AtoB"

    def inference_net(self, direction: str = "AtoB") -> nn.Module:
        """The network validation, test, predict and export run for ``direction`` (the runner's choice)."""
        name = self.generator_for(direction)
        if name in self.untrained and not (self._trainer is not None and self.trainer.state.fn == "fit"):
            raise ConfigError(f"{name} ({direction}) was not in the official files this checkpoint was imported from; "
                              f"translate {self.predict_direction} only, or import both (import-official --other)")
        return self.runner.pick(getattr(self, name), self.ema_of(name))

    def inference_net_name(self, direction: str = "AtoB") -> str:
        name = self.generator_for(direction)
        return f"{name}{EMA_SUFFIX}" if self.inference_net(direction) is not getattr(self, name) else name

    @property
    def inference_G_name(self) -> str:
        """The generator(s) that evaluation runs, e.g. ``G_ema`` or ``G_A_ema+G_B_ema`` (named in metrics.json)."""
        return "+".join(self.inference_net_name(d) for d in (DIRECTIONS if len(self.generator_names) > 1 else ("AtoB",)))

    def autocast_ready(self, net: nn.Module, device_type: str) -> nn.Module:
        """``net`` with its weights cast once per evaluation pass under autocast (``precision.EvalPassWeights``)."""
        return self.runner.pass_weights(net, device_type)

    def generate(self, source: torch.Tensor, direction: str = "AtoB", **inputs: torch.Tensor) -> torch.Tensor:
        """The translation of ``source`` in ``direction``, in the inference mode, as float in [-1, 1]; ``inputs``
        go to the generator too (SPADE's style code ``z``)."""
        source = self.prep(source)
        return self.runner.generate(self.autocast_ready(self.inference_net(direction), source.device.type), source,
                                    **inputs)

    def forward(self, source: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        """``model(x)``: what evaluation and predict run (:meth:`generate`), for every model the same."""
        return self.generate(source, direction)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Any image size: padded to what the generator accepts (or resized), translated (whole, or in tiles
        with ``predict_tile``), brought back."""
        direction = self.predict_direction
        fake = self.runner.predict(batch, lambda x: self.generate(x, direction), self.network_input,
                                   self.size_multiple, self.min_size, label_maps=bool(self.hparams.label_nc))
        return {"fake": fake, "name": batch["name"]}

    def grid_rows(self, batch: dict[str, torch.Tensor]) -> tuple[list[list[torch.Tensor]], float, str]:
        """Rows of images for the grids of fixed samples, their L1 and what the columns are."""
        raise NotImplementedError

    def export_extra_inputs(self) -> dict[str, str]:
        """What the inference generator takes besides the source (name: what it is); export and serve take
        generators of the source alone and refuse a model that declares any."""
        return {}

    # -- evaluation (the evaluator) -----------------------------------------------------------------------
    def evaluate_batch(self, batch: dict[str, Any], metrics: Optional[nn.ModuleDict], dataloader_idx: int) -> dict[str, Any]:
        """Update ``metrics`` (one ImageQualityMetrics per output domain; None: only run) with a batch; return its
        outputs (``fake`` scored by the segmenter against ``batch["source"]``)."""
        raise NotImplementedError

    def real_set_loaders(self) -> dict[str, int]:
        """Which eval dataloader holds the real images of each metric domain (to key the cached features)."""
        return {d: 0 for d in self.metric_domains}

    def _begin(self, stage: str, loaders: Any, num_batches: list[int]) -> None:
        self.runner.pass_weights.begin()
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        keys = {d: fingerprint(loaders[i].dataset, list(num_batches), loaders[i].batch_size, self.trainer.world_size)
                for d, i in self.real_set_loaders().items() if i < len(loaders) and loaders[i] is not None}
        self.evaluator.begin(stage, keys, holds_stats=self.trainer.global_rank == 0)
        if not self.trainer.sanity_checking or self._scores_before_training():
            datamodule = getattr(self.trainer, "datamodule", None)
            references = datamodule.training_references() if hasattr(datamodule, "training_references") else None
            for what in self.evaluator.use_training_references(stage, references, self.device,
                                                               self.trainer.global_rank, self.trainer.world_size):
                rank_zero_info(f"MiFID: the memorization term compares with the {what}")

    def _scores_before_training(self) -> bool:
        """A sanity check over the whole val set (``trainer.num_sanity_val_steps: -1``) scores the untrained
        generators: the starting point of the val curves, logged at step 0."""
        return self.trainer.sanity_checking and self.trainer.num_sanity_val_steps == float("inf")

    def _eval_step(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        scored = not self.trainer.sanity_checking or self._scores_before_training()  # a partial sanity check runs
        outputs = self.evaluate_batch(batch, self.evaluator.metrics[stage] if scored else None, dataloader_idx)
        if scored and self.evaluator.segmentation is not None:  # model.segmenter: paired label maps
            self.evaluator.score_segmentation(stage, outputs["fake"], batch["source"])
        return outputs

    def _end(self, stage: str) -> dict[str, float]:
        self.runner.pass_weights.end()
        if self.trainer.sanity_checking and not self._scores_before_training():
            self.evaluator.reset(stage)
            return {}
        out = {k: float(v) for k, v in self.evaluator.take(stage).items()}
        if self.trainer.sanity_checking:  # Lightning drops what is logged in the sanity check: to the loggers
            for logger in self.trainer.loggers if self.trainer.is_global_zero else []:
                logger.log_metrics(out, step=0)
        else:
            self.log_dict(out, sync_dist=False)
        return out

    def on_validation_epoch_start(self) -> None:
        self.evaluator.attach_inception(self._fn())
        self._begin("val", self.trainer.val_dataloaders, self.trainer.num_val_batches)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_validation_end(self) -> None:
        # A partial pass (the sanity check, limit_val_batches < 1) leaves its DataLoader iterator, and with it
        # the loader's worker processes, alive until the next validation, holding memory through a whole
        # training epoch (see PairedDataModule._eval_loader).
        if self.trainer.state.fn == "fit":
            self.evaluator.detach_inception()
            end_validation_workers(self.trainer)

    def on_test_epoch_start(self) -> None:
        self._begin("test", self.trainer.test_dataloaders, self.trainer.num_test_batches)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._end("test")

    @property
    def test_per_class_iou(self) -> dict[str, Optional[float]]:
        return self.evaluator.test_per_class_iou

    def on_predict_epoch_start(self) -> None:
        self.runner.pass_weights.begin()

    def on_predict_epoch_end(self) -> None:
        self.runner.pass_weights.end()

    # -- checkpoints (the training state) ---------------------------------------------------------------------
    def image_pools(self) -> dict[str, ImagePool]:
        """The algorithm's image pools by name (saved in checkpoints for exact resume)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_state.save(checkpoint, self, nonfinite_total=self.nonfinite_total,
                                 image_pools={k: [t.cpu() for t in p.images] for k, p in self.image_pools().items()})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.get("state_dict", {})
        for name in self.generator_names:
            done = align_ema_weights(weights, name, self.ema_of(name) is not None)
            if done:
                log.info(done)
        state = self.training_state.load(checkpoint)
        self.untrained = set(state.get("imported", {}).get("untrained", ()))
        # what test reports say of the weights they scored (callbacks/outputs.py, checkpoint_selection)
        self.loaded_from = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step"),
                            "imported": "imported" in state}
        self.restore_pools(state)
        self.nonfinite.total = int(state.get("nonfinite_total", 0))

    def restore_pools(self, state: dict[str, Any]) -> None:
        saved = state.get("image_pools", {})
        for name, pool in self.image_pools().items():
            pool.images = list(saved.get(name, []))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
