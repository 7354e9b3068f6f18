"""The non-finite guard of the GANs' training steps, kept on the device.

An update whose loss is NaN/Inf is skipped (the fused Adam leaves weights, moments and step count untouched where
its ``found_inf`` flag is 1); ``max_nonfinite_steps`` consecutive batches with such a loss stop the run. Every
flag stays a device tensor: a step never waits for the GPU to say whether it was finite. The counts come to the
host only when :meth:`NonFiniteGuard.check` is called — every step on a CPU (where reading them costs nothing),
at logging steps on a GPU — so a stop or a warning may come up to ``log_every_n_steps`` steps late there; the
skipped updates themselves are skipped at once either way.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from pix2pix_lit.errors import NonFiniteLossError

log = logging.getLogger(__name__)


class NonFiniteGuard:
    """Counts the batches with a non-finite loss (device tensors) and reports them when checked."""

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.every_step = True  # check at every step (a CPU run), or only when asked at logging steps (a GPU's)
        self._flags: list[tuple[str, torch.Tensor]] = []  # this batch's (loss name, 1.0 if it was non-finite)
        self._total: Optional[torch.Tensor] = None  # batches with a non-finite loss, all told
        self._run: Optional[torch.Tensor] = None  # ... in a row, up to the last batch
        self._names: dict[str, torch.Tensor] = {}  # per loss, since the last check
        self._reported = 0  # the total at the last check
        self._host_total = 0  # the total, as the host last saw it (or restored from a checkpoint)

    def record(self, name: str, skipped: torch.Tensor) -> None:
        self._flags.append((name, skipped))

    def end_batch(self) -> None:
        """Fold this batch's flags into the counts (no host synchronisation)."""
        flags, self._flags = self._flags, []
        if not flags:
            return
        bad = torch.stack([f.reshape(()) for _, f in flags]).amax()
        if self._total is None:
            self._total = torch.full((), float(self._host_total), device=bad.device)
            self._run = torch.zeros((), device=bad.device)
        self._total = self._total + bad
        self._run = (self._run + 1) * bad
        for name, flag in flags:
            self._names[name] = self._names[name] + flag if name in self._names else flag.reshape(())

    def check(self, step: int) -> None:
        """Bring the counts to the host: a warning for batches skipped since the last check, a NonFiniteLossError
        once ``max_consecutive`` batches in a row were."""
        if self._total is None:
            return
        total, run = int(self._total.item()), int(self._run.item())
        self._host_total = total
        new = total - self._reported
        names = [n for n, c in self._names.items() if c.item() > 0]
        if new:
            log.warning("non-finite %s at %d batch(es) up to step %d: their updates were skipped", "/".join(names),
                        new, step)
            self._reported = total
        self._names = {}
        if run >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{run} consecutive batches had NaN/Inf losses (last: {'/'.join(names)}); training stopped. "
                "Lower model.lr, try trainer.precision=32 or bf16-mixed, or check the data for corrupt images"
            )

    @property
    def total(self) -> int:
        """Batches with a non-finite loss so far (reads the device once)."""
        if self._total is not None:
            self._host_total = int(self._total.item())
        return self._host_total

    @total.setter
    def total(self, value: int) -> None:  # restored from a checkpoint
        self._host_total = self._reported = int(value)
        self._total = self._run = None
        self._names = {}

    def logged(self) -> torch.Tensor | float:
        """The total as a value to log (a device tensor once counting started)."""
        return self._total if self._total is not None else float(self._host_total)
