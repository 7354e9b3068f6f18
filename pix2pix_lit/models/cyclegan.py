"""CycleGAN (Zhu et al., ICCV 2017): unpaired translation A <-> B with two GANs tied by cycle consistency.

G_A: A -> B and G_B: B -> A; D_A tells real B images from G_A's, D_B real A images from G_B's.
L = L_GAN(G_A, D_A) + L_GAN(G_B, D_B) + λ_A·|G_B(G_A(a)) - a| + λ_B·|G_A(G_B(b)) - b|
    [+ λ_idt·(λ_B·|G_A(b) - b| + λ_A·|G_B(a) - a|)]
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F

from pix2pix_lit.errors import ConfigError, check_choice, check_numbers
from pix2pix_lit.losses import GANLoss, GANMode, gradient_penalty
from pix2pix_lit.models.networks import OfficialNetworksModel
from pix2pix_lit.modes import DIRECTIONS, Direction
from pix2pix_lit.nets import GeneratorName, NormName
from pix2pix_lit.nets.image_pool import ImagePool


class CycleGAN(OfficialNetworksModel):
    """CycleGAN with the official implementation's options and defaults (``--model cycle_gan``).

    Defaults: ``resnet_9blocks`` generators, ``basic`` PatchGAN discriminators, instance norm, no dropout,
    ``lsgan``, λ_A = λ_B = 10, ``lambda_identity`` 0.5 (scaled by λ_A/λ_B as the official code does), one
    image pool of 50 per discriminator, each D loss halved, Adam 2e-4 (β1 0.5) for the two generators
    together and for the two discriminators together, linear LR policy over 100 + 100 epochs. As the
    official ``optimize_parameters``: the generators are updated first, then the discriminators.

    Metrics: ``val/fid_B`` (G_A(A) against the real B images), ``val/fid_A`` (G_B(B) against real A), the
    same for KID (and MiFID against the training images, ``mifid_train_*``, with ``mifid``), and SSIM/PSNR
    where the data has true pairs.

    The generator options (both generators: ``netG``, ``ngf``, ...) and discriminator options (both
    discriminators) are those of :class:`~pix2pix_lit.models.networks.OfficialNetworksModel`, here with the
    official CycleGAN defaults.

    Args:
        netG: both generators (OfficialNetworksModel's choices; CycleGAN's default resnet_9blocks).
        no_dropout: no dropout in the generators (CycleGAN's default: true).
        norm: batch | instance | none | syncbatch, in every network (CycleGAN's default: instance).
        gan_mode: vanilla | lsgan | hinge | wgangp (CycleGAN's default: lsgan).
        pool_size: each D's image buffer of past fakes (CycleGAN's default: 50; 0: none).
        lambda_A: weight of the cycle loss A -> B -> A.
        lambda_B: weight of the cycle loss B -> A -> B.
        lambda_identity: weight of the identity losses relative to lambda_A/lambda_B (0: off; needs
            input_nc == output_nc).
        predict_direction: the way ``predict`` translates: ``AtoB`` (G_A, the data's A images) or ``BtoA``
            (G_B, its B images).
        plateau_monitor: as the base's, here ``val/fid_B``.
    """

    generator_names = ("G_A", "G_B")
    discriminator_names = ("D_A", "D_B")
    data_kind = "unpaired"
    metric_domains = {"B": "_B", "A": "_A"}  # val/fid_B: G_A's outputs against real B
    reference_domains = {"B": "B", "A": "A"}  # MiFID of G_A's outputs against the training B images
    runtime_options = (*OfficialNetworksModel.runtime_options, "predict_direction")

    def __init__(
        self,
        netG: GeneratorName = "resnet_9blocks",
        no_dropout: bool = True,
        norm: NormName = "instance",
        gan_mode: GANMode = "lsgan",
        pool_size: int = 50,
        lambda_A: float = 10.0,
        lambda_B: float = 10.0,
        lambda_identity: float = 0.5,
        plateau_monitor: str = "val/fid_B",
        predict_direction: Direction = "AtoB",
        **kwargs: Any,
    ) -> None:
        check_choice("model.predict_direction", predict_direction, DIRECTIONS)
        check_numbers(locals(), {"lambda_A": ">=0", "lambda_B": ">=0", "lambda_identity": ">=0"})
        input_nc, output_nc = kwargs.get("input_nc", 3), kwargs.get("output_nc", 3)
        if lambda_identity > 0 and input_nc != output_nc:
            raise ConfigError(
                f"model.lambda_identity={lambda_identity} needs as many channels in A as in B (input_nc={input_nc}, "
                f"output_nc={output_nc}): G_A(b) must be comparable to b; set model.lambda_identity 0"
            )
        if kwargs.get("label_nc", 0):
            raise ConfigError("model.label_nc: CycleGAN translates unpaired images; label maps -> photos is paired "
                              "(Pix2Pix or SPADE on pix2pix_lit.data.PairedDataModule)")
        super().__init__(netG=netG, no_dropout=no_dropout, norm=norm, gan_mode=gan_mode, pool_size=pool_size,
                         plateau_monitor=plateau_monitor, **kwargs)
        self.G_A, self.G_B = self.make_G(input_nc, output_nc), self.make_G(output_nc, input_nc)
        self.D_A = self.make_D(output_nc)  # judges B images
        self.D_B = self.make_D(input_nc)  # judges A images
        self.criterion_gan = GANLoss(gan_mode)
        self.fake_A_pool = ImagePool(pool_size)  # G_B's past outputs, shown to D_B
        self.fake_B_pool = ImagePool(pool_size)  # G_A's past outputs, shown to D_A
        self.finish_networks()

    # -- the paper ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_g = self.adam(chain(self.G_A.parameters(), self.G_B.parameters()))
        opt_d = self.adam(chain(self.D_A.parameters(), self.D_B.parameters()))
        return [opt_g, opt_d], self.schedulers_for({"G": opt_g, "D": opt_d})

    def generator_loss(self, real_A, real_B, fake_A, fake_B, rec_A, rec_B) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """GAN losses of both generators + cycle losses (+ identity losses), as the official ``backward_G``."""
        h = self.hparams
        logs = {}
        loss_idt = 0.0
        if h.lambda_identity > 0:
            # G_A should leave a B image unchanged, G_B an A image
            loss_idt_A = F.l1_loss(self.G_A(real_B).float(), real_B.float()) * h.lambda_B * h.lambda_identity
            loss_idt_B = F.l1_loss(self.G_B(real_A).float(), real_A.float()) * h.lambda_A * h.lambda_identity
            loss_idt = loss_idt_A + loss_idt_B
            logs.update(loss_idt_A=loss_idt_A, loss_idt_B=loss_idt_B)
        loss_G_A = self.criterion_gan(self.D_A(fake_B), True, for_discriminator=False)
        loss_G_B = self.criterion_gan(self.D_B(fake_A), True, for_discriminator=False)
        loss_cycle_A = F.l1_loss(rec_A.float(), real_A.float()) * h.lambda_A
        loss_cycle_B = F.l1_loss(rec_B.float(), real_B.float()) * h.lambda_B
        loss = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt
        logs.update(loss_G_A=loss_G_A, loss_G_B=loss_G_B, loss_cycle_A=loss_cycle_A, loss_cycle_B=loss_cycle_B,
                    loss_G=loss)
        return loss, logs

    def _one_discriminator_loss(self, D, real, fake) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official ``backward_D_basic``: (real + fake) / 2 [+ λ_gp · gradient penalty]."""
        loss_real = self.criterion_gan(D(real), True, for_discriminator=True)
        loss_fake = self.criterion_gan(D(fake), False, for_discriminator=True)
        loss = (loss_real + loss_fake) * 0.5
        if self.hparams.gan_mode == "wgangp":
            loss = loss + self.hparams.lambda_gp * gradient_penalty(D, real, fake)
        return loss, loss_real, loss_fake

    def discriminator_loss(self, real_A, real_B, fake_A, fake_B) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D_A: real B vs pooled G_A outputs; D_B: real A vs pooled G_B outputs. One optimizer steps both."""
        fake_B = self.prep(self.fake_B_pool.query(fake_B.detach()))
        fake_A = self.prep(self.fake_A_pool.query(fake_A.detach()))
        loss_D_A, real_DA, fake_DA = self._one_discriminator_loss(self.D_A, real_B, fake_B)
        loss_D_B, real_DB, fake_DB = self._one_discriminator_loss(self.D_B, real_A, fake_A)
        loss = loss_D_A + loss_D_B  # separate networks: one backward of the sum = the official two backwards
        return loss, {"loss_D_A": loss_D_A, "loss_D_B": loss_D_B, "loss_D_A_real": real_DA, "loss_D_A_fake": fake_DA,
                      "loss_D_B_real": real_DB, "loss_D_B_fake": fake_DB, "loss_D": loss}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real_A, real_B = self.prep(batch["A"]), self.prep(batch["B"])
        self.check_size(real_A)
        self.check_size(real_B)
        fake_B = self.G_A(real_A)  # A -> B
        rec_A = self.G_B(fake_B)  # A -> B -> A
        fake_A = self.G_B(real_B)  # B -> A
        rec_B = self.G_A(fake_A)  # B -> A -> B

        with self.toggled(opt_g):  # generators first, with D_A and D_B frozen (official order)
            loss_G, logs_G = self.generator_loss(real_A, real_B, fake_A, fake_B, rec_A, rec_B)
            self.update_ema(skipped=self.update(opt_g, loss_G, "loss_G"))

        with self.toggled(opt_d):  # then both discriminators
            loss_D, logs_D = self.discriminator_loss(real_A, real_B, fake_A, fake_B)
            self.update(opt_d, loss_D, "loss_D")

        self.end_batch({**logs_G, **logs_D}, batch_size=real_A.shape[0], progress="loss_cycle_A")

    # -- plumbing the base asks for -----------------------------------------------------------------------
    def generator_for(self, direction: str = "AtoB") -> str:
        check_choice("direction", direction, DIRECTIONS)
        return "G_A" if direction == "AtoB" else "G_B"

    def evaluate_batch(self, batch, metrics, dataloader_idx):
        """Eval loader 0 holds A images (G_A's outputs are B images), loader 1 B images (G_B's are A images)."""
        direction = "AtoB" if dataloader_idx == 0 else "BtoA"
        into, source_domain = ("B", "A") if direction == "AtoB" else ("A", "B")
        self.check_size(batch["image"])
        fake = self.generate(batch["image"], direction)
        if metrics is not None:
            metrics[into].update_fake(fake)
            metrics[source_domain].update_real(batch["image"])
            if "target" in batch:  # the data has true pairs (e.g. side-by-side files read as two domains)
                metrics[into].update_pairs(fake, batch["target"])
        out = {"fake": fake, "name": batch["name"], "direction": direction}
        if "target" in batch:
            out["target"] = batch["target"]
        return out

    def real_set_loaders(self) -> dict[str, int]:
        return {"A": 0, "B": 1}

    def grid_rows(self, batch):
        rows, l1s = [], []
        for real, direction, back in ((batch["A"], "AtoB", "BtoA"), (batch["B"], "BtoA", "AtoB")):
            real = real.to(self.device)
            fake = self.generate(real, direction)
            rec = self.generate(fake, back)
            rows += [[r, f, c] for r, f, c in zip(real.cpu(), fake.cpu(), rec.cpu())]
            l1s.append((rec.float() - real.float()).abs().mean().item())
        names = f"{self.inference_net_name('AtoB')}, {self.inference_net_name('BtoA')}"
        return rows, sum(l1s) / len(l1s), f"A | G_A(A) | G_B(G_A(A)), then B | G_B(B) | G_A(G_B(B)) ({names}); L1 of the cycles"

    def image_pools(self) -> dict[str, ImagePool]:
        return {"fake_A": self.fake_A_pool, "fake_B": self.fake_B_pool}
