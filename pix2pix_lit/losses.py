"""Adversarial losses on logits (autocast-safe), the WGAN-GP gradient penalty, feature matching and the VGG perceptual
loss (bring-your-own ImageNet weights)."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_lit.errors import check_choice
from pix2pix_lit.weights import load_features

GANMode = Literal["vanilla", "lsgan", "hinge", "wgangp"]
GAN_MODES = get_args(GANMode)
GANScales = Literal["mean", "sum"]
GAN_SCALES = get_args(GANScales)

Prediction = Union[torch.Tensor, Sequence[torch.Tensor]]


class GANLoss(nn.Module):
    """Adversarial loss for a discriminator's raw logits (a tensor, or a list of them for multi-scale D).

    ``vanilla`` is BCE-with-logits (never sigmoid + BCE, so mixed precision is safe), ``lsgan`` is
    least squares, ``hinge`` is the hinge loss (D: relu(1 -/+ x), G: -x), ``wgangp`` is the Wasserstein
    critic loss (pair it with :func:`gradient_penalty`). Lists are averaged over scales (``scales="mean"``: SPADE,
    and pix2pix-lit's default) or summed (``"sum"``: pix2pixHD's ``GANLoss``, which gives the adversarial term
    ``num_D`` times the weight it has beside feature matching and VGG under the mean).
    """

    def __init__(self, gan_mode: str = "vanilla", target_real_label: float = 1.0, target_fake_label: float = 0.0,
                 scales: str = "mean"):
        super().__init__()
        self.gan_mode = check_choice("gan_mode", gan_mode, GAN_MODES)
        self.scales = check_choice("gan_scales", scales, GAN_SCALES)
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
            per_scale = torch.stack([self._single(p, target_is_real, for_discriminator) for p in pred])
            return per_scale.sum() if self.scales == "sum" else per_scale.mean()
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


def r1_penalty(real_outputs, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, as StyleGAN2 uses it): E[||grad_x sum D(x)||^2] over real images ``x``, which
    must require grad before D saw them; ``real_outputs`` is D's output (a tensor, or one per scale). The graph is
    kept, so the penalty trains D."""
    outs = real_outputs if isinstance(real_outputs, (list, tuple)) else [real_outputs]
    grads = torch.autograd.grad(outputs=[o.float().sum() for o in outs], inputs=real_images, create_graph=True)[0]
    return grads.float().square().reshape(grads.shape[0], -1).sum(1).mean()


def feature_matching_loss(real_feats: Sequence, fake_feats: Sequence, layer_weight: float = 1.0) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between D's intermediate activations on real and fake pairs.

    Accepts one discriminator's list of activations or a list of such lists (multi-scale); the last
    entry of each list (the logits) is left out; the result is averaged over scales and multiplied by
    ``layer_weight`` (pix2pixHD's ``4 / (n_layers_D + 1)``; SPADE has none: 1).
    """
    if real_feats and isinstance(real_feats[0], torch.Tensor):
        real_feats, fake_feats = [real_feats], [fake_feats]
    total = 0.0
    for rf, ff in zip(real_feats, fake_feats):
        for r, f in zip(rf[:-1], ff[:-1]):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total * layer_weight / len(real_feats)


# where VGG-19's relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 end in torchvision's ``vgg19().features``, and the
# weight of each in pix2pixHD's and SPADE's perceptual loss
VGG_SLICES = (2, 7, 12, 21, 30)
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
VGG19_SOURCE = ("torchvision's ImageNet VGG-19: torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), "
                "saved with torch.save on a machine with internet (download.pytorch.org/models/vgg19-dcbb9e9d.pth)")


class VGGLoss(nn.Module):
    """pix2pixHD/SPADE's perceptual loss: L1 between VGG-19 activations of the fake and the real image at five
    depths, weighted 1/32 ... 1. The images go in as they are, in [-1, 1] (as the official code feeds them).

    The ImageNet weights cannot be downloaded here: ``weights`` is a local file (a torchvision ``vgg19`` state
    dict, or its ``features`` part), checked by its tensors' names and shapes and, with ``sha256``, its digest.
    """

    def __init__(self, weights: str, sha256: Optional[str] = None) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["E"])[: VGG_SLICES[-1]]  # torchvision's vgg19().features, without its classifier
        state = load_features(weights, features.state_dict(), "model.vgg_weights", "VGG-19", VGG19_SOURCE, sha256)
        features.load_state_dict(state)
        self.slices = nn.ModuleList(features[a:b] for a, b in zip((0, *VGG_SLICES[:-1]), VGG_SLICES))
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "VGGLoss":  # a fixed feature extractor: never in training mode
        return super().train(False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x, y = fake.float(), real.float()
        loss = x.new_zeros(())
        for weight, part in zip(VGG_WEIGHTS, self.slices):
            x, y = part(x), part(y)
            loss = loss + weight * F.l1_loss(x, y.detach())
        return loss
