import pytest
import torch
import torch.nn.functional as F

from pix2pix_lit.errors import ConfigError
from pix2pix_lit.losses import GANLoss, feature_matching_loss, gradient_penalty, r1_penalty


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


def test_vgg_loss_takes_a_local_vgg19_file_and_checks_it(tmp_path):
    """Bring-your-own VGG-19: a randomly initialised torchvision VGG-19 saved to a file loads (as a whole state dict or
    its features), gives the pix2pixHD/SPADE weighted sum of L1 distances, and a wrong file is one line."""
    import hashlib

    from torchvision.models import vgg19  # the whole network, as a user would save it

    from pix2pix_lit.errors import ConfigError
    from pix2pix_lit.losses import VGGLoss

    # pix2pixHD's networks.py (Vgg19 and VGGLoss), written here from the official code: torchvision's vgg19 features
    # cut after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, and the L1 of each weighted 1/32, 1/16, 1/8, 1/4, 1
    official_slices, official_weights = (2, 7, 12, 21, 30), (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    torch.manual_seed(0)
    features = vgg19(weights=None).features[:30]
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    loss = VGGLoss(str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    want, a, b, start = 0.0, x, y, 0
    for weight, end in zip(official_weights, official_slices):  # by hand: the official slices of the same network
        a, b = features[start:end](a), features[start:end](b)
        want += weight * (a - b).abs().mean().item()
        start = end
    assert loss(x, y).item() == pytest.approx(want, rel=1e-5)
    assert loss(x, x).item() == 0.0 and not any(p.requires_grad for p in loss.parameters())
    with pytest.raises(ConfigError, match="has sha256 .*, not the expected"):
        VGGLoss(str(path), "0" * 64)
    torch.save({"0.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"is not VGG-19: features.0.weight is \(3, 3\), expected \(64, 3, 3, 3\)"):
        VGGLoss(str(tmp_path / "other.pth"))
    with pytest.raises(ConfigError, match="model.vgg_weights=.*nope.pth does not exist; it must be torchvision's"):
        VGGLoss(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a PyTorch state dict"):
        VGGLoss(str(tmp_path / "junk.pth"))


def test_r1_is_the_squared_input_gradient_norm_by_hand():
    """A 1x1-conv D on (source, image) pairs: d(sum D)/d(image pixel of channel c) = w_c at every pixel, so
    ||grad||^2 = H * W * sum_c w_c^2 over the image's channels for every sample; for two scales, the gradients add."""
    torch.manual_seed(0)
    D = torch.nn.Conv2d(6, 1, 1, bias=False)
    source, image = torch.rand(2, 3, 5, 4), torch.rand(2, 3, 5, 4).requires_grad_(True)
    out = D(torch.cat([source, image], 1))
    w = D.weight.detach().flatten()[3:]
    assert r1_penalty(out, image).item() == pytest.approx(5 * 4 * float((w ** 2).sum()), rel=1e-5)
    image2 = image.detach().clone().requires_grad_(True)
    twice = [D(torch.cat([source, image2], 1)), 2 * D(torch.cat([source, image2], 1))]
    assert r1_penalty(twice, image2).item() == pytest.approx(9 * 5 * 4 * float((w ** 2).sum()), rel=1e-5)


def test_pix2pix_adds_the_lazy_r1_only_on_its_steps_and_nothing_when_off(monkeypatch):
    from pix2pix_lit.models import Pix2Pix

    from conftest import TINY_MODEL

    torch.manual_seed(0)
    source, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    off = Pix2Pix(**TINY_MODEL, pool_size=0)
    on = Pix2Pix(**TINY_MODEL, pool_size=0, r1_gamma=10.0, r1_every=4)
    on.load_state_dict(off.state_dict())
    fake = off.G(source).detach()
    base, logs = off.discriminator_loss(source, target, fake)
    assert "loss_D_r1" not in logs
    loss, logs = on.discriminator_loss(source, target, fake)  # step 0: an R1 step
    # the penalty by hand: D's gradient w.r.t. the target half of the real pair
    real = torch.cat([source, target], 1).requires_grad_(True)
    grad = torch.autograd.grad(sum(o.sum() for o in [on.D(real)]), real)[0][:, 3:]
    by_hand = grad.square().sum((1, 2, 3)).mean()
    assert logs["loss_D_r1"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert (loss - base).item() == pytest.approx(10.0 / 2 * 4 * by_hand.item(), rel=1e-4)
    loss.backward()  # the penalty trains D: its graph reaches D's weights
    assert all(p.grad is not None for p in on.D.parameters())
    monkeypatch.setattr(Pix2Pix, "global_step", property(lambda self: 3))  # not a multiple of r1_every
    again, logs = on.discriminator_loss(source, target, fake)
    assert "loss_D_r1" not in logs and again.item() == pytest.approx(base.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="model.r1_every"):
        Pix2Pix(**TINY_MODEL, r1_gamma=1.0, r1_every=0)
