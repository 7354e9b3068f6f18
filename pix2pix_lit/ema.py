"""The EMA generator: an exponential moving average of G's weights (as in mmagic, imaginaire, StyleGAN).

GAN generators oscillate from step to step; the average of their recent weights is steadier. It only
follows G: training itself is unchanged. Built on torch's ``AveragedModel``, with the decay warmed up.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(num_averaged: int, decay: float, warmup: bool = True) -> float:
    """The decay of the update that follows ``num_averaged`` earlier ones: ``min(decay, (1 + n) / (10 + n))``
    with warm-up, so the early averages do not keep the random initial weights for thousands of steps."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged)) if warmup else decay


class WarmedUpEMA:
    """``AveragedModel``'s averaging function (a class, not a closure: ``ddp_spawn`` pickles the model)."""

    def __init__(self, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup

    def __call__(self, ema_params, params, num_averaged) -> None:
        d = ema_decay_at(int(num_averaged), self.decay, self.warmup)
        torch._foreach_lerp_(list(ema_params), [p.to(e.dtype) for p, e in zip(params, ema_params)], 1.0 - d)


def make_ema(net: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """A frozen copy of ``net`` (``.module``) whose ``update_parameters(net)`` does, for every parameter,
    ``ema = d * ema + (1 - d) * net`` with ``d = ema_decay_at(updates so far)``; the first update copies ``net``.

    Buffers (batch-norm running statistics) are copied from ``net``, not averaged (``use_buffers=False``):
    they describe the activations of ``net``'s current weights. In the ``paper`` inference mode they are
    not used at all (each image is normalised with its own statistics).
    """

    ema = AveragedModel(net, multi_avg_fn=WarmedUpEMA(decay, warmup), use_buffers=False)
    ema.requires_grad_(False)
    return ema
