"""DiffAugment of D's pairs (nets/diffaugment.py, model.diff_augment): each policy against a hand computation, the
draw shared by a step's real and fake pairs, gradients through it, and nothing when off."""

import pytest
import torch

from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models import Pix2Pix
from pix2pix_lit.nets.diffaugment import DiffAugment, apply, parse_policy, sample

from conftest import TINY_MODEL


def test_translation_moves_every_channel_of_a_pair_by_the_drawn_shift_with_zeros_behind():
    x = torch.zeros(2, 6, 16, 16)
    x[0, :, 5, 7] = 1.0
    x[1, :, 0, 0] = 1.0
    draw = {"dy": torch.tensor([2, -1]), "dx": torch.tensor([-3, 0])}
    y = apply(x, draw, image_channels=3)
    assert y[0, :, 7, 4].tolist() == [1.0] * 6 and y[0].sum() == 6  # moved 2 down, 3 left, source and image alike
    assert y[1].sum() == 0  # shifted up out of the image: gone, zeros in


def test_cutout_zeroes_a_square_of_half_each_side_and_nothing_else():
    x = torch.ones(1, 4, 8, 12)
    y = apply(x, {"cy": torch.tensor([4]), "cx": torch.tensor([6])}, image_channels=2)
    cut = (y[0, 0] == 0)
    rows, cols = cut.nonzero(as_tuple=True)
    assert cut.sum() == 4 * 6 and (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 5, 3, 8)
    assert torch.equal(y[0, 0], y[0, 3])  # every channel of the pair


def test_color_changes_only_the_image_half_by_the_drawn_amounts():
    torch.manual_seed(0)
    x = torch.rand(1, 6, 4, 4) * 2 - 1
    plain = {"brightness": torch.full((1, 1, 1, 1), 0.25), "saturation": torch.ones(1, 1, 1, 1),
             "contrast": torch.ones(1, 1, 1, 1)}
    y = apply(x, plain, image_channels=3)
    assert torch.equal(y[:, :3], x[:, :3]) and torch.allclose(y[:, 3:], x[:, 3:] + 0.25)
    grey = apply(x, {**plain, "brightness": torch.zeros(1, 1, 1, 1), "saturation": torch.zeros(1, 1, 1, 1)}, 3)
    assert torch.allclose(grey[:, 3:], x[:, 3:].mean(1, keepdim=True).expand(-1, 3, -1, -1))  # no colour left


def test_one_draw_treats_two_pairs_alike_and_gradients_flow_through():
    torch.manual_seed(0)
    real, fake = torch.rand(3, 6, 16, 16), torch.rand(3, 6, 16, 16, requires_grad=True)
    draw = sample(parse_policy("translation,cutout"), 3, 16, 16, real.device)
    # translation and cutout are the same linear map of each pair: the draw cannot tell real from fake
    assert torch.allclose(apply(real, draw, 3) - apply(fake, draw, 3), apply(real - fake, draw, 3))
    apply(fake, draw, 3).sum().backward()
    kept = apply(torch.ones_like(real), draw, 3)  # where an input pixel reaches the output
    assert fake.grad.sum() == kept.sum() and fake.grad.sum() > 0


def test_pix2pix_shows_d_the_real_and_fake_pairs_augmented_with_one_draw():
    torch.manual_seed(0)
    model = Pix2Pix(**TINY_MODEL, diff_augment="translation,cutout")
    seen = []
    model.D.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    source, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    fake = model.G(source)
    model.discriminator_loss(source, target, fake)
    fake_seen, real_seen = seen  # the official order: fake pairs first
    assert torch.equal(fake_seen[:, :3], real_seen[:, :3])  # the same source, moved and cut the same way
    assert not torch.equal(real_seen[:, :3], source)  # and augmented
    seen.clear()
    off = Pix2Pix(**TINY_MODEL)
    off.load_state_dict(model.state_dict())
    off.D.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    off.discriminator_loss(source, target, fake)
    assert torch.equal(seen[1], torch.cat([source, target], 1))  # off (the default): D sees the pair as it is
    assert not DiffAugment("", 3)


def test_an_unknown_policy_is_one_line():
    with pytest.raises(ConfigError, match=r"model.diff_augment='color,flip': flip is not a policy; use a "
                                          r"comma-separated choice of color, translation, cutout"):
        Pix2Pix(**TINY_MODEL, diff_augment="color,flip")
