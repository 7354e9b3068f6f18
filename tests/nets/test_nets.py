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


def test_instance_norm_equals_torchs_and_keeps_channels_last():
    from pix2pix_lit.nets.norm import InstanceNorm2d

    torch.manual_seed(0)
    for shape, affine in (((1, 8, 12, 10), False), ((1, 8, 12, 10), True), ((3, 8, 12, 10), False)):
        ours, theirs = InstanceNorm2d(8, affine=affine), torch.nn.InstanceNorm2d(8, affine=affine)
        if affine:
            for net in (ours, theirs):
                net.weight.data = torch.linspace(0.5, 2, 8)
                net.bias.data = torch.linspace(-1, 1, 8)
        x = (torch.randn(*shape) * 3 + 1).to(memory_format=torch.channels_last)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(a), theirs(b)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        (ya * torch.arange(ya.numel()).view_as(ya)).sum().backward()
        (yb * torch.arange(yb.numel()).view_as(yb)).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
        if affine:
            torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-3)
        if shape[0] == 1:
            assert ya.is_contiguous(memory_format=torch.channels_last)  # torch's returns NCHW
    assert not list(InstanceNorm2d(8).state_dict())  # nothing new in checkpoints: the official layer's (empty) state
    traced = torch.jit.trace(InstanceNorm2d(8), torch.randn(1, 8, 6, 6))  # as export traces: at batch 1
    x = torch.randn(3, 8, 6, 6) * torch.arange(1, 4).view(3, 1, 1, 1)  # images of different spreads
    torch.testing.assert_close(traced(x), torch.nn.InstanceNorm2d(8)(x))


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


def test_pix2pixhd_generators_have_the_official_counts_and_layer_names():
    # counts of NVIDIA/pix2pixHD's define_G / define_D on Cityscapes' 36 input channels (35 labels + edges)
    g = define_G(36, 3, 64, "global", "instance", use_dropout=False)
    assert n_params(g) == 182_546_755 and g.size_multiple == 16
    local = define_G(36, 3, 32, "local", "instance", use_dropout=False)
    assert n_params(local) == 182_857_059 and local.size_multiple == 32
    assert n_params(define_D(39, 64, "multiscale", 3, "instance", num_D=2)) == 5_603_202
    # the official names: model (the global part), model1_1 (down), model1_2 (blocks, up, output)
    assert {k.split(".")[0] for k in local.state_dict()} == {"model", "model1_1", "model1_2"}
    # the local enhancer's global part is a global generator of twice the filters without its output layers, so a
    # trained global generator's weights fit it (pix2pixHD's coarse-to-fine training)
    wide = define_G(36, 3, 64, "global", "instance", use_dropout=False).state_dict()
    last = max(int(k.split(".")[1]) for k in wide)
    local.model.load_state_dict({k[len("model."):]: v for k, v in wide.items() if int(k.split(".")[1]) < last})


def test_pix2pixhd_generators_run_at_their_size_multiples():
    g = define_G(5, 3, 4, "local", "instance", use_dropout=False, n_downsample_global=2, n_blocks_global=1,
                 n_local_enhancers=2, n_blocks_local=1)
    assert g.size_multiple == 2**(2 + 2) and g.min_size == 2 * 4 * 4
    with torch.no_grad():
        y = g(torch.randn(2, 5, 32, 48))
    assert y.shape == (2, 3, 32, 48) and y.abs().max() <= 1.0
    with pytest.raises(ConfigError, match="n_local_enhancers >= 1"):
        define_G(5, 3, 4, "local", n_local_enhancers=0)


@pytest.mark.parametrize("netG", ["resnet_6blocks", "global", "local"])
def test_activation_checkpointing_gives_the_same_gradients(netG):
    from pix2pix_lit.nets.generators import checkpoint_residual_blocks

    extra = dict(n_downsample_global=2, n_blocks_global=2, n_blocks_local=1) if netG in ("global", "local") else {}
    torch.manual_seed(0)
    plain = define_G(3, 3, 4, netG, "instance", use_dropout=True, **extra)  # dropout: the RNG must be replayed
    checkpointed = define_G(3, 3, 4, netG, "instance", use_dropout=True, **extra)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpoint_residual_blocks(checkpointed) > 0
    x = torch.randn(2, 3, 32, 32)
    grads, forwards = [], []
    for net in (plain, checkpointed):
        calls = []
        block = next(m for m in net.modules() if type(m).__name__ == "ResnetBlock")
        conv = next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        net(x).square().mean().backward()
        hook.remove()
        grads.append({k: p.grad for k, p in net.named_parameters()})
        forwards.append(len(calls))
    # checkpointing ran: the block's activations were recomputed in the backward pass (a second forward)
    assert forwards == [1, 2], forwards
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-5, rtol=1e-5), k


def test_the_checkpoint_activations_option_and_its_refusal():
    from pix2pix_lit.models import Pix2Pix

    model = Pix2Pix(netG="resnet_6blocks", ngf=4, ndf=4, checkpoint_activations=True, fid=False, kid=False)
    blocks = [m for m in model.G.modules() if type(m).__name__ == "ResnetBlock"]
    assert len(blocks) == 6 and all(m.checkpointed is True for m in blocks)
    assert not any(m.checkpointed for m in Pix2Pix(netG="resnet_6blocks", ngf=4, ndf=4, fid=False, kid=False).G.modules()
                   if type(m).__name__ == "ResnetBlock")  # off by default
    with pytest.raises(ConfigError, match="has no residual blocks to checkpoint"):
        Pix2Pix(netG="unet_128", ngf=4, ndf=4, checkpoint_activations=True, fid=False, kid=False)
