"""The pix2pix LightningModule: manual optimization, D step then G step on every batch."""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Literal, Optional

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
from pix2pix_lit.losses import GANLoss, feature_matching_loss, gradient_penalty
from pix2pix_lit.metrics import ImageQualityMetrics, find_inception_weights, load_inception
from pix2pix_lit.nets import DISCRIMINATORS, GENERATORS, define_D, define_G
from pix2pix_lit.nets.norm import batch_norm_own_statistics
from pix2pix_lit.precision import cpu_precision_fallback, is_16bit

log = logging.getLogger(__name__)

LR_POLICIES = ("linear", "step", "plateau", "cosine")
INFERENCE_MODES = ("paper", "eval")
# metrics where a larger value is better (everything else logged here is lower-is-better)
HIGHER_IS_BETTER = ("ssim", "psnr")

# Options that say how a trained model is run, not what was trained: with --ckpt_path they come from
# the command line/config, never from the checkpoint's hyper-parameters (see Pix2PixCLI).
RUNTIME_OPTIONS = (
    "inference_mode", "predict_fit", "predict_size", "channels_last", "compile", "fid", "kid", "inception_weights",
    "kid_subset_size", "max_nonfinite_steps", "use_ema_for_eval",
)


def higher_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER


class ImagePool:
    """The official image buffer: D sees a mix of current and past fakes (``pool_size=0`` disables it).

    pix2pix pools whole D inputs, the (source, fake) pairs (as the official pix2pix did while it had a
    pool), so a pooled fake is never shown beside another image's source.
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


class Pix2Pix(pl.LightningModule):
    """pix2pix (Isola et al. 2017): conditional GAN with L = L_cGAN(G, D) + lambda_L1 * L1(G).

    Option names and defaults follow the official PyTorch implementation (``--netG`` -> ``netG``,
    ``--no_dropout`` -> ``no_dropout``, ...). Extras: ``num_D``/``lambda_feat`` (pix2pixHD multi-scale D
    and feature matching), ``lambda_gp`` (WGAN-GP), ``inference_mode``, precision helpers and metrics.

    Steps: ``trainer.global_step`` counts batches (one D and one G update each), so ``max_steps``,
    ``val_check_interval`` and checkpoint ``every_n_train_steps`` are in batches. LR policies are
    stepped once per epoch, as in the official code.

    Args:
        input_nc, output_nc: channels of source and target (linked from the data in the CLI).
        netG: unet_256 | unet_128 | unet (with num_downs) | resnet_9blocks | resnet_6blocks | resnet (n_blocks).
        netD: basic (70x70 PatchGAN) | n_layers (n_layers_D) | pixel | multiscale (num_D PatchGANs).
        norm: batch | instance | none | syncbatch; init_type/init_gain: weight init.
        gan_mode: vanilla (BCE on logits) | lsgan | hinge | wgangp (+ lambda_gp * gradient penalty).
        lr_policy: linear (n_epochs constant + n_epochs_decay to 0) | step (x0.1 every lr_decay_iters
            epochs) | plateau (x0.2 when ``plateau_monitor`` stalls 5 epochs) | cosine (over n_epochs).
        inference_mode: how G runs at validation/test/predict. ``paper`` (default): the official ``test.py``
            without ``--eval`` and Sec. 3.3 of the paper, the protocol of published pix2pix numbers: dropout
            on, every image normalised with its own statistics (one image at a time, so results do not depend
            on the eval batch size or the number of processes; running statistics are left untouched).
            ``eval``: the official ``--eval``: dropout off, batch norm with the running statistics.
        predict_fit: how ``predict`` fits any image size to the generator: ``pad`` (reflect-pad to a
            multiple of the generator's stride, then crop back) or ``resize`` (to ``predict_size``, then back).
        channels_last: NHWC memory format. ``null`` (default): on with 16-bit/bf16 precision and on GPUs, where
            it is faster; off for fp32 on the CPU, where it measured slower (``experiments/RESULTS.md``).
        compile: ``torch.compile`` the networks.
        fid, kid, inception_weights, kid_subset_size: FID/KID settings (see ``pix2pix_lit.metrics``).
        max_nonfinite_steps: stop after this many consecutive batches with NaN/Inf losses (they are skipped).
        ema_decay: keep an exponential moving average of G's weights (``G_ema``), updated after every G step
            with this decay (e.g. 0.999; ``null``: none, as the official code). ``ema_warmup``: use
            ``min(decay, (1 + n) / (10 + n))`` after n updates. Saved in checkpoints; fp32 under mixed precision.
        use_ema_for_eval: validation, test, predict, grids, export and serving use ``G_ema`` when it exists.
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        netG: Literal["unet_256", "unet_128", "unet", "resnet_9blocks", "resnet_6blocks", "resnet"] = "unet_256",
        ngf: int = 64,
        num_downs: Optional[int] = None,
        n_blocks: Optional[int] = None,
        no_dropout: bool = False,
        netD: Literal["basic", "n_layers", "pixel", "multiscale"] = "basic",
        ndf: int = 64,
        n_layers_D: int = 3,
        num_D: int = 3,
        norm: Literal["batch", "instance", "none", "syncbatch"] = "batch",
        init_type: Literal["normal", "xavier", "kaiming", "orthogonal"] = "normal",
        init_gain: float = 0.02,
        gan_mode: Literal["vanilla", "lsgan", "hinge", "wgangp"] = "vanilla",
        lambda_L1: float = 100.0,
        lambda_gp: float = 10.0,
        lambda_feat: float = 0.0,
        pool_size: int = 0,
        lr: float = 0.0002,
        beta1: float = 0.5,
        beta2: float = 0.999,
        lr_policy: Literal["linear", "step", "plateau", "cosine"] = "linear",
        n_epochs: int = 100,
        n_epochs_decay: int = 100,
        lr_decay_iters: int = 50,
        plateau_monitor: str = "val/fid",
        inference_mode: Literal["paper", "eval"] = "paper",
        predict_fit: Literal["pad", "resize"] = "pad",
        predict_size: int = 256,
        channels_last: Optional[bool] = None,
        compile: bool = False,
        fid: bool = True,
        kid: bool = True,
        inception_weights: Optional[str] = None,
        kid_subset_size: int = 1000,
        max_nonfinite_steps: int = 20,
        ema_decay: Optional[float] = None,
        ema_warmup: bool = True,
        use_ema_for_eval: bool = True,
    ) -> None:
        super().__init__()
        check_choice("model.netG", netG, GENERATORS)
        check_choice("model.netD", netD, DISCRIMINATORS)
        check_choice("model.lr_policy", lr_policy, LR_POLICIES)
        check_choice("model.inference_mode", inference_mode, INFERENCE_MODES)
        check_choice("model.predict_fit", predict_fit, ("pad", "resize"))
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay={ema_decay} must be between 0 and 1 (e.g. 0.999), or null for no EMA")
        if lr <= 0 or lambda_L1 < 0 or pool_size < 0 or max_nonfinite_steps < 1:
            raise ConfigError("model.lr must be > 0, model.lambda_L1 and model.pool_size >= 0, max_nonfinite_steps >= 1")
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.G = define_G(input_nc, output_nc, ngf, netG, norm, not no_dropout, init_type, init_gain, num_downs, n_blocks)
        self.D = define_D(input_nc + output_nc, ndf, netD, n_layers_D, norm, init_type, init_gain, num_D)
        self.size_multiple: int = self.G.size_multiple
        if predict_size % self.size_multiple:
            raise ConfigError(f"model.predict_size={predict_size} must be a multiple of {self.size_multiple} for netG={netG}")
        self.criterion_gan = GANLoss(gan_mode)
        self.pool = ImagePool(pool_size)
        # the EMA generator: a submodule, so checkpoints hold it and DDP starts it equal on every rank
        self.G_ema = make_ema(self.G, ema_decay, ema_warmup) if ema_decay else None
        self.val_metrics = ImageQualityMetrics(fid, kid, kid_subset_size)
        self.test_metrics = ImageQualityMetrics(fid, kid, kid_subset_size)
        self.nonfinite_total = 0
        self._nonfinite_run = 0
        self._rng_to_restore: Optional[dict[str, Any]] = None
        self.use_channels_last: bool = bool(channels_last)  # resolved against the Trainer in setup()

    # -- setup ---------------------------------------------------------------------------------------
    def _metrics_for(self, stage: Optional[str]) -> Optional[ImageQualityMetrics]:
        return {"fit": self.val_metrics, "validate": self.val_metrics, "test": self.test_metrics}.get(stage or "")

    def prepare_data(self) -> None:
        # Lightning calls this before it starts the loggers: missing FID weights stop the run before a
        # W&B run or any other file is written (setup() then loads them)
        stage = self.trainer.state.fn.value if self._trainer is not None and self.trainer.state.fn else None
        metrics = self._metrics_for(stage)
        if metrics is not None and metrics.needs_inception:
            find_inception_weights(self.hparams.inception_weights)

    def setup(self, stage: str) -> None:
        self._let_ddp_skip_unused_parameters()
        needs = self._metrics_for(stage)
        if needs is not None and needs.needs_inception:
            extractor = load_inception(self.hparams.inception_weights)
            self.val_metrics.set_extractor(extractor)
            self.test_metrics.set_extractor(extractor)
        self.use_channels_last = self._resolve_channels_last()
        fmt = torch.channels_last if self.use_channels_last else torch.contiguous_format
        for net in (self.G, self.D, self.G_ema):
            if net is not None:
                net.to(memory_format=fmt)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.G.compile()
            self.D.compile()
            self._compiled = True

    def _let_ddp_skip_unused_parameters(self) -> None:
        """Make every DDP spelling train (``ddp``, ``ddp_spawn``, ``devices: N``, ...).

        Each of the two backward passes per batch reaches one network only (D's loss does not reach G,
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
                "DDP: find_unused_parameters=True (each backward of a GAN step updates only D or only G), "
                "as strategy=ddp_find_unused_parameters_true"
            )

    def _resolve_channels_last(self) -> bool:
        if self.hparams.channels_last is not None:
            return bool(self.hparams.channels_last)
        if self._trainer is None:
            return False
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        return not on_cpu or is_16bit(self.trainer.precision)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ConfigError(
                f"images are {h}x{w} but netG={self.hparams.netG} needs sides divisible by {m}; "
                f"set data.crop_size to a multiple of {m} (or choose another netG)"
            )

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.G(self._prep(source))

    # -- training ------------------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        opt_g = torch.optim.Adam(self.G.parameters(), lr=h.lr, betas=(h.beta1, h.beta2))
        opt_d = torch.optim.Adam(self.D.parameters(), lr=h.lr, betas=(h.beta1, h.beta2))
        scheds = [self._scheduler(opt_g), self._scheduler(opt_d)]
        return [opt_g, opt_d], [{"scheduler": s, "name": f"lr/{n}"} for s, n in zip(scheds, "GD")]

    def _scheduler(self, opt: torch.optim.Optimizer):
        h = self.hparams
        if h.lr_policy == "linear":
            return LambdaLR(opt, lr_lambda=linear_decay(h.n_epochs, h.n_epochs_decay))
        if h.lr_policy == "step":
            return StepLR(opt, step_size=h.lr_decay_iters, gamma=0.1)
        if h.lr_policy == "plateau":
            mode = "max" if higher_is_better(h.plateau_monitor) else "min"
            return ReduceLROnPlateau(opt, mode=mode, factor=0.2, threshold=0.01, patience=5)
        return CosineAnnealingLR(opt, T_max=h.n_epochs, eta_min=0)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every process (they must all skip or all step)."""
        bad = (~torch.isfinite(loss.detach())).float()
        bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return bool(bad.item() == 0)

    def _count_nonfinite(self, what: str) -> None:
        self.nonfinite_total += 1
        self._nonfinite_run += 1
        log.warning("non-finite %s at step %d: the update is skipped", what, self.global_step)
        if self._nonfinite_run >= self.hparams.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self._nonfinite_run} consecutive batches had NaN/Inf losses (last: {what}); training stopped. "
                "Lower model.lr, try trainer.precision=32 or bf16-mixed, or check the data for corrupt images"
            )

    def _d_input(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self._prep(torch.cat([source, image], 1))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        h = self.hparams
        opt_g, opt_d = self.optimizers()
        source, target = self._prep(batch["source"]), self._prep(batch["target"])
        self._check_size(source)
        fake = self.G(source)

        # D step: real pairs vs detached fake pairs, loss halved (official backward_D)
        self.toggle_optimizer(opt_d)
        real_pair = self._d_input(source, target)
        fake_pair = self._prep(self.pool.query(self._d_input(source, fake.detach())))
        pred_fake = self.D(fake_pair)
        pred_real = self.D(real_pair)
        loss_D_fake = self.criterion_gan(pred_fake, False, for_discriminator=True)
        loss_D_real = self.criterion_gan(pred_real, True, for_discriminator=True)
        loss_D = (loss_D_fake + loss_D_real) * 0.5
        logs = {"train/loss_D_real": loss_D_real, "train/loss_D_fake": loss_D_fake}
        if h.gan_mode == "wgangp":
            gp = gradient_penalty(self.D, real_pair, fake_pair)
            loss_D = loss_D + h.lambda_gp * gp
            logs["train/loss_D_gp"] = gp
        d_ok = self._all_finite(loss_D)
        if d_ok:
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_D)
            # Stepped through the strategy (precision plugin: GradScaler under 16-mixed) but not through
            # the LightningOptimizer, whose step would count a second trainer step for the same batch.
            self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure)
        self.untoggle_optimizer(opt_d)

        # G step: fool D on (source, fake) + lambda_L1 * L1(fake, target) [+ feature matching]
        self.toggle_optimizer(opt_g)
        fake_pair = self._d_input(source, fake)
        if h.lambda_feat > 0:
            feats_fake = self.D.features(fake_pair)
            with torch.no_grad():
                feats_real = self.D.features(real_pair)
            pred = [f[-1] for f in feats_fake] if isinstance(feats_fake[0], list) else feats_fake[-1]
            loss_G_feat = feature_matching_loss(feats_real, feats_fake) * h.lambda_feat
            logs["train/loss_G_feat"] = loss_G_feat
        else:
            pred = self.D(fake_pair)
            loss_G_feat = 0.0
        loss_G_GAN = self.criterion_gan(pred, True, for_discriminator=False)
        loss_G_L1 = F.l1_loss(fake.float(), target.float()) * h.lambda_L1
        loss_G = loss_G_GAN + loss_G_L1 + loss_G_feat
        g_ok = self._all_finite(loss_G)
        if g_ok:
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_G)
            opt_g.step()
            if self.G_ema is not None:
                self.G_ema.update_parameters(self.G)
        else:
            # the batch still counts as one trainer step, so max_steps/limits stay in batches
            progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
        self.untoggle_optimizer(opt_g)

        if d_ok and g_ok:
            self._nonfinite_run = 0
        else:
            self._count_nonfinite("loss_D" if not d_ok else "loss_G")
        logs.update({"train/loss_D": loss_D, "train/loss_G_GAN": loss_G_GAN, "train/loss_G_L1": loss_G_L1,
                     "train/loss_G": loss_G})
        self.log_dict({k: v.detach().float() for k, v in logs.items()}, prog_bar=False, batch_size=source.shape[0])
        self.log("train/nonfinite_skipped", float(self.nonfinite_total), batch_size=source.shape[0])
        self.log("loss_G_L1", loss_G_L1.detach().float(), prog_bar=True, logger=False, batch_size=source.shape[0])

    def on_train_epoch_end(self) -> None:
        for sched in self.lr_schedulers():
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
    @property
    def inference_G(self) -> nn.Module:
        """The generator that validation, test, predict and export run: ``G_ema`` if there is one (and
        ``use_ema_for_eval``), else ``G``."""
        if self.G_ema is not None and self.hparams.get("use_ema_for_eval", True):
            return self.G_ema.module
        return self.G

    @property
    def inference_G_name(self) -> str:
        return "G_ema" if self.inference_G is not self.G else "G"

    @contextmanager
    def inference(self) -> Iterator[None]:
        """The inference generator in the chosen inference mode (see ``inference_mode``); changes no parameter
        or buffer."""
        net = self.inference_G
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
    def generate(self, source: torch.Tensor) -> torch.Tensor:
        """G(source) in the configured inference mode, as float in [-1, 1].

        In ``paper`` mode each image goes through G alone: its normalisation statistics are its own, as in
        the official test (batch size 1), whatever the eval batch size or the number of processes.
        """
        source = self._prep(source)
        net = self.inference_G
        with self.inference():
            if self.hparams.inference_mode == "paper" and source.shape[0] > 1:
                return torch.cat([net(x.unsqueeze(0)).float() for x in source])
            return net(source).float()

    def _eval_step(self, batch: dict[str, Any], metrics: ImageQualityMetrics) -> None:
        self._check_size(batch["source"])
        fake = self.generate(batch["source"])
        if not self.trainer.sanity_checking:
            metrics.update(fake, batch["target"])

    def _eval_epoch_end(self, metrics: ImageQualityMetrics, prefix: str) -> dict[str, float]:
        if self.trainer.sanity_checking:
            metrics.reset()
            return {}
        values = metrics.compute()
        metrics.reset()
        out = {f"{prefix}/{k}": v.float() for k, v in values.items()}
        self.log_dict(out, sync_dist=False)
        return {k: float(v) for k, v in out.items()}

    def _use_real_set(self, metrics: ImageQualityMetrics, loaders: Any, num_batches: list[int]) -> None:
        """Key the cached real features to the images this pass evaluates (dataset, limits, batch size)."""
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            return
        metrics.use_real_set(fingerprint(loader.dataset, list(num_batches), loader.batch_size, self.trainer.world_size))

    def on_validation_epoch_start(self) -> None:
        self._use_real_set(self.val_metrics, self.trainer.val_dataloaders, self.trainer.num_val_batches)

    def on_test_epoch_start(self) -> None:
        self._use_real_set(self.test_metrics, self.trainer.test_dataloaders, self.trainer.num_test_batches)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self._check_size(batch["source"])
        fake = self.generate(batch["source"])
        self.test_metrics.update(fake, batch["target"])
        return {"fake": fake, "name": batch["name"]}

    def on_test_epoch_end(self) -> None:
        self.test_results = self._eval_epoch_end(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        source = batch["source"]
        h, w = source.shape[-2:]
        if self.hparams.predict_fit == "resize":
            s = self.hparams.predict_size
            # antialiased bicubic, as PIL resizes the training images (plain bicubic aliases when shrinking)
            x = F.interpolate(source.float(), size=(s, s), mode="bicubic", align_corners=False, antialias=True)
            fake = self.generate(x.clamp(-1, 1))
            fake = F.interpolate(fake, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
        else:
            x, box = pad_to_multiple(source, self.size_multiple)
            fake = crop_box(self.generate(x), box)
        return {"fake": fake, "name": batch["name"]}

    # -- checkpoints ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not store RNG states; dropout (and the image pool) draw from them, so exact
        # resume needs them. The data order and augmentation are seeded per epoch (SeededSampler).
        checkpoint["pix2pix_lit"] = {
            "rng_states": collect_rng_states(),
            "image_pool": [t.cpu() for t in self.pool.images],
            "nonfinite_total": self.nonfinite_total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.get("state_dict", {})
        if self.G_ema is not None and not any(k.startswith("G_ema.") for k in weights):
            # a checkpoint from a run without EMA: the average starts from its G
            log.info("the checkpoint has no EMA generator: G_ema starts from its G")
            for k, v in list(weights.items()):
                if k.startswith("G."):
                    weights["G_ema.module." + k[2:]] = v.clone()
            weights["G_ema.n_averaged"] = torch.tensor(0, dtype=torch.long)
        elif self.G_ema is None and any(k.startswith("G_ema.") for k in weights):
            log.info("the checkpoint's EMA generator is not used (model.ema_decay is null)")
            for k in [k for k in weights if k.startswith("G_ema.")]:
                del weights[k]
        state = checkpoint.get("pix2pix_lit", {})
        self._rng_to_restore = state.get("rng_states")
        pool = list(state.get("image_pool", []))
        pair_channels = self.hparams.input_nc + self.hparams.output_nc
        if pool and pool[0].shape[1] != pair_channels:
            # written before the pool held (source, fake) pairs: its lone fakes cannot be paired again
            log.warning("the checkpoint's image pool holds fakes without their sources; starting with an empty pool")
            pool = []
        self.pool.images = pool
        self.nonfinite_total = int(state.get("nonfinite_total", 0))

    def on_train_start(self) -> None:
        # after the sanity check, so the RNG continues exactly where the interrupted run left it
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        self.pool.images = [t.to(self.device) for t in self.pool.images]


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
