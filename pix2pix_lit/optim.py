"""Adam with torch's fused kernel, fed channels_last weights at full speed; the LR policies; the guarded step
(a non-finite loss skips the update) that every model's ``update`` runs.

The update is torch's own Adam (``torch.optim.Adam``, ``fused=True`` where torch has the kernel: CPU and
CUDA). Two things are added, both measured (``experiments/RESULTS.md``, the training-speed profiles):

- On the CPU torch's default is the per-tensor loop (it picks ``foreach`` only for CUDA tensors): for
  unet_256 + the basic D (57 M parameters) that loop took 104 ms of a 460 ms fp32 step, the fused kernel 25 ms.
- The fused kernel takes a slow path for tensors that are not contiguous, which is what channels_last
  convolution weights are (66 ms instead of 14 ms for unet_256's). Such a weight, its gradient and its two
  moment buffers all share the channels_last layout, so each is handed to the kernel as the contiguous view
  ``permute(0, 2, 3, 1)`` of the same memory: the same elementwise update, in place, without a copy.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from pix2pix_lit.errors import ConfigError

_FUSED_DEVICES = ("cpu", "cuda")


def _channels_last_view(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)  # contiguous for a dense channels_last tensor: same memory, same elements


def _is_dense_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class Adam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr, betas)`` with the fused kernel where the device has one."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float]) -> None:
        params = list(params)
        fused = all(isinstance(p, torch.Tensor) and p.device.type in _FUSED_DEVICES for p in params) or None
        super().__init__(params, lr=lr, betas=betas, fused=fused)

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps):
        has_complex = super()._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        if group["fused"]:
            for i in range(len(params)):
                tensors = [params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]]
                if all(_is_dense_channels_last(t) for t in tensors):  # else the kernel's own (slower) path
                    params[i], grads[i], exp_avgs[i], exp_avg_sqs[i] = map(_channels_last_view, tensors)
        return has_complex

    def load_state_dict(self, state_dict: dict) -> None:
        # load_state_dict takes every group option from the checkpoint, ``fused`` included: a checkpoint written
        # before the fused kernel (or on a device without it) would otherwise switch it off for the rest of the run.
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["fused"], group["foreach"] = self.defaults["fused"], self.defaults["foreach"]


# -- learning-rate policies (the official ``--lr_policy``), stepped once per epoch ---------------------------------
LR_POLICIES = ("linear", "linear_nvidia", "step", "plateau", "cosine")


def linear_decay(n_epochs: int, n_epochs_decay: int):
    """The official 'linear' rule: lr constant for ``n_epochs``, then linearly to ~0 over ``n_epochs_decay``."""

    def rule(epoch: int) -> float:
        # clamped at 0: the official formula turns negative if training runs past the schedule
        return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1))

    return rule


def linear_decay_nvidia(n_epochs: int, n_epochs_decay: int):
    """NVIDIA/pix2pixHD's and NVlabs/SPADE's linear rule: after each epoch e > n_epochs (counted from 1) the lr
    falls by lr/n_epochs_decay, so epoch k (from 0) trains at 1 - max(0, k - n_epochs)/n_epochs_decay: full for
    one epoch more than the 'linear' rule, and its last epoch at 1/n_epochs_decay instead of 1/(n_epochs_decay + 1)."""

    def rule(epoch: int) -> float:
        return max(0.0, 1.0 - max(0, epoch - n_epochs) / float(max(n_epochs_decay, 1)))

    return rule


def make_scheduler(opt: torch.optim.Optimizer, policy: str, n_epochs: int, n_epochs_decay: int, lr_decay_iters: int,
                   plateau_monitor: str):
    """The official schedulers: linear (constant then to 0), step (x0.1 every ``lr_decay_iters`` epochs), plateau
    (x0.2 when ``plateau_monitor`` stalls 5 epochs, in the metric's direction), cosine (over ``n_epochs``)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, ReduceLROnPlateau, StepLR

    from pix2pix_lit.modes import metric_mode

    if policy in ("linear", "linear_nvidia"):
        rule = linear_decay if policy == "linear" else linear_decay_nvidia
        return LambdaLR(opt, lr_lambda=rule(n_epochs, n_epochs_decay))
    if policy == "step":
        return StepLR(opt, step_size=lr_decay_iters, gamma=0.1)
    if policy == "plateau":
        return ReduceLROnPlateau(opt, mode=metric_mode(plateau_monitor), factor=0.2, threshold=0.01, patience=5)
    return CosineAnnealingLR(opt, T_max=n_epochs, eta_min=0)


def step_schedulers(schedulers: Any, metrics: dict[str, Any], monitor: str) -> None:
    """One epoch's step of each scheduler (a list or one, as ``LightningModule.lr_schedulers()`` gives them);
    ``plateau`` steps with ``metrics[monitor]``."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
        if isinstance(sched, ReduceLROnPlateau):
            if metrics.get(monitor) is None:
                raise ConfigError(f"lr_policy=plateau watches {monitor!r}, which was not logged; set "
                                  "model.plateau_monitor (e.g. train/loss_G) or enable validation")
            sched.step(metrics[monitor])
        else:
            sched.step()


def guarded_step(optimizer: Any, loss: torch.Tensor, backward: Callable[[torch.Tensor], None], strategy: Any,
                 world_size: int = 1, scaler: Optional[Any] = None) -> torch.Tensor:
    """zero_grad, ``backward(loss)``, step — the step skipped if ``loss`` is NaN/Inf on any of ``world_size``
    processes. Returns the skip flag: a 0-dim tensor on the loss's device, 1.0 where the update was skipped.

    Nothing here waits for the device: the flag goes to the fused Adam as its ``found_inf`` (its kernel leaves
    weights, moments and step count untouched where it is 1); under a GradScaler (``scaler``: 16-mixed) the NaN
    gradients of such a loss make the scaler's own ``found_inf`` skip it. Only an optimizer without the fused
    kernel needs the flag on the host. ``optimizer`` may be Lightning's wrapper (its ``.optimizer`` is stepped);
    ``strategy`` does the step (``strategy.optimizer_step``: Lightning's public step, through the precision plugin
    and DDP) and, with several processes, the sum of the flags (``strategy.reduce``, a collective with no wait).
    """
    skipped = (~torch.isfinite(loss.detach())).float().reshape(())
    if world_size > 1:  # all processes step or skip
        skipped = strategy.reduce(skipped, reduce_op="sum").clamp(max=1)
    optimizer.zero_grad(set_to_none=True)
    backward(loss)
    inner = getattr(optimizer, "optimizer", optimizer)
    if scaler is not None and getattr(inner, "_step_supports_amp_scaling", False):
        strategy.optimizer_step(inner, closure=_no_closure)  # the scaler's found_inf skips NaN
    elif scaler is None and inner.defaults.get("fused"):
        inner.found_inf = skipped
        try:
            strategy.optimizer_step(inner, closure=_no_closure)
        finally:
            del inner.found_inf
    elif skipped.item() == 0:  # an optimizer without the fused kernel: the host decides
        strategy.optimizer_step(inner, closure=_no_closure)
    return skipped


def _no_closure() -> None:
    return None


class OptimizerToggle:
    """``only(optimizer, optimizers)``: inside, only ``optimizer``'s parameters require gradients; the other
    optimizers' are frozen and given back their own setting on exit — what Lightning's ``toggle_optimizer`` does,
    from lists built once per set of optimizers instead of a dict of every parameter at every call (a GPU step at
    batch 1 feels it). The lists are rebuilt when the optimizers or their groups change (pix2pixHD's phase change)."""

    def __init__(self) -> None:
        self._key: tuple = ()
        self._others: dict[int, list[torch.nn.Parameter]] = {}

    @contextmanager
    def only(self, optimizer: torch.optim.Optimizer, optimizers: list[torch.optim.Optimizer]) -> Iterator[None]:
        frozen = self._others_of(optimizer, optimizers)
        before = [p.requires_grad for p in frozen]
        for p in frozen:
            p.requires_grad = False
        try:
            yield
        finally:
            for p, was in zip(frozen, before):
                p.requires_grad = was

    def _others_of(self, optimizer, optimizers) -> list[torch.nn.Parameter]:
        key = tuple((id(o), tuple(len(g["params"]) for g in o.param_groups)) for o in optimizers)
        if key != self._key:
            self._key, self._others = key, {}
        if id(optimizer) not in self._others:
            own = {id(p) for g in optimizer.param_groups for p in g["params"]}
            others: dict[int, torch.nn.Parameter] = {}
            for o in optimizers:
                for g in o.param_groups:
                    others.update({id(p): p for p in g["params"] if id(p) not in own})
            self._others[id(optimizer)] = list(others.values())
        return self._others[id(optimizer)]
