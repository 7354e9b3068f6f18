"""The EMA generator: an exponential moving average of G's weights (as in mmagic, imaginaire, StyleGAN).

GAN generators oscillate from step to step; the average of their recent weights is steadier. It only
follows G: training itself is unchanged. Built on torch's ``AveragedModel``, with the decay warmed up.
"""

from __future__ import annotations

from typing import Optional

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
        # torch's multi-tensor kernels (torch._foreach_*, as its optimizers and AveragedModel's own default use them):
        # no public call updates a list of tensors in one launch, and a GPU step at batch 1 feels one per tensor
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
    ema.register_load_state_dict_post_hook(_forget_host_count)
    return ema


def _forget_host_count(module: nn.Module, incompatible_keys) -> None:
    """A loaded state brings its own update count: :func:`ema_update` reads it again."""
    module._host_count = None


def ema_update(ema: AveragedModel, net: nn.Module, skipped: Optional[torch.Tensor] = None) -> None:
    """``ema.update_parameters(net)`` without waiting for the device, and not where ``skipped`` (a 0-dim device
    flag, 1.0 when the generator's update was skipped) is set.

    torch's ``update_parameters`` reads its update count from the device (``n_averaged == 0``) and our warm-up
    needs it as a number: both waits at every step of a GPU run. The count is mirrored on the host instead (read
    from the device once, after construction or a checkpoint load), and the buffer keeps counting for checkpoints.
    A skipped update still counts (the warm-up schedule moves on), but leaves the average where it was."""
    count = getattr(ema, "_host_count", None)
    if count is None:
        count = int(ema.n_averaged)
    averaging = ema.multi_avg_fn
    weight = 1.0 if count == 0 else 1.0 - ema_decay_at(count, averaging.decay, averaging.warmup)
    averaged = [p.detach() for p in ema.parameters()]
    current = [p.detach().to(a.dtype) for p, a in zip(net.parameters(), averaged)]
    if skipped is None:
        torch._foreach_lerp_(averaged, current, weight)
    else:  # averaged += weight * (1 - skipped) * (current - averaged), the flag staying on the device: one pass
        # over the weights (a sub, mul and add were three, and a temporary copy of G: ~0.17 s of a 256x256 U-Net's
        # CPU step, experiments/log/2026-12-06-0608-*)
        flagged = (1.0 - skipped) * weight
        torch._foreach_lerp_(averaged, current, [flagged.to(a.dtype) for a in averaged])
    for b_ema, b_net in zip(ema.module.buffers(), net.buffers()):  # use_buffers=False: kept in sync, not averaged
        b_ema.detach().copy_(b_net.detach())
    ema.n_averaged += 1
    ema._host_count = count + 1
