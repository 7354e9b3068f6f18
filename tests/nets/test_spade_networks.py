"""SPADE's networks against the official NVlabs/SPADE code: parameter counts of the two published configurations,
the normalisation against a hand computation, the generator's sizes."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from pix2pix_lit.nets.spade import SPADE, ConvEncoder, SPADEGenerator, SPADEResnetBlock, kl_divergence, spade_discriminator


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("semantic_nc,upsampling,crop,ratio,g,d", [
    (35 + 1, "more", 512, 2.0, 93_048_003, 5_601_410),  # Cityscapes: 35 ids + instance edges, 512x256
    (150 + 1, "normal", 256, 1.0, 96_492_483, 5_836_930),  # ADE20K: 150 classes + don't-care, no instances
])
def test_official_parameter_counts(semantic_nc, upsampling, crop, ratio, g, d):
    """The counts the official code's networks have (instantiated from the NVlabs/SPADE sources with these options)."""
    assert n_params(SPADEGenerator(semantic_nc, 3, 64, upsampling, crop, ratio)) == g
    assert n_params(spade_discriminator(semantic_nc + 3, 64, 4, 2)) == d


def test_spade_norm_equals_a_hand_computation():
    """out = instance_norm(x) * (1 + gamma) + beta with gamma and beta from the label map: here gamma = 2 on class 0's
    pixels and beta = 3 on class 1's (3x3 convs with only their centre taps set), x normalised by hand."""
    spade = SPADE(channels=2, label_nc=2, norm="instance")
    with torch.no_grad():
        for conv in (spade.mlp_shared[0], spade.mlp_gamma, spade.mlp_beta):
            conv.weight.zero_()
            conv.bias.zero_()
        spade.mlp_shared[0].weight[0, 0, 1, 1] = 1.0  # hidden 0 = relu(class 0)
        spade.mlp_shared[0].weight[1, 1, 1, 1] = 1.0  # hidden 1 = relu(class 1)
        spade.mlp_gamma.weight[:, 0, 1, 1] = 2.0
        spade.mlp_beta.weight[:, 1, 1, 1] = 3.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 4, 4))
    labels = np.zeros((1, 2, 2, 2))
    labels[0, 0, :, 0] = 1  # left column class 0, right column class 1; upsampled (nearest) to 4x4
    labels[0, 1, :, 1] = 1
    out = spade(torch.tensor(x, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32)).detach().numpy()
    normed = (x - x.mean(axis=(2, 3), keepdims=True)) / np.sqrt(x.var(axis=(2, 3), keepdims=True) + 1e-5)
    class0 = np.repeat(np.repeat(labels[:, :1], 2, 2), 2, 3)
    class1 = np.repeat(np.repeat(labels[:, 1:], 2, 2), 2, 3)
    want = normed * (1 + 2 * class0) + 3 * class1
    assert np.allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("fin,fout", [(8, 8), (8, 4)], ids=["same-width", "learned-shortcut"])
def test_resnet_block_equals_its_layers_one_after_another(fin, fout):
    """The block runs its SPADEs' convolutions fused (one for the shared layers, one per gamma/beta pair): its
    output and every gradient equal the official composition of the layers, each SPADE on its own."""
    torch.manual_seed(0)
    block = SPADEResnetBlock(fin, fout, label_nc=3, norm="batch")
    x = torch.randn(2, fin, 8, 12)
    labels = nn.functional.one_hot(torch.randint(0, 3, (2, 4, 6)), 3).permute(0, 3, 1, 2).float()

    def layer_by_layer(x):
        act = lambda t: nn.functional.leaky_relu(t, 0.2)  # noqa: E731
        shortcut = block.conv_s(block.norm_s(x, labels)) if block.learned_shortcut else x
        return shortcut + block.conv_1(act(block.norm_1(block.conv_0(act(block.norm_0(x, labels))), labels)))

    results = []
    for forward in (lambda x: block(x, labels), layer_by_layer):
        torch.manual_seed(1)  # spectral norm's power iteration and batch statistics: the same start
        state = {k: v.clone() for k, v in block.state_dict().items()}
        block.zero_grad()
        out = forward(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}))
        block.load_state_dict(state)
    (fused, fused_grads), (plain, plain_grads) = results
    assert torch.allclose(fused, plain, atol=1e-5)
    assert fused_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        assert torch.allclose(fused_grads[name], plain_grads[name], atol=1e-5), name


def test_generator_sizes_and_grid():
    g = SPADEGenerator(6, 3, 8, "more", crop_size=128, aspect_ratio=2.0)
    assert g.size_multiple == 64 and (g.sw, g.sh) == (2, 1)
    assert g(torch.zeros(2, 6, 64, 128)).shape == (2, 3, 64, 128)  # the training size: the official grid
    assert g(torch.zeros(1, 6, 128, 128)).shape == (1, 3, 128, 128)  # another multiple of 64: the map sets the grid
    most = SPADEGenerator(6, 3, 8, "most", crop_size=256)
    assert most(torch.zeros(1, 6, 256, 256)).shape == (1, 3, 256, 256) and most.up_4.conv_1.out_channels == 4


def test_encoder_and_kl():
    """The VAE encoder's size (the official ConvEncoder's count at ngf 8) and the KL term by hand."""
    assert n_params(ConvEncoder(3, 8, 256, 256)) == 622_936
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, np.log(4.0)]])
    want = -0.5 * ((1 + 0 - 0.25 - 1) + (1 + np.log(4.0) - 1 - 4))
    assert kl_divergence(mu, logvar).item() == pytest.approx(want)
