import pytest
import torch

from pix2pix_lit.errors import ConfigError
from pix2pix_lit.nets import define_D, define_G
from pix2pix_lit.nets.norm import get_norm_layer, init_weights


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_official_parameter_counts():
    assert n_params(define_G(3, 3, netG="unet_256")) == 54_413_955
    assert n_params(define_G(3, 3, netG="unet_128")) == 41_828_995
    assert n_params(define_D(6, netD="basic")) == 2_768_705


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("netG", ["unet_128", "unet_256", "resnet_6blocks", "resnet_9blocks"])
def test_generator_shapes(netG, size):
    if netG == "unet_256" and size == 128:
        pytest.skip("unet_256 needs sides divisible by 256")
    g = define_G(3, 2, ngf=8, netG=netG).eval()
    with torch.no_grad():
        y = g(torch.randn(1, 3, size, size))
    assert y.shape == (1, 2, size, size)
    assert y.abs().max() <= 1.0  # tanh output


@pytest.mark.parametrize("size", [128, 256])
def test_discriminator_shapes(size):
    x = torch.randn(1, 6, size, size)
    # 70x70 PatchGAN: three stride-2 convs then two stride-1 4x4 convs
    side = size // 8 - 2
    assert define_D(6, ndf=8, netD="basic")(x).shape == (1, 1, side, side)
    assert define_D(6, ndf=8, netD="n_layers", n_layers_D=2)(x).shape == (1, 1, size // 4 - 2, size // 4 - 2)
    assert define_D(6, ndf=8, netD="pixel")(x).shape == (1, 1, size, size)
    outs = define_D(6, ndf=8, netD="multiscale", num_D=3)(x)
    assert [o.shape[-1] for o in outs] == [side, size // 16 - 2, size // 32 - 2]


def test_unet_any_depth_and_size_multiple():
    g = define_G(1, 3, ngf=8, netG="unet", num_downs=6)
    assert g.size_multiple == 64
    assert g(torch.randn(2, 1, 64, 128)).shape == (2, 3, 64, 128)


def test_norms_and_dropout():
    assert isinstance(get_norm_layer("instance")(4), torch.nn.InstanceNorm2d)
    assert isinstance(get_norm_layer("syncbatch")(4), torch.nn.SyncBatchNorm)
    assert isinstance(get_norm_layer("none")(4), torch.nn.Identity)
    with_dropout = define_G(3, 3, ngf=8, netG="unet_256", use_dropout=True)
    without = define_G(3, 3, ngf=8, netG="unet_256", use_dropout=False)
    n_drop = lambda m: sum(isinstance(x, torch.nn.Dropout) for x in m.modules())  # noqa: E731
    assert n_drop(with_dropout) == 3 and n_drop(without) == 0  # the official 3 innermost-but-one levels
    # instance norm has no affine shift: convs keep their bias, so the count grows
    assert n_params(define_D(6, netD="basic", norm="instance")) != n_params(define_D(6, netD="basic"))


@pytest.mark.parametrize("init_type", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_types(init_type):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3)
    init_weights(torch.nn.Sequential(conv), init_type, init_gain=0.02)
    std = conv.weight.std().item()
    expected = {"normal": 0.02, "xavier": 0.02 * (2 / (16 * 9 * 2)) ** 0.5, "kaiming": (2 / (16 * 9)) ** 0.5}
    if init_type in expected:
        assert std == pytest.approx(expected[init_type], rel=0.15)
    assert torch.all(conv.bias == 0)


def test_unknown_names_list_choices():
    with pytest.raises(ConfigError, match="unet_256.*resnet_9blocks"):
        define_G(3, 3, netG="unet_512")
    with pytest.raises(ConfigError, match="basic.*pixel"):
        define_D(6, netD="huge")
    with pytest.raises(ConfigError, match="batch.*instance"):
        define_G(3, 3, netG="unet_128", norm="group")
    with pytest.raises(ConfigError, match="num_downs"):
        define_G(3, 3, netG="unet")
