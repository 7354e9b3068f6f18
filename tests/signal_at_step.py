"""A callback for tests/test_multinode.py: the process sends itself a signal in the middle of a given step (at that
step's first optimizer step, so between the discriminator's and the generator's updates), as a scheduler's signal
lands wherever the training is."""

import os
import signal

import lightning.pytorch as pl


class SignalAtStep(pl.Callback):
    def __init__(self, step: int, signum: int = int(signal.SIGUSR1)) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
