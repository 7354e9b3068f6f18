"""Normalisation layers and weight initialisation, as in the official pix2pix/CycleGAN code."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator, Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import init

from pix2pix_lit.errors import check_choice

NormName = Literal["batch", "instance", "none", "syncbatch"]
InitName = Literal["normal", "xavier", "kaiming", "orthogonal"]
NORMS = get_args(NormName)
INITS = get_args(InitName)


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
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda num_features: nn.Identity()


def uses_bias(norm_layer: Callable[[int], nn.Module]) -> bool:
    """Convs before a norm with its own affine shift need no bias; instance norm (no affine) does."""
    if isinstance(norm_layer, functools.partial):
        return norm_layer.func is nn.InstanceNorm2d
    return norm_layer is nn.InstanceNorm2d or not isinstance(norm_layer, type)


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights with ``init_type`` (scaled by ``init_gain``) and norm weights ~ N(1, gain)."""
    check_choice("init_type", init_type, INITS)

    def init_func(m: nn.Module) -> None:
        classname = m.__class__.__name__
        if hasattr(m, "weight") and m.weight is not None and ("Conv" in classname or "Linear" in classname):
            if init_type == "normal":
                init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            else:
                init.orthogonal_(m.weight.data, gain=init_gain)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias.data, 0.0)
        elif "BatchNorm2d" in classname and m.weight is not None:
            init.normal_(m.weight.data, 1.0, init_gain)
            init.constant_(m.bias.data, 0.0)

    net.apply(init_func)
    return net


def _own_statistics_forward(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    # batch statistics of this call only: no running buffers read or written, no cross-process sync
    return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)


@contextmanager
def batch_norm_own_statistics(net: nn.Module) -> Iterator[None]:
    """Inside: every (Sync)BatchNorm of ``net`` normalises with the statistics of the batch it is given.

    Its running statistics are neither used nor updated, and SyncBatchNorm does not talk to other
    processes: what the official code's train-mode test does, without its side effects.
    """
    patched = []
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.forward = functools.partial(_own_statistics_forward, m)
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # back to the class's forward
