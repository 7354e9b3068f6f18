"""CUT and FastCUT (Park, Efros, Zhang, Zhu, ECCV 2020): one-sided unpaired translation A -> B with a GAN and a
patch-wise contrastive loss instead of CycleGAN's second generator and cycle.

L = λ_GAN·L_GAN(G, D) + λ_NCE·PatchNCE(G, F, A) [+ λ_NCE·PatchNCE(G, F, B), the identity term; the two averaged]

PatchNCE: a patch of G(a) should be closer, in G's own encoder features (passed through F's small MLPs), to the patch
of ``a`` at the same place than to the other patches of ``a``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from pix2pix_lit.errors import ConfigError, check_choice, check_numbers
from pix2pix_lit.losses import GANLoss, GANMode
from pix2pix_lit.models.base import ImageTranslationModel
from pix2pix_lit.nets import InitName, NormName, get_norm_layer, init_weights
from pix2pix_lit.nets.cut import CUTDiscriminator, CUTGenerator, PatchSampleF, patch_nce_loss

CUT_GENERATORS = {"resnet_9blocks": 9, "resnet_6blocks": 6}


class CUT(ImageTranslationModel):
    """CUT with the official options and defaults (taesungp/contrastive-unpaired-translation, ``--model cut``).

    Defaults (``CUT_mode CUT``): ``resnet_9blocks`` G and ``basic`` PatchGAN D, both with anti-aliased down/upsampling,
    instance norm, xavier init (gain 0.02), LSGAN, λ_GAN 1, λ_NCE 1 with the identity term (``nce_idt``), PatchNCE on
    G's layers 0, 4, 8, 12, 16, 256 patches per layer, F's MLP heads of 256 channels, τ 0.07, no image pool, Adam
    2e-4 (β 0.5, 0.999) for G with F and for D. FastCUT (``configs/cut/fastcut_horse2zebra.yaml``): ``nce_idt``
    false, λ_NCE 10, ``flip_equivariance`` true, 150 + 50 epochs. Per batch, as the official ``optimize_parameters``:
    D's update on the batch's fakes, then G's and F's.

    Metrics: ``val/fid_B`` (G(A) against the real B images), KID, MiFID; one direction (CUT is one-sided).

    Args:
        input_nc: channels of domain A (linked from the data).
        output_nc: channels of domain B (linked from the data).
        netG: resnet_9blocks | resnet_6blocks.
        ngf: G's filters in its first layer.
        no_dropout: no dropout in G (the official default: true).
        netD: basic | n_layers (with n_layers_D).
        ndf: D's filters in its first layer.
        n_layers_D: netD n_layers: the PatchGAN's strided layers.
        norm: batch | instance | none | syncbatch, in G and D.
        init_type: G's and D's weight init (official: xavier).
        init_gain: the init's gain (official: 0.02).
        antialias: blurred downsampling in G and D, the official default (false: junyanz's strided convolutions).
        antialias_up: blurred upsampling in G, the official default (false: transposed convolutions).
        gan_mode: lsgan | vanilla | hinge | wgangp.
        lambda_GAN: weight of G's adversarial loss.
        lambda_NCE: weight of the PatchNCE loss.
        nce_idt: the identity PatchNCE on B images (G(b) should keep b's patches).
        nce_layers: G's layers (indices into ``G.model``) whose activations PatchNCE compares.
        num_patches: patches per layer.
        netF_nc: the width of F's MLP heads.
        nce_T: PatchNCE's temperature.
        nce_includes_all_negatives_from_minibatch: negatives from every image of the batch (for single-image
            translation), else only from the same image.
        flip_equivariance: FastCUT's regularisation: half the batches go through G flipped left-right and the
            query features are flipped back before PatchNCE.
        plateau_monitor: as the base's, here ``val/fid_B``.
        n_epochs: as the base's; CUT's default 200.
        n_epochs_decay: as the base's; CUT's default 200.
    """

    generator_names = ("G",)
    discriminator_names = ("D",)
    data_kind = "unpaired"
    metric_domains = {"B": "_B"}  # val/fid_B: G's outputs against real B
    reference_domains = {"B": "B"}

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        netG: str = "resnet_9blocks",
        ngf: int = 64,
        no_dropout: bool = True,
        netD: str = "basic",
        ndf: int = 64,
        n_layers_D: int = 3,
        norm: NormName = "instance",
        init_type: InitName = "xavier",
        init_gain: float = 0.02,
        antialias: bool = True,
        antialias_up: bool = True,
        gan_mode: GANMode = "lsgan",
        lambda_GAN: float = 1.0,
        lambda_NCE: float = 1.0,
        nce_idt: bool = True,
        nce_layers: Sequence[int] = (0, 4, 8, 12, 16),
        num_patches: int = 256,
        netF_nc: int = 256,
        nce_T: float = 0.07,
        nce_includes_all_negatives_from_minibatch: bool = False,
        flip_equivariance: bool = False,
        plateau_monitor: str = "val/fid_B",
        n_epochs: int = 200,
        n_epochs_decay: int = 200,
        **kwargs: Any,
    ) -> None:
        check_choice("model.netG", netG, tuple(CUT_GENERATORS))
        check_choice("model.netD", netD, ("basic", "n_layers"))
        check_numbers(locals(), {"ngf": ">=1", "ndf": ">=1", "n_layers_D": ">=1", "init_gain": ">0",
                                 "lambda_GAN": ">=0", "lambda_NCE": ">=0", "num_patches": ">=1", "netF_nc": ">=1",
                                 "nce_T": ">0"})
        nce_layers = [int(k) for k in nce_layers]
        if kwargs.get("label_nc", 0):
            raise ConfigError("model.label_nc: CUT translates unpaired images; label maps -> photos is paired "
                              "(Pix2Pix or SPADE on pix2pix_lit.data.PairedDataModule)")
        if nce_idt and input_nc != output_nc:
            raise ConfigError(f"model.nce_idt needs as many channels in A as in B (input_nc={input_nc}, "
                              f"output_nc={output_nc}): G(b) is compared with b; set model.nce_idt false")
        super().__init__(plateau_monitor=plateau_monitor, n_epochs=n_epochs, n_epochs_decay=n_epochs_decay, **kwargs)
        norm_layer = get_norm_layer(norm)
        self.G = init_weights(CUTGenerator(input_nc, output_nc, ngf, norm_layer, not no_dropout, CUT_GENERATORS[netG],
                                           antialias, antialias_up), init_type, init_gain)
        n_layers = 3 if netD == "basic" else n_layers_D
        self.D = init_weights(CUTDiscriminator(output_nc, ndf, n_layers, norm_layer, antialias), init_type, init_gain)
        if not nce_layers or sorted(set(nce_layers)) != nce_layers or not 0 <= nce_layers[-1] < len(self.G.model):
            raise ConfigError(f"model.nce_layers={nce_layers}: ascending indices of G's layers, 0 to "
                              f"{len(self.G.model) - 1} (official: 0,4,8,12,16)")
        with torch.no_grad():  # F's heads take each compared layer's channels (the official builds them at batch 1)
            channels = [f.shape[1] for f in self.G.encode(torch.zeros(1, input_nc, 32, 32), nce_layers)]
        self.F = init_weights(PatchSampleF(channels, netF_nc), init_type, init_gain)
        self.criterion_gan = GANLoss(gan_mode)
        self.finish_networks()

    # -- the paper ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        # one Adam over G and F: per parameter the same update as the official two optimizers stepped together
        opt_g = self.adam([*self.G.parameters(), *self.F.parameters()])
        opt_d = self.adam(self.D.parameters())
        return [opt_g, opt_d], self.schedulers_for({"G": opt_g, "D": opt_d})

    def patch_nce(self, source: torch.Tensor, output: torch.Tensor, flipped: bool = False) -> torch.Tensor:
        """PatchNCE of G's ``output`` against its ``source``, averaged over the layers (official
        ``calculate_NCE_loss``): the same sampled locations in both, the source's side not differentiated."""
        h = self.hparams
        feat_q = self.G.encode(output, h.nce_layers)
        if flipped:  # the output came from the flipped source: compare it the right way round
            feat_q = [torch.flip(f, [3]) for f in feat_q]
        feat_k = self.G.encode(source, h.nce_layers)
        pool_k, ids = self.F(feat_k, h.num_patches)
        pool_q, _ = self.F(feat_q, h.num_patches, ids)
        total = 0.0
        for q, k in zip(pool_q, pool_k):
            total = total + patch_nce_loss(q, k, source.shape[0], h.nce_T,
                                           h.nce_includes_all_negatives_from_minibatch).mean() * h.lambda_NCE
        return total / len(pool_q)

    def discriminator_loss(self, real_B, fake_B) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss_fake = self.criterion_gan(self.D(fake_B.detach()), False, for_discriminator=True)
        loss_real = self.criterion_gan(self.D(real_B), True, for_discriminator=True)
        loss = (loss_fake + loss_real) * 0.5
        return loss, {"loss_D_real": loss_real, "loss_D_fake": loss_fake, "loss_D": loss}

    def generator_loss(self, real_A, real_B, fake_B, idt_B, flipped: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.hparams
        loss_gan = self.criterion_gan(self.D(fake_B), True, for_discriminator=False) * h.lambda_GAN
        logs: dict[str, Any] = {"loss_G_GAN": loss_gan}
        loss_nce = self.patch_nce(real_A, fake_B, flipped) if h.lambda_NCE > 0 else 0.0
        both = loss_nce
        if h.nce_idt and h.lambda_NCE > 0:
            logs["loss_NCE_Y"] = self.patch_nce(real_B, idt_B, flipped)
            both = (loss_nce + logs["loss_NCE_Y"]) * 0.5
        loss = loss_gan + both
        return loss, {**logs, "loss_NCE": loss_nce, "loss_G": loss}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        h = self.hparams
        real_A, real_B = self.prep(batch["A"]), self.prep(batch["B"])
        self.check_size(real_A)
        real = torch.cat([real_A, real_B]) if h.nce_idt else real_A  # G(b): the identity term's output
        flipped = h.flip_equivariance and self.flip_this_batch()
        fake = self.G(torch.flip(real, [3]) if flipped else real)
        fake_B, idt_B = fake[: real_A.shape[0]], fake[real_A.shape[0]:]

        with self.toggled(opt_d):  # D first, on the batch's fakes (official order)
            loss_D, logs_D = self.discriminator_loss(real_B, fake_B)
            self.update(opt_d, loss_D, "loss_D")

        with self.toggled(opt_g):  # then G and F: fool the updated D, keep the source's patches
            loss_G, logs_G = self.generator_loss(real_A, real_B, fake_B, idt_B, flipped)
            self.update_ema(skipped=self.update(opt_g, loss_G, "loss_G"))

        self.end_batch({**logs_D, **logs_G}, batch_size=real_A.shape[0], progress="loss_NCE")

    def flip_this_batch(self) -> bool:
        """FastCUT's coin for the batch (the host's RNG, saved in checkpoints: no device wait)."""
        return bool(torch.rand(()) < 0.5)

    # -- plumbing the base asks for -----------------------------------------------------------------------
    def generator_for(self, direction: str = "AtoB") -> str:
        if direction != "AtoB":
            raise ConfigError("CUT translates one way (A -> B); for B -> A train another with data.direction BtoA")
        return "G"

    def evaluate_batch(self, batch, metrics, dataloader_idx):
        """Eval loader 0 holds A images (translated, scored against real B), loader 1 B images (the real set)."""
        if dataloader_idx == 1:
            if metrics is not None:
                metrics["B"].update_real(batch["image"])
            return {"fake": batch["image"][:0], "name": [], "direction": "AtoB"}
        self.check_size(batch["image"])
        fake = self.generate(batch["image"])
        if metrics is not None:
            metrics["B"].update_fake(fake)
            if "target" in batch:
                metrics["B"].update_pairs(fake, batch["target"])
        out = {"fake": fake, "name": batch["name"], "direction": "AtoB"}
        if "target" in batch:
            out["target"] = batch["target"]
        return out

    def real_set_loaders(self) -> dict[str, int]:
        return {"B": 1}

    def grid_rows(self, batch):
        real_A, real_B = batch["A"].to(self.device), batch["B"].to(self.device)
        fake_B, idt_B = self.generate(real_A), self.generate(real_B)
        rows = [[a, f] for a, f in zip(real_A.cpu(), fake_B.cpu())] + [[b, i] for b, i in zip(real_B.cpu(), idt_B.cpu())]
        l1 = (idt_B.float() - real_B.float()).abs().mean().item()
        return rows, l1, f"A | G(A), then B | G(B) ({self.inference_net_name()}); L1 of G(B) to B"
