"""Normalisation layers and weight initialisation, as in the official pix2pix/CycleGAN code."""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import init

from pix2pix_lit.errors import check_choice

NormName = Literal["batch", "instance", "none", "syncbatch"]
InitName = Literal["normal", "xavier", "kaiming", "orthogonal", "pix2pixhd"]
NORMS = get_args(NormName)
INITS = get_args(InitName)


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same arguments, state and results) that keeps a channels_last input channels_last.

    For one image, instance norm is batch norm in training mode over that image without running statistics (each
    channel normalised by its own mean and biased variance over the pixels); torch's batch-norm kernel works in
    channels_last, while ``F.instance_norm`` copies the input to NCHW, so the next convolution copies it back. On a
    CPU under bf16 autocast the copies made a 256x256 U-Net's forward and backward ~25% slower than with batch norm
    (``experiments/norm_layout.py``). Batches of several images, 3-D inputs and running statistics take torch's path,
    and so does a trace (TorchScript, ONNX export): a graph traced at batch 1 must stay right for any batch.

    The batch-norm path also has the right gradient where torch's has not: on torch 2.14 (CPU) ``F.instance_norm``'s
    backward for one image is wrong when the gradient reaching it is laid out channels-last (CUT's patch sampling
    sends it so; ``tests/models/test_cut.py`` runs gradcheck on both paths' cases, ``experiments/cut_check.py``
    shows the official CUT code trained with the wrong one).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[0] == 1 and not self.track_running_stats and not torch.jit.is_tracing():
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


def get_norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """Return a factory ``f(num_features) -> nn.Module`` for ``norm``.

    batch/syncbatch keep learnable affine parameters and running statistics; instance norm has
    neither (the official choice); none is the identity.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "syncbatch":
        return functools.partial(nn.SyncBatchNorm, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda num_features: nn.Identity()


def uses_bias(norm_layer: Callable[[int], nn.Module]) -> bool:
    """Convs before a norm with its own affine shift need no bias; instance norm (no affine) does."""
    if isinstance(norm_layer, functools.partial):
        return issubclass(norm_layer.func, nn.InstanceNorm2d)
    return not isinstance(norm_layer, type) or issubclass(norm_layer, nn.InstanceNorm2d)


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights with ``init_type`` (scaled by ``init_gain``), their biases to 0, and norm
    weights ~ N(1, gain). ``pix2pixhd`` is NVIDIA/pix2pixHD's ``weights_init``: conv weights ~ N(0, gain) and the
    biases left at PyTorch's default (uniform in +-1/sqrt(fan_in)), not zeroed."""
    check_choice("init_type", init_type, INITS)

    def init_func(m: nn.Module) -> None:
        classname = m.__class__.__name__
        if hasattr(m, "weight") and m.weight is not None and ("Conv" in classname or "Linear" in classname):
            if init_type in ("normal", "pix2pixhd"):
                init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            else:
                init.orthogonal_(m.weight.data, gain=init_gain)
            if getattr(m, "bias", None) is not None and init_type != "pix2pixhd":
                init.constant_(m.bias.data, 0.0)
        elif "BatchNorm2d" in classname and m.weight is not None:
            init.normal_(m.weight.data, 1.0, init_gain)
            init.constant_(m.bias.data, 0.0)

    net.apply(init_func)
    return net


def per_image_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """What a (Sync)BatchNorm computes in the ``paper`` inference mode: each image normalised with its own
    statistics (as the official test's train-mode forward at batch size 1), then the BN's scale and shift.

    The one definition of it: :func:`batch_norm_per_image` (``generate``) and :class:`PerImageBatchNorm`
    (export) both call it. Running statistics are neither read nor written, nothing is synchronised
    across processes, and any batch gives each image the answer it gets alone."""
    return F.instance_norm(x, weight=bn.weight, bias=bn.bias, use_input_stats=True, eps=bn.eps)


class PerImageBatchNorm(nn.Module):
    """A BatchNorm replaced by :func:`per_image_batch_norm`, as a module (a traceable op for export)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight = nn.Parameter(bn.weight.detach().clone()) if bn.weight is not None else None
        self.bias = nn.Parameter(bn.bias.detach().clone()) if bn.bias is not None else None
        self.eps = bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_image_batch_norm(self, x)  # type: ignore[arg-type]  # has weight, bias and eps


@contextmanager
def batch_norm_per_image(net: nn.Module) -> Iterator[None]:
    """Inside: every (Sync)BatchNorm of ``net`` computes :func:`per_image_batch_norm`; outside it is as before."""
    patched = []
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.forward = functools.partial(per_image_batch_norm, m)
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # back to the class's forward


@contextmanager
def in_inference_mode(net: nn.Module, mode: str) -> Iterator[None]:
    """Inside: ``net`` in an inference mode (``modes.INFERENCE_MODES``); no parameter or buffer changes. ``eval``:
    the official ``--eval`` (dropout off, running statistics). ``paper``: the official test without it (dropout
    on, each image's own statistics, :func:`batch_norm_per_image`)."""
    was_training = net.training
    if mode == "eval":
        net.eval()
        context, buffers = nullcontext(), {}
    else:
        net.train()
        context = batch_norm_per_image(net)
        # a train-mode forward also steps what else keeps state (spectral norm's power iteration): put it back
        buffers = {name: b.clone() for name, b in net.named_buffers()}
    try:
        with context:
            yield
    finally:
        net.train(was_training)
        with torch.no_grad():
            for name, b in net.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


def replace_batch_norms(net: nn.Module) -> nn.Module:
    """``net`` with each (Sync)BatchNorm replaced by a :class:`PerImageBatchNorm` (in place)."""
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, PerImageBatchNorm(child))
    return net


def has_active_dropout(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in net.modules())


def plain_batch_norms(net: nn.Module) -> int:
    """Replace every SyncBatchNorm of ``net`` by a BatchNorm2d with the same state (in place); returns how many.

    torch synchronises batch norm only between GPU processes (a CPU one raises at its first training forward):
    CPU processes then normalise with their own batch's statistics, as each would alone. The parameters and
    buffers are the same, so checkpoints load either way."""
    replaced = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
                plain.load_state_dict(child.state_dict())
                plain.train(child.training)
                setattr(module, name, plain.to(next(iter(child.state_dict().values()), torch.empty(0)).device))
                replaced += 1
    return replaced
