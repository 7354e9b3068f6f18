"""Adversarial losses on logits (autocast-safe) and the WGAN-GP gradient penalty."""

from __future__ import annotations

from typing import Literal, Sequence, Union, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_lit.errors import check_choice

GANMode = Literal["vanilla", "lsgan", "hinge", "wgangp"]
GAN_MODES = get_args(GANMode)

Prediction = Union[torch.Tensor, Sequence[torch.Tensor]]


class GANLoss(nn.Module):
    """Adversarial loss for a discriminator's raw logits (a tensor, or a list of them for multi-scale D).

    ``vanilla`` is BCE-with-logits (never sigmoid + BCE, so mixed precision is safe), ``lsgan`` is
    least squares, ``hinge`` is the hinge loss (D: relu(1 -/+ x), G: -x), ``wgangp`` is the Wasserstein
    critic loss (pair it with :func:`gradient_penalty`). Lists are averaged over scales.
    """

    def __init__(self, gan_mode: str = "vanilla", target_real_label: float = 1.0, target_fake_label: float = 0.0):
        super().__init__()
        self.gan_mode = check_choice("gan_mode", gan_mode, GAN_MODES)
        self.real_label = target_real_label
        self.fake_label = target_fake_label

    def _single(self, pred: torch.Tensor, target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
        pred = pred.float()
        if self.gan_mode in ("vanilla", "lsgan"):
            target = torch.full_like(pred, self.real_label if target_is_real else self.fake_label)
            if self.gan_mode == "vanilla":
                return F.binary_cross_entropy_with_logits(pred, target)
            return F.mse_loss(pred, target)
        if self.gan_mode == "hinge" and for_discriminator:
            return F.relu(1.0 - pred).mean() if target_is_real else F.relu(1.0 + pred).mean()
        # hinge generator loss and the WGAN critic/generator losses are both -E[D] / +E[D]
        return -pred.mean() if target_is_real else pred.mean()

    def forward(self, pred: Prediction, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        if isinstance(pred, (list, tuple)):
            return torch.stack([self._single(p, target_is_real, for_discriminator) for p in pred]).mean()
        return self._single(pred, target_is_real, for_discriminator)


def gradient_penalty(
    netD: nn.Module, real: torch.Tensor, fake: torch.Tensor, constant: float = 1.0
) -> torch.Tensor:
    """WGAN-GP: E[(||grad D(x_hat)||_2 - constant)^2] at random interpolates of real and fake pairs."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    interp = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = netD(interp)
    outs = out if isinstance(out, (list, tuple)) else [out]
    grads = torch.autograd.grad(
        outputs=[o.float().sum() for o in outs], inputs=interp, create_graph=True, retain_graph=True
    )[0]
    grads = grads.float().reshape(grads.shape[0], -1)
    return ((grads.norm(2, dim=1) - constant) ** 2).mean()


def feature_matching_loss(real_feats: Sequence, fake_feats: Sequence) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between D's intermediate activations on real and fake pairs.

    Accepts one discriminator's list of activations or a list of such lists (multi-scale); the last
    entry of each list (the logits) is left out; the result is averaged over scales.
    """
    if real_feats and isinstance(real_feats[0], torch.Tensor):
        real_feats, fake_feats = [real_feats], [fake_feats]
    total = 0.0
    for rf, ff in zip(real_feats, fake_feats):
        for r, f in zip(rf[:-1], ff[:-1]):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total / len(real_feats)
