"""SPADE / GauGAN (Park et al., CVPR 2019): label maps -> photos with a generator whose every normalisation is
modulated by the labels. L_G = hinge(D(m, G(m))) + λ_feat·FM(D) [+ λ_vgg·VGG(G(m), x)];
L_D = hinge(D(m, x), real) + hinge(D(m, G(m)), fake); two time-scale Adam (G at lr/2, D at 2·lr, β = (0, 0.9)).
With the VAE (``use_vae``) G also takes a style code z = E(x) and L_G gains λ_kld·KL(E(x) || N(0, 1)).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional

import torch
import torch.nn.functional as F

from pix2pix_lit.errors import ConfigError, check_numbers
from pix2pix_lit.losses import VGG19_SOURCE, GANLoss, GANMode, VGGLoss, feature_matching_loss
from pix2pix_lit.models.base import ImageTranslationModel
from pix2pix_lit.modes import InferenceMode
from pix2pix_lit.nets.norm import InitName, init_weights
from pix2pix_lit.nets.spade import (
    PARAM_FREE_NORMS,
    ConvEncoder,
    SPADEGenerator,
    UpsamplingLayers,
    kl_divergence,
    spade_discriminator,
)

log = logging.getLogger(__name__)

NORM_G = re.compile(r"(spectral)?spade(" + "|".join(PARAM_FREE_NORMS) + r")3x3")


class SPADE(ImageTranslationModel):
    """SPADE with the NVlabs/SPADE options and defaults (``--netG spade --netD multiscale``).

    The data must give label maps (``data.label_nc``; the model takes ``label_nc``, ``contain_dontcare_label`` and
    ``no_instance`` from it): G and D see them one-hot with the instance edges.

    Args:
        input_nc: unused (the label maps decide G's and D's input channels).
        output_nc: the photos' channels (linked from the data).
        ngf: G's width (its blocks run at 16·ngf down to ngf).
        num_upsampling_layers: normal | more (Cityscapes) | most: how small G's starting grid is.
        norm_G: ``spectralspadesyncbatch3x3`` (spectral norm on G's convs, SPADE over a parameter-free
            synchronised batch norm, 3x3 SPADE convs) or the ``batch``/``instance`` variants, with or without
            ``spectral``.
        ndf: the multi-scale discriminator's filters in its first layer.
        n_layers_D: each of its PatchGANs' layer groups (official: 4; spectral instance norm).
        num_D: its PatchGANs, each at half the previous one's resolution (official: 2).
        gan_mode: hinge (official) | vanilla | lsgan | wgangp.
        lambda_feat: weight of feature matching on D's layers.
        no_ganFeat_loss: no feature matching.
        lambda_vgg: weight of the VGG-19 perceptual loss, on only with vgg_weights.
        no_vgg_loss: no VGG-19 perceptual loss.
        vgg_weights: a local torchvision VGG-19 state dict (no download).
        vgg_sha256: the SHA-256 that file must have (null: only its tensors' names and shapes are checked).
        no_TTUR: one learning rate for both (else G at lr/2 and D at 2·lr, the two time-scale update rule).
        init_type: the official xavier (or another, as OfficialNetworksModel's).
        init_variance: the init's gain (official: 0.02).
        beta1: Adam's β1; null follows no_TTUR as the official options do: 0 with TTUR, 0.5 without.
        beta2: Adam's β2; null: 0.9 with TTUR, 0.999 without.
        lr_policy: as the base's, here ``linear_nvidia`` (SPADE's rule).
        inference_mode: ``eval`` here (the official test.py calls ``model.eval()``: batch norm with running
            statistics).
        use_vae: the image encoder E (the VAE): G starts from a style code z drawn from E's posterior for the
            photo; validation and test take each photo's style (as the official test), ``predict`` a random one.
        z_dim: the style code's size.
        lambda_kld: weight of the VAE's KL term.
        crop_size: with use_vae, the size G is built for (its grid is fixed; set it as the data's).
        aspect_ratio: with use_vae, width / height of that size (as the data's).
    Shared options (lr 2e-4, the LR policy: ``linear_nvidia`` here, SPADE's rule; metrics, EMA) are the base's.
    """

    generator_names = ("G",)
    discriminator_names = ("D",)
    data_kind = "paired"
    metric_domains = {"out": ""}
    runtime_options = (*ImageTranslationModel.runtime_options, "vgg_weights", "vgg_sha256")

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        num_upsampling_layers: UpsamplingLayers = "normal",
        norm_G: str = "spectralspadesyncbatch3x3",
        ndf: int = 64,
        n_layers_D: int = 4,
        num_D: int = 2,
        gan_mode: GANMode = "hinge",
        lambda_feat: float = 10.0,
        no_ganFeat_loss: bool = False,
        lambda_vgg: float = 10.0,
        no_vgg_loss: bool = False,
        vgg_weights: Optional[str] = None,
        vgg_sha256: Optional[str] = None,
        no_TTUR: bool = False,
        init_type: InitName = "xavier",
        init_variance: float = 0.02,
        beta1: Optional[float] = None,
        beta2: Optional[float] = None,
        lr_policy: str = "linear_nvidia",
        inference_mode: InferenceMode = "eval",
        use_vae: bool = False,
        z_dim: int = 256,
        lambda_kld: float = 0.05,
        crop_size: int = 256,
        aspect_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        norm = NORM_G.fullmatch(norm_G)
        if norm is None:
            raise ConfigError(f"model.norm_G={norm_G!r} is not known; use e.g. spectralspadesyncbatch3x3, "
                              f"spadebatch3x3, spectralspadeinstance3x3")
        check_numbers(locals(), {
            "output_nc": ">=1", "ngf": ">=1", "ndf": ">=1", "n_layers_D": ">=1", "num_D": ">=1", "z_dim": ">=1",
            "crop_size": ">=1", "aspect_ratio": ">0", "init_variance": ">0", "lambda_feat": ">=0", "lambda_vgg": ">=0",
            "lambda_kld": ">=0"})
        if not kwargs.get("label_nc", 0):
            raise ConfigError("SPADE turns label maps into photos: give the data label maps (data.label_nc > 0, e.g. "
                              "pix2pix_lit.data.SyntheticLabelDataModule or data.layout cityscapes)")
        # the official train_options: TTUR's betas (0, 0.9) unless no_TTUR, whose defaults are (0.5, 0.999)
        beta1 = beta1 if beta1 is not None else (0.5 if no_TTUR else 0.0)
        beta2 = beta2 if beta2 is not None else (0.999 if no_TTUR else 0.9)
        super().__init__(beta1=beta1, beta2=beta2, lr_policy=lr_policy, inference_mode=inference_mode, **kwargs)
        # saved resolved, whichever way the arguments were collected (LightningCLI records the config's nulls)
        self.hparams.beta1, self.hparams.beta2 = beta1, beta2
        semantic_nc = self.source_channels(input_nc)
        self.G = init_weights(SPADEGenerator(semantic_nc, output_nc, ngf, num_upsampling_layers, crop_size, aspect_ratio,
                                             use_vae, z_dim, norm=norm.group(2), spectral=bool(norm.group(1))),
                              init_type, init_variance)
        self.E = init_weights(ConvEncoder(output_nc, ngf, crop_size, z_dim), init_type, init_variance) if use_vae else None
        self.D = init_weights(spade_discriminator(semantic_nc + output_nc, ndf, n_layers_D, num_D),
                              init_type, init_variance)
        self.criterion_gan = GANLoss(gan_mode)
        # loaded for training only (setup), and kept out of the module tree: fixed ImageNet weights, not part of
        # the model nor of its checkpoints; test and predict never need the file
        self.__dict__["vgg"] = None
        self.finish_networks()

    def prepare_data(self) -> None:
        super().prepare_data()
        self._check_vae_size()
        self._load_vgg(self.trainer.state.fn)  # Lightning calls this before any logger starts: a bad file leaves none

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._check_vae_size()
        self._load_vgg(stage)

    def _check_vae_size(self) -> None:
        """With the VAE, G starts from ``z`` projected onto the grid of ``crop_size`` x ``aspect_ratio``: it makes
        images of that size only, so the data must be cropped to it (a one-line error before any logger starts)."""
        h = self.hparams
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not h.use_vae or data is None:
            return
        options = dict(data.hparams)  # the data module's options: which ones depends on its class
        crop, aspect = options.get("crop_size"), options.get("aspect_ratio", 1.0)
        if crop is not None and (crop, float(aspect)) != (h.crop_size, float(h.aspect_ratio)):
            raise ConfigError(f"model.use_vae makes images of model.crop_size={h.crop_size} (aspect_ratio "
                              f"{h.aspect_ratio}) but the data is cropped to {crop} (aspect_ratio {aspect}); set "
                              f"model.crop_size {crop} and model.aspect_ratio {aspect}, as the data's")

    def _load_vgg(self, stage: str) -> None:
        h = self.hparams
        if stage != "fit" or self.vgg is not None or h.no_vgg_loss or h.lambda_vgg == 0:
            return
        if h.vgg_weights is None:
            log.warning("the VGG perceptual loss (lambda_vgg) is off: it needs model.vgg_weights, %s", VGG19_SOURCE)
            return
        self.__dict__["vgg"] = VGGLoss(h.vgg_weights, h.vgg_sha256)  # a bad file: one line, before training

    # -- the paper ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        lr_g, lr_d = (h.lr, h.lr) if h.no_TTUR else (h.lr / 2, h.lr * 2)  # two time-scale update rule
        g_params = list(self.G.parameters()) + (list(self.E.parameters()) if self.E is not None else [])
        opt_g, opt_d = self.adam(g_params, lr_g), self.adam(self.D.parameters(), lr_d)
        return [opt_g, opt_d], self.schedulers_for({"G": opt_g, "D": opt_d})

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The VAE: a style code z ~ N(mu, exp(logvar)) for ``image`` (reparameterised), with mu and logvar."""
        mu, logvar = self.E(image)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return z, mu, logvar

    def style_of(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """What G takes besides the labels: ``{"z": E's code for image}`` with the VAE, else nothing."""
        return {"z": self.encode(image)[0]} if self.E is not None else {}

    def discriminate(self, labels: torch.Tensor, fake: torch.Tensor, real: torch.Tensor):
        """D's activations for (labels, fake) and (labels, real), in one batch as the official code runs them."""
        both = self.prep(torch.cat([torch.cat([labels, fake], 1), torch.cat([labels, real], 1)], 0))
        feats = self.D.features(both)
        n = fake.shape[0]
        return [[f[:n] for f in scale] for scale in feats], [[f[n:] for f in scale] for scale in feats]

    def generator_loss(self, labels, real, fake) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fool D (hinge) + λ_feat · feature matching on D's layers [+ λ_vgg · VGG(fake, real)]."""
        h = self.hparams
        feats_fake, feats_real = self.discriminate(labels, fake, real)
        loss_gan = self.criterion_gan([f[-1] for f in feats_fake], True, for_discriminator=False)
        logs = {"loss_G_GAN": loss_gan}
        loss = loss_gan
        if not h.no_ganFeat_loss:
            logs["loss_G_feat"] = feature_matching_loss(feats_real, feats_fake) * h.lambda_feat
            loss = loss + logs["loss_G_feat"]
        if self.vgg is not None:
            logs["loss_G_VGG"] = self.vgg.to(fake.device)(fake, real) * h.lambda_vgg
            loss = loss + logs["loss_G_VGG"]
        return loss, {**logs, "loss_G": loss}

    def discriminator_loss(self, labels, real, fake) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """hinge(D(m, fake), fake) + hinge(D(m, real), real) (the official D loss: a sum, not halved)."""
        feats_fake, feats_real = self.discriminate(labels, fake.detach(), real)
        loss_fake = self.criterion_gan([f[-1] for f in feats_fake], False, for_discriminator=True)
        loss_real = self.criterion_gan([f[-1] for f in feats_real], True, for_discriminator=True)
        loss = loss_fake + loss_real
        return loss, {"loss_D_fake": loss_fake, "loss_D_real": loss_real, "loss_D": loss}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        labels, real = self.prep(self.network_input(batch)), self.prep(batch["target"])
        self.check_size(labels)

        with self.toggled(opt_g):  # G first, as the official trainer
            kld, style = 0.0, {}
            if self.E is not None:
                z, mu, logvar = self.encode(real)
                kld, style = kl_divergence(mu.float(), logvar.float()) * self.hparams.lambda_kld, {"z": z}
            loss_G, logs_G = self.generator_loss(labels, real, self.G(labels, **style))
            if self.E is not None:
                loss_G, logs_G = loss_G + kld, {**logs_G, "loss_G_KLD": kld, "loss_G": loss_G + kld}
            self.update_ema(skipped=self.update(opt_g, loss_G, "loss_G"))

        with self.toggled(opt_d):  # then D, on a fake of the updated G
            with torch.no_grad():
                fake = self.G(labels, **self.style_of(real))
            loss_D, logs_D = self.discriminator_loss(labels, real, fake)
            self.update(opt_d, loss_D, "loss_D")

        self.end_batch({**logs_G, **logs_D}, batch_size=labels.shape[0], progress="loss_G_GAN")

    # -- plumbing the base asks for -----------------------------------------------------------------------
    def export_extra_inputs(self) -> dict[str, str]:
        if not self.hparams.use_vae:
            return {}
        return {"z": f"a style code of {self.hparams.z_dim} numbers, drawn from a photo by E or at random (use_vae)"}

    def generator_for(self, direction: str = "AtoB") -> str:
        return "G"

    def evaluate_batch(self, batch, metrics, dataloader_idx):
        labels = self.network_input(batch)
        self.check_size(labels)
        with torch.no_grad():  # with the VAE, each photo's own style (as the official test)
            style = self.style_of(self.prep(batch["target"]))
        fake = self.generate(labels, **style)
        if metrics is not None:
            metrics["out"].update(fake, batch["target"])
        return {"fake": fake, "name": batch["name"], "target": batch["target"]}

    def grid_rows(self, batch):
        on_device = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
        with torch.no_grad():
            style = self.style_of(on_device["target"])
        fake = self.generate(self.network_input(on_device), **style).cpu()
        rows = [[s, f, t] for s, f, t in zip(self.shown_source(batch), fake, batch["target"])]
        l1 = F.l1_loss(fake.float(), batch["target"].float()).item()
        return rows, l1, f"labels | output of {self.inference_G_name} | photo"
