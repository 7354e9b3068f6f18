"""pix2pix (Isola et al., CVPR 2017): a conditional GAN for paired data, L = L_cGAN(G, D) + λ·L1(G)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import torch
import torch.nn.functional as F

from pix2pix_lit.checkpoints import load_checkpoint
from pix2pix_lit.errors import ConfigError, check_choice, check_numbers
from pix2pix_lit.losses import VGG19_SOURCE, GANLoss, GANScales, VGGLoss, feature_matching_loss, gradient_penalty, r1_penalty
from pix2pix_lit.models.networks import OfficialNetworksModel
from pix2pix_lit.nets.diffaugment import DiffAugment
from pix2pix_lit.nets.image_pool import ImagePool

# the range of each numeric option of its own (errors.check_numbers)
PIX2PIX_NUMBERS = {
    "n_downsample_global": ">=1", "n_blocks_global": ">=0", "n_local_enhancers": ">=1", "n_blocks_local": ">=0",
    "lambda_L1": ">=0", "lambda_vgg": ">=0", "lambda_feat": ">=0", "lr_D": ">0", "niter_fix_global": ">=0",
    "padding_D": ">=0", "r1_gamma": ">=0", "r1_every": ">=1",
}

# the order of a batch's two updates: pix2pix's official ``optimize_parameters`` steps D, then computes G's loss on
# the updated D; pix2pixHD's ``train.py`` computes every loss with the D of the batch's start, steps G, then D
StepOrder = Literal["pix2pix", "pix2pixhd"]
STEP_ORDERS = get_args(StepOrder)

log = logging.getLogger(__name__)


class Pix2Pix(OfficialNetworksModel):
    """pix2pix: G translates a source image into the target domain; D judges (source, image) pairs.

    Option names and defaults follow the official PyTorch implementation (``--netG`` -> ``netG``,
    ``--no_dropout`` -> ``no_dropout``, ...); the generator and discriminator options are those of
    :class:`~pix2pix_lit.models.networks.OfficialNetworksModel`, the options every model shares (optimizer, LR
    policy, inference mode, metrics, EMA, label maps) those of :class:`~pix2pix_lit.models.base.ImageTranslationModel`.
    Label-map sources (``label_nc``, linked from the data) are seen one-hot with their instance edges, as pix2pixHD.

    Steps: ``trainer.global_step`` counts batches (one D and one G update each), so ``max_steps``,
    ``val_check_interval`` and checkpoint ``every_n_train_steps`` are in batches.

    Args:
        n_downsample_global: pix2pixHD's GlobalGenerator (``netG: global | local``): its downsamplings (pix2pixHD
            trains it with norm instance, no_dropout, netD multiscale, lambda_feat 10, and ngf 32 for local).
        n_blocks_global: the GlobalGenerator's residual blocks.
        n_local_enhancers: ``netG: local``: how many LocalEnhancers, each doubling the resolution.
        n_blocks_local: each LocalEnhancer's residual blocks.
        spectral_norm_D: every convolution of D spectrally normalised (not in the official pix2pix).
        padding_D: of D's 4x4 convolutions: 1 (pix2pix) or 2 (pix2pixHD's ``ceil(3/2)``; same parameters, every map
            a few pixels larger, so other feature-matching targets).
        lr_D: D's learning rate (null: ``lr``, the official); e.g. 4·lr for the two time-scale update rule.
        gan_scales: a multi-scale D's adversarial losses averaged (``mean``) or summed (``sum``: pix2pixHD).
        step_order: ``pix2pix`` (D's update, then G's loss on the updated D: the official pix2pix) or ``pix2pixhd``
            (every loss on the batch's D, then G's update, then D's: NVIDIA/pix2pixHD's train.py).
        lambda_L1: weight of L1(G(source), target).
        lambda_feat: weight of pix2pixHD's feature matching on D's layers, each layer weighted
            ``4 / (n_layers_D + 1)`` as pix2pixHD does (1 at its n_layers_D 3); 0: off.
        lambda_vgg: weight of pix2pixHD's VGG-19 perceptual loss (its default: 10; 0, the pix2pix default: off).
        vgg_weights: the local torchvision VGG-19 state dict that loss needs (no download).
        vgg_sha256: the SHA-256 that file must have (null: only its tensors' names and shapes are checked).
        diff_augment: DiffAugment of every pair D judges (``nets/diffaugment.py``): a comma-separated choice of
            color, translation, cutout (e.g. ``color,translation,cutout``); one draw per step for the real and the
            fake pairs; "" (default, the official): none.
        r1_gamma: an R1 penalty on real pairs, (r1_gamma / 2) * ||grad of D wrt the real image||^2 added to D's
            loss every ``r1_every`` batches and multiplied by ``r1_every`` (StyleGAN2's lazy regularisation); 0
            (default, the official): none.
        r1_every: the R1 penalty's period in batches.
        niter_fix_global: the epochs at the start of a ``netG: local`` run from ``init_global_from`` in which G's
            optimizer holds only the outermost enhancer's parameters (see init_global_from).
        init_global_from: pix2pixHD's coarse-to-fine training of ``netG: local``: its global part
            starts from the G of a ``netG: global`` checkpoint (trained at half the resolution, ``2·ngf`` filters),
            its multi-scale D's scales from that checkpoint's (each scale kept at the resolution it was trained at:
            the first stage's D scale k becomes scale k + num_D - its num_D, as the official ``--load_pretrain``),
            and for the first ``niter_fix_global`` epochs G's optimizer holds only the outermost enhancer's
            parameters; then a fresh Adam over all of G's (the official ``update_fixed_params``).
    """

    generator_names = ("G",)
    discriminator_names = ("D",)
    data_kind = "paired"
    metric_domains = {"out": ""}
    runtime_options = (*OfficialNetworksModel.runtime_options, "vgg_weights", "vgg_sha256")

    def __init__(
        self,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        padding_D: int = 1,
        gan_scales: GANScales = "mean",
        step_order: StepOrder = "pix2pix",
        lambda_L1: float = 100.0,
        spectral_norm_D: bool = False,
        lr_D: Optional[float] = None,
        lambda_vgg: float = 0.0,
        vgg_weights: Optional[str] = None,
        vgg_sha256: Optional[str] = None,
        lambda_feat: float = 0.0,
        init_global_from: Optional[str] = None,
        niter_fix_global: int = 0,
        diff_augment: str = "",
        r1_gamma: float = 0.0,
        r1_every: int = 16,
        **kwargs: Any,
    ) -> None:
        check_choice("model.step_order", step_order, STEP_ORDERS)
        check_numbers(locals(), PIX2PIX_NUMBERS)
        netG = kwargs.get("netG", "unet_256")
        if (init_global_from or niter_fix_global) and netG != "local":
            raise ConfigError("model.init_global_from and model.niter_fix_global are pix2pixHD's coarse-to-fine "
                              f"training of netG local (its global part); netG is {netG}")
        super().__init__(**kwargs)
        h = self.hparams
        source_nc = self.source_channels(h.input_nc)  # label maps: one-hot classes (+ instance edges)
        self.G = self.make_G(source_nc, h.output_nc, n_downsample_global=n_downsample_global,
                             n_blocks_global=n_blocks_global, n_local_enhancers=n_local_enhancers,
                             n_blocks_local=n_blocks_local)
        self.D = self.make_D(source_nc + h.output_nc, spectral=spectral_norm_D, padding=padding_D)
        self.criterion_gan = GANLoss(h.gan_mode, scales=gan_scales)
        # pix2pixHD's feature-matching weight of each of a PatchGAN's layers (none for the 1x1 pixel D)
        self.feat_layer_weight = 1.0 if h.netD == "pixel" else 4.0 / ((3 if h.netD == "basic" else h.n_layers_D) + 1)
        self.pool = ImagePool(h.pool_size)  # holds (source, fake) pairs: a pooled fake keeps its own source
        self.augment = DiffAugment(diff_augment, h.output_nc)  # of every pair D judges ("": none, the official)
        self.global_fixed = niter_fix_global > 0  # G's optimizer holds only the outermost enhancer (saved)
        # loaded when training starts and kept out of the module tree: fixed ImageNet weights, not the model's
        self.__dict__["vgg"] = None
        self.finish_networks()

    def prepare_data(self) -> None:
        super().prepare_data()
        self._load_vgg(self.trainer.state.fn)  # Lightning calls this before any logger starts: a bad file leaves none
        if self.hparams.init_global_from and self.trainer.state.fn == "fit" and self.trainer.ckpt_path is None:
            # the first stage's checkpoint read now, so a missing or wrong one starts no run; kept for on_fit_start
            self.__dict__["global_ckpt"] = self._global_checkpoint(self.hparams.init_global_from)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._load_vgg(stage)

    def _load_vgg(self, stage: str) -> None:
        h = self.hparams
        if stage == "fit" and h.lambda_vgg > 0 and self.vgg is None:  # test and predict never need the file
            if h.vgg_weights is None:
                raise ConfigError(f"model.lambda_vgg={h.lambda_vgg} needs model.vgg_weights: {VGG19_SOURCE}")
            self.__dict__["vgg"] = VGGLoss(h.vgg_weights, h.vgg_sha256)  # a bad file: one line, before training

    # -- the paper ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_g, opt_d = self.adam(self.trained_G_parameters()), self.adam(self.D.parameters(), self.hparams.lr_D)
        return [opt_g, opt_d], self.schedulers_for({"G": opt_g, "D": opt_d})

    # -- pix2pixHD's coarse-to-fine training (netG local) ----------------------------------------------------
    def trained_G_parameters(self) -> list[torch.nn.Parameter]:
        """G's parameters its optimizer holds: while the global part is fixed, the outermost enhancer's only
        (``model{n_local_enhancers}_*``, as the official code picks them), else all."""
        if not self.global_fixed:
            return list(self.G.parameters())
        outermost = f"model{self.hparams.n_local_enhancers}_"
        return [p for name, p in self.G.named_parameters() if name.startswith(outermost)]

    def load_global_generator(self, path: str) -> None:
        """The global part of the local generator (and of its EMA) from the G of a ``netG: global`` checkpoint:
        every layer but its output ones (what the official ``load_pretrain`` of a global run loads)."""
        ckpt, theirs = self.__dict__.pop("global_ckpt", None) or self._global_checkpoint(path)
        for net in (self.G, getattr(self.ema_of("G"), "module", None)):
            if net is not None:
                net.model.load_state_dict(theirs)
        log.info("the local generator's global part starts from %s (its G, %d tensors)", path, len(theirs))
        self._load_coarser_scales(path, ckpt)

    def _global_checkpoint(self, path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The first stage's checkpoint and the tensors of its G this generator's global part takes, checked."""
        if not Path(path).is_file():
            raise ConfigError(f"model.init_global_from {path} does not exist: train the first stage (netG global, e.g. "
                              "configs/pix2pixhd/quickstart_global.yaml) and name its checkpoint")
        ckpt = load_checkpoint(path)
        if (ckpt.get("hyper_parameters") or {}).get("netG") != "global":
            raise ConfigError(f"model.init_global_from {path} is not a netG global checkpoint (its netG: "
                              f"{(ckpt.get('hyper_parameters') or {}).get('netG')}); train the first stage with netG global")
        ours = self.G.model.state_dict()
        theirs = {k[len("G.model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("G.model.")}
        wrong = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
        if wrong:
            got = tuple(theirs[wrong[0]].shape) if wrong[0] in theirs else "missing"
            raise ConfigError(f"model.init_global_from {path} does not fit this local generator's global part (G.model."
                              f"{wrong[0]}: {got}, expected {tuple(ours[wrong[0]].shape)}); the global run needs ngf = 2 x "
                              "this ngf and the same n_downsample_global, n_blocks_global, norm and data channels")
        return ckpt, {k: theirs[k] for k in ours}

    def _load_coarser_scales(self, path: str, ckpt: dict[str, Any]) -> None:
        """The first stage's multi-scale D into this D's coarser scales, each at the resolution it was trained
        at: its scale k (input downsampled k times from half this resolution) becomes scale k + num_D - its num_D.
        What the official ``--load_pretrain`` does by its layer names (``scale{i}`` sees level ``num_D-1-i``)."""
        theirs_h = ckpt.get("hyper_parameters") or {}
        if self.hparams.netD != "multiscale" or theirs_h.get("netD") != "multiscale":
            log.warning("model.init_global_from: D starts from scratch (only a multiscale D loads a first stage's)")
            return
        shift = self.hparams.num_D - theirs_h.get("num_D", 3)
        prefix = "D.discriminators."
        theirs = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if shift < 0:
            raise ConfigError(f"model.init_global_from {path}: its D has {theirs_h.get('num_D')} scales, more than this "
                              f"num_D={self.hparams.num_D}; the second stage needs as many scales or more")
        for k in range(self.hparams.num_D - shift):
            part = {name.split(".", 1)[1]: v for name, v in theirs.items() if name.split(".", 1)[0] == str(k)}
            try:
                self.D.discriminators[k + shift].load_state_dict(part)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[-1].strip()
                raise ConfigError(f"model.init_global_from {path}: its D scale {k} does not fit this D's scale "
                                  f"{k + shift} ({first}); both stages need the same ndf, n_layers_D, norm and "
                                  "data channels") from None
        if theirs_h.get("padding_D", 1) != self.hparams.padding_D:
            log.warning("model.init_global_from: its D was trained with padding_D=%s, this one has %s",
                        theirs_h.get("padding_D", 1), self.hparams.padding_D)
        log.info("D's scales %d..%d start from %s's D", shift, self.hparams.num_D - 1, path)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.init_global_from and self.trainer.ckpt_path is None:  # a resumed run has its own weights
            self.load_global_generator(self.hparams.init_global_from)

    def on_train_epoch_start(self) -> None:
        if self.global_fixed and self.current_epoch >= self.hparams.niter_fix_global:
            # the official update_fixed_params: a new Adam over all of G's parameters, its moments from zero
            adam = self.optimizers()[0].optimizer
            adam.param_groups[0]["params"] = list(self.G.parameters())
            adam.state.clear()
            self.global_fixed = False
            log.info("epoch %d: the global generator trains too (model.niter_fix_global=%d)", self.current_epoch,
                     self.hparams.niter_fix_global)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["pix2pix_lit"]["global_fixed"] = self.global_fixed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.global_fixed = bool(checkpoint.get("pix2pix_lit", {}).get("global_fixed", False))

    def pair(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """What D judges: the source and an image (real target or fake) stacked on channels."""
        return self.prep(torch.cat([source, image], 1))

    def discriminator_loss(self, source, target, fake) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Real pairs vs (pooled) fake pairs, halved (official ``backward_D``) [+ λ_gp · gradient penalty]
        [+ the lazy R1 penalty on this batch's real images]."""
        h = self.hparams
        r1 = h.r1_gamma > 0 and self.global_step % h.r1_every == 0
        if r1:
            target = target.detach().requires_grad_(True)
        real_pair = self.pair(source, target)
        fake_pair = self.prep(self.pool.query(self.pair(source, fake.detach())))
        if self.augment:  # one draw for the step's real and fake pairs
            self.augment.new_draw(real_pair)
            real_pair, fake_pair = self.prep(self.augment(real_pair)), self.prep(self.augment(fake_pair))
        loss_fake = self.criterion_gan(self.D(fake_pair), False, for_discriminator=True)
        pred_real = self.D(real_pair)
        loss_real = self.criterion_gan(pred_real, True, for_discriminator=True)
        loss = (loss_fake + loss_real) * 0.5
        logs = {"loss_D_real": loss_real, "loss_D_fake": loss_fake}
        if r1:
            logs["loss_D_r1"] = r1_penalty(pred_real, target)
            loss = loss + h.r1_gamma / 2 * h.r1_every * logs["loss_D_r1"]
        if h.gan_mode == "wgangp":
            gp = gradient_penalty(self.D, real_pair, fake_pair)
            loss = loss + h.lambda_gp * gp
            logs["loss_D_gp"] = gp
        return loss, {**logs, "loss_D": loss}

    def generator_loss(self, source, target, fake) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fool D on (source, fake) + λ_L1 · L1(fake, target) [+ λ_feat · feature matching on D's layers]
        [+ λ_vgg · VGG(fake, target)]."""
        h = self.hparams
        fake_pair = self.pair(source, fake)
        if self.augment:  # a new draw, the same for the fake pair and feature matching's real pair
            self.augment.new_draw(fake_pair)
            fake_pair = self.prep(self.augment(fake_pair))
        logs = {}
        if h.lambda_feat > 0:
            feats_fake = self.D.features(fake_pair)
            with torch.no_grad():
                feats_real = self.D.features(self.prep(self.augment(self.pair(source, target))))
            pred = [f[-1] for f in feats_fake] if isinstance(feats_fake[0], list) else feats_fake[-1]
            loss_feat = feature_matching_loss(feats_real, feats_fake, self.feat_layer_weight) * h.lambda_feat
            logs["loss_G_feat"] = loss_feat
        else:
            pred = self.D(fake_pair)
            loss_feat = 0.0
        loss_gan = self.criterion_gan(pred, True, for_discriminator=False)
        loss_l1 = F.l1_loss(fake.float(), target.float()) * h.lambda_L1
        loss = loss_gan + loss_l1 + loss_feat
        if self.vgg is not None:
            logs["loss_G_VGG"] = self.vgg.to(fake.device)(fake, target) * h.lambda_vgg
            loss = loss + logs["loss_G_VGG"]
        return loss, {**logs, "loss_G_GAN": loss_gan, "loss_G_L1": loss_l1, "loss_G": loss}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        source, target = self.prep(self.network_input(batch)), self.prep(batch["target"])
        self.check_size(source)
        fake = self.G(source)

        if self.hparams.step_order == "pix2pixhd":  # every loss on the batch's D; then G's update, then D's
            with self.toggled(opt_g):
                loss_G, logs_G = self.generator_loss(source, target, fake)
            with self.toggled(opt_d):
                loss_D, logs_D = self.discriminator_loss(source, target, fake)
            self.update_ema(skipped=self.update(opt_g, loss_G, "loss_G"))
            self.update(opt_d, loss_D, "loss_D")  # its graph holds D's weights of the batch's start: unchanged by G's step
        else:
            with self.toggled(opt_d):  # D first: real pairs vs detached fakes
                loss_D, logs_D = self.discriminator_loss(source, target, fake)
                self.update(opt_d, loss_D, "loss_D")

            with self.toggled(opt_g):  # then G: fool the updated D, stay close to the target
                loss_G, logs_G = self.generator_loss(source, target, fake)
                self.update_ema(skipped=self.update(opt_g, loss_G, "loss_G"))

        self.end_batch({**logs_D, **logs_G}, batch_size=source.shape[0], progress="loss_G_L1")

    # -- plumbing the base asks for -----------------------------------------------------------------------
    def generator_for(self, direction: str = "AtoB") -> str:
        return "G"  # the data resolves the direction: G always maps source -> target

    def evaluate_batch(self, batch, metrics, dataloader_idx):
        source = self.network_input(batch)
        self.check_size(source)
        fake = self.generate(source)
        if metrics is not None:
            metrics["out"].update(fake, batch["target"])
        return {"fake": fake, "name": batch["name"], "target": batch["target"]}

    def grid_rows(self, batch):
        fake = self.generate(self.network_input({k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)})).cpu()
        rows = [[s, f, t] for s, f, t in zip(self.shown_source(batch), fake, batch["target"])]
        l1 = (fake.float() - batch["target"].float()).abs().mean().item()
        return rows, l1, f"source | output of {self.inference_G_name} | target"

    def image_pools(self) -> dict[str, ImagePool]:
        return {"pool": self.pool}

    def restore_pools(self, state: dict[str, Any]) -> None:
        pool = list(state.get("image_pools", {}).get("pool", state.get("image_pool", [])))  # older: "image_pool"
        pair_channels = self.source_channels(self.hparams.input_nc) + self.hparams.output_nc
        if pool and pool[0].shape[1] != pair_channels:
            # written before the pool held (source, fake) pairs: its lone fakes cannot be paired again
            log.warning("the checkpoint's image pool holds fakes without their sources; starting with an empty pool")
            pool = []
        self.pool.images = pool
