"""A training step waits for nothing: the non-finite guard on the device, logging only where it is kept, the
optimizers' toggling from cached lists (issue: on a GPU at batch 1 a step is bound by host work)."""

import logging

import lightning.pytorch as pl
import pytest
import torch

from pix2pix_lit import Pix2Pix, SyntheticPairedDataModule
from pix2pix_lit.errors import NonFiniteLossError
from pix2pix_lit.models.nonfinite import NonFiniteGuard

from conftest import TINY_MODEL, quiet_trainer


def data(tmp_path, n=16):
    return SyntheticPairedDataModule(str(tmp_path / "syn"), num_train=n, num_val=4, num_test=4, image_size=36,
                                     load_size=36, crop_size=32, batch_size=4, num_workers=0)


def test_the_guard_counts_on_the_device_and_reports_when_checked(caplog):
    guard = NonFiniteGuard(max_consecutive=3)
    flags = [0, 1, 0, 1, 1, 0]  # per batch: loss_D's flag (loss_G's is 0)
    with caplog.at_level(logging.WARNING):
        for step, bad in enumerate(flags, start=1):
            guard.record("loss_D", torch.tensor(float(bad)))
            guard.record("loss_G", torch.tensor(0.0))
            guard.end_batch()
        assert not caplog.records  # nothing read yet
        guard.check(step=6)
    assert guard.total == 3
    assert [r.getMessage() for r in caplog.records] == ["non-finite loss_D at 3 batch(es) up to step 6: their updates "
                                                        "were skipped"]
    for _ in range(3):  # three in a row: the next check stops the run
        guard.record("loss_G", torch.tensor(1.0))
        guard.end_batch()
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive batches had NaN/Inf losses \(last: loss_G\)"):
        guard.check(step=9)
    guard.total = 7  # restored from a checkpoint
    assert guard.total == 7 and guard.logged() == 7.0


class CountReads(pl.Callback):
    """How often a training step reads a tensor on the host (``Tensor.item``), outside the logging steps."""

    def __init__(self):
        self.reads, self._orig = 0, torch.Tensor.item

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        logging_step = (trainer.global_step + 1) % trainer.log_every_n_steps == 0
        counter = self

        def item(t):
            if not logging_step:
                counter.reads += 1
            return counter._orig(t)

        torch.Tensor.item = item

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.Tensor.item = self._orig


def test_a_step_reads_nothing_from_the_device_between_logging_steps(tmp_path):
    """As on a GPU (the guard checked at logging steps only): no ``.item()`` in the steps between, and the guard
    still skips, counts and stops."""
    torch.manual_seed(0)
    model = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.9})
    reads = CountReads()
    trainer = quiet_trainer(max_steps=8, limit_val_batches=0, log_every_n_steps=4, callbacks=[reads])
    model.setup = (lambda orig: lambda stage: (orig(stage), setattr(model.nonfinite, "every_step", False)))(model.setup)
    trainer.fit(model, data(tmp_path))
    assert model.nonfinite.every_step is False and reads.reads == 0
    assert trainer.global_step == 8 and model.nonfinite_total == 0
    # NaN losses from step 1 on: skipped at once, counted on the device, stopped at the first logging step
    nan = Pix2Pix(**{**TINY_MODEL, "max_nonfinite_steps": 2})
    before = {k: v.clone() for k, v in nan.named_parameters()}
    forward = nan.G.forward
    nan.G.forward = lambda x: forward(x) * float("nan")
    nan.setup = (lambda orig: lambda stage: (orig(stage), setattr(nan.nonfinite, "every_step", False)))(nan.setup)
    stopped = quiet_trainer(max_steps=8, limit_val_batches=0, log_every_n_steps=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive batches"):  # read at step 3, the first log
        stopped.fit(nan, data(tmp_path))
    assert stopped.global_step == 3 and nan.nonfinite_total == 3
    assert all(torch.equal(v, before[k]) for k, v in nan.named_parameters())  # no update from a NaN loss
    assert all(int(s["step"]) == 0 for o in stopped.optimizers for s in o.state.values())  # Adam's count kept


def test_steps_log_where_lightning_keeps_them(tmp_path):
    """Logged at the logging steps and at an epoch's last batch: the CSV has the rows it had, callback_metrics the
    last batch's values."""
    torch.manual_seed(0)
    model = Pix2Pix(**TINY_MODEL)
    calls = []
    log_dict = model.log_dict
    model.log_dict = lambda metrics, **kw: (calls.append(model.global_step), log_dict(metrics, **kw))
    csv = pl.loggers.CSVLogger(tmp_path / "csv")
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, log_every_n_steps=3, logger=csv)
    trainer.fit(model, data(tmp_path))  # 4 batches an epoch
    assert calls == [3, 4, 6, 8]  # steps 3 and 6 (the logger's), 4 and 8 (the epochs' last)
    rows = (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = sorted({int(r.split(",")[header.index("step")]) for r in rows[1:] if r.split(",")[header.index("train/loss_G")]})
    assert steps == [2, 5]  # Lightning's 0-based step of the batches it writes: the 3rd and the 6th
    assert {"train/loss_G", "train/loss_D", "train/nonfinite_skipped"} <= set(trainer.callback_metrics)


def test_toggling_freezes_the_other_optimizers_and_gives_back_their_state(tmp_path):
    torch.manual_seed(0)
    model = Pix2Pix(**TINY_MODEL)
    seen = {}

    class Look(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            opt_g, opt_d = pl_module.optimizers()
            next(pl_module.D.parameters()).requires_grad = False  # a user's frozen layer stays frozen
            with pl_module.toggled(opt_d):
                seen["D step"] = (any(p.requires_grad for p in pl_module.G.parameters()),
                                  sum(p.requires_grad for p in pl_module.D.parameters()))
            with pl_module.toggled(opt_g):
                seen["G step"] = (all(p.requires_grad for p in pl_module.G.parameters()),
                                  any(p.requires_grad for p in pl_module.D.parameters()))
            seen["after"] = [p.requires_grad for p in pl_module.D.parameters()]

    quiet_trainer(max_steps=1, limit_val_batches=0, callbacks=[Look()]).fit(model, data(tmp_path))
    n_d = len(list(model.D.parameters()))
    assert seen["D step"] == (False, n_d - 1) and seen["G step"] == (True, False)
    assert seen["after"] == [False] + [True] * (n_d - 1)
