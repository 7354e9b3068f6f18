import pytest
import torch
import torch.nn.functional as F

from pix2pix_lit.errors import ConfigError
from pix2pix_lit.losses import GANLoss, feature_matching_loss, gradient_penalty


def test_vanilla_is_bce_of_sigmoid():
    x = torch.randn(2, 1, 5, 5)
    loss = GANLoss("vanilla")
    assert loss(x, True) == pytest.approx(F.binary_cross_entropy(torch.sigmoid(x), torch.ones_like(x)).item(), rel=1e-5)
    assert loss(x, False) == pytest.approx(F.binary_cross_entropy(torch.sigmoid(x), torch.zeros_like(x)).item(), rel=1e-5)


def test_lsgan_hinge_wgan_values():
    x = torch.tensor([[-2.0, 0.5, 3.0]])
    assert GANLoss("lsgan")(x, True).item() == pytest.approx(((x - 1) ** 2).mean().item())
    assert GANLoss("hinge")(x, True).item() == pytest.approx((3 + 0.5 + 0) / 3)
    assert GANLoss("hinge")(x, False).item() == pytest.approx((0 + 1.5 + 4) / 3)
    assert GANLoss("hinge")(x, True, for_discriminator=False).item() == pytest.approx(-0.5)
    assert GANLoss("wgangp")(x, False).item() == pytest.approx(0.5)
    # multi-scale: the mean over scales
    assert GANLoss("lsgan")([x, x * 0 + 1], True).item() == pytest.approx(((x - 1) ** 2).mean().item() / 2)
    with pytest.raises(ConfigError, match="vanilla, lsgan, hinge, wgangp"):
        GANLoss("wgan")


def test_gradient_penalty_of_linear_critic():
    # D(x) = sum(w * x): gradient w everywhere, so GP = (||w|| - 1)^2
    w = torch.full((1, 2, 3, 3), 0.5)
    critic = lambda x: (x * w).sum(dim=(1, 2, 3))  # noqa: E731
    gp = gradient_penalty(critic, torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)


def test_feature_matching_ignores_logits():
    real = [torch.zeros(1, 2), torch.zeros(1, 1)]
    fake = [torch.ones(1, 2), torch.full((1, 1), 9.0)]
    assert feature_matching_loss(real, fake).item() == pytest.approx(1.0)
    assert feature_matching_loss([real, real], [fake, real]).item() == pytest.approx(0.5)
