"""CUT's networks (Park et al., ECCV 2020; taesungp/contrastive-unpaired-translation): the ResNet generator and the
PatchGAN with anti-aliased down- and upsampling (a binomial blur around each stride, Zhang 2019, "Making
convolutional networks shift-invariant again" — the official defaults ``no_antialias``/``no_antialias_up`` false),
and ``PatchSampleF``, the per-layer MLP heads of the PatchNCE loss. Layer order, names and buffers are the official
ones, so an official state dict loads as it is and ``nce_layers`` index the same layers."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_lit.nets.generators import ResnetBlock
from pix2pix_lit.nets.norm import InstanceNorm2d, uses_bias


def binomial_filter(size: int) -> torch.Tensor:
    """The normalised 2-D binomial blur of ``size`` taps (3: [1, 2, 1] x [1, 2, 1] / 16)."""
    row = torch.tensor([float(math.comb(size - 1, k)) for k in range(size)])
    filt = row[:, None] * row[None, :]
    return filt / filt.sum()


class Downsample(nn.Module):
    """Blur (3x3 binomial, reflect-padded), then keep every second pixel: a stride 2 that does not alias."""

    def __init__(self, channels: int, filt_size: int = 3) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d([(filt_size - 1) // 2, filt_size // 2, (filt_size - 1) // 2, filt_size // 2])
        self.register_buffer("filt", binomial_filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """Twice the size by a transposed blur (4x4 binomial x 4, replicate-padded), as the official ``Upsample``."""

    def __init__(self, channels: int, filt_size: int = 4) -> None:
        super().__init__()
        self.pad = nn.ReplicationPad2d(1)
        self.odd, self.pad_size = filt_size % 2 == 1, (filt_size - 1) // 2
        self.register_buffer("filt", (binomial_filter(filt_size) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv_transpose2d(self.pad(x), self.filt.to(x.dtype), stride=2, padding=1 + self.pad_size,
                                 groups=x.shape[1])[:, :, 1:, 1:]
        return out if self.odd else out[:, :, :-1, :-1]


class CUTGenerator(nn.Module):
    """The official CUT ``ResnetGenerator``: 7x7 conv, two downsamplings, ``n_blocks`` residual blocks, two
    upsamplings, 7x7 conv, tanh; with ``antialias`` each downsampling is a stride-1 conv, norm, ReLU and a
    :class:`Downsample` (without: a stride-2 conv, junyanz's), with ``antialias_up`` each upsampling an
    :class:`Upsample` and a conv (without: a transposed conv). :meth:`encode` gives the activations after the layers
    ``nce_layers`` index in ``model`` (CUT's 0, 4, 8, 12, 16: the padded input, both downsampling convs, blocks 1
    and 5)."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, norm_layer: Callable[[int], nn.Module] = InstanceNorm2d,
                 use_dropout: bool = False, n_blocks: int = 9, antialias: bool = True, antialias_up: bool = True) -> None:
        super().__init__()
        bias = uses_bias(norm_layer)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            if antialias:
                layers += [nn.Conv2d(c, 2 * c, 3, stride=1, padding=1, bias=bias), norm_layer(2 * c), nn.ReLU(True),
                           Downsample(2 * c)]
            else:
                layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_layer(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, "reflect", norm_layer, use_dropout, bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            if antialias_up:
                layers += [Upsample(c), nn.Conv2d(c, c // 2, 3, padding=1, bias=bias), norm_layer(c // 2), nn.ReLU(True)]
            else:
                layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                           norm_layer(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.size_multiple = 4  # two downsamplings by 2
        self.min_size = 8  # the blocks' reflection padding needs 2 pixels at a quarter of the size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def encode(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The activations after each layer in ``layers`` (ascending), running only as far as the last."""
        feats, wanted = [], set(layers)
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in wanted:
                feats.append(x)
            if i == layers[-1]:
                break
        return feats


class CUTDiscriminator(nn.Module):
    """The official CUT ``NLayerDiscriminator`` (70x70 PatchGAN at ``n_layers`` 3); with ``antialias`` each stride-2
    conv is a stride-1 conv followed by a :class:`Downsample` (the same parameters as junyanz's)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3,
                 norm_layer: Callable[[int], nn.Module] = InstanceNorm2d, antialias: bool = True) -> None:
        super().__init__()
        bias = uses_bias(norm_layer)
        stride = 1 if antialias else 2
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=stride, padding=1), nn.LeakyReLU(0.2, True)]
        seq += [Downsample(ndf)] if antialias else []
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias), norm_layer(ndf * mult),
                    nn.LeakyReLU(0.2, True)]
            seq += [Downsample(ndf * mult)] if antialias else []
        prev, mult = mult, min(2**n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=bias), norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchSampleF(nn.Module):
    """CUT's ``netF: mlp_sample``: from each layer's activations, the same ``num_patches`` locations for every image
    of the batch, each through that layer's two-layer MLP (``mlp_k``: Linear, ReLU, Linear to ``nc``), then
    L2-normalised. The official code builds the heads at the first batch from the activations' channels; here they
    are built with the model from ``channels`` (the same shapes and initialisation, and in every checkpoint)."""

    def __init__(self, channels: Sequence[int], nc: int = 256) -> None:
        super().__init__()
        for k, c in enumerate(channels):
            setattr(self, f"mlp_{k}", nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)))
        self.num_layers = len(channels)

    def forward(self, feats: Sequence[torch.Tensor], num_patches: int,
                patch_ids: Optional[Sequence[torch.Tensor]] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer: (batch x patches, nc) normalised embeddings and the locations drawn (or ``patch_ids``)."""
        out, ids = [], []
        for k, feat in enumerate(feats):
            flat = feat.permute(0, 2, 3, 1).flatten(1, 2)  # (B, H*W, C)
            if patch_ids is not None:
                idx = patch_ids[k]
            else:  # drawn on the host (torch's generator: a resume restores it), the same locations for each image
                idx = torch.randperm(flat.shape[1])[: min(num_patches, flat.shape[1])].to(feat.device)
            x = getattr(self, f"mlp_{k}")(flat[:, idx, :].flatten(0, 1))
            # the official l2 normalisation; vector_norm's gradient at a zero vector is 0 where sqrt(sum(x^2))'s is
            # inf (NaN weights: an MLP head whose ReLU layer is all off for a patch gives exactly 0)
            out.append(x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-7))
            ids.append(idx)
        return out, ids


def patch_nce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int, tau: float = 0.07,
                   negatives_from_batch: bool = False) -> torch.Tensor:
    """CUT's PatchNCE (per patch, not averaged): each query patch of the output against its own input patch (the
    positive) and the other sampled patches of the same image (negatives; of the whole batch with
    ``negatives_from_batch``), cross-entropy over the similarities / ``tau``. ``feat_k`` is not differentiated."""
    feat_k = feat_k.detach().float()
    feat_q = feat_q.float()
    n, dim = feat_q.shape
    l_pos = (feat_q * feat_k).sum(1, keepdim=True)
    groups = 1 if negatives_from_batch else batch_size
    q, k = feat_q.view(groups, -1, dim), feat_k.view(groups, -1, dim)
    l_neg = torch.bmm(q, k.transpose(2, 1))
    eye = torch.eye(q.shape[1], device=q.device, dtype=torch.bool)[None]
    l_neg = l_neg.masked_fill(eye, -10.0).view(-1, q.shape[1])  # a patch is not its own negative: exp(-10) ~ 0
    logits = torch.cat([l_pos, l_neg], 1) / tau
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device), reduction="none")
