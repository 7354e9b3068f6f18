"""The private parts of Lightning that pix2pix_lit.lightning_internals reaches: each still where it was looked up.

A Lightning release that moves one fails here, by name, rather than somewhere in a training run."""

import inspect

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy

from pix2pix_lit import lightning_internals as li

from conftest import quiet_trainer


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)
        self.automatic_optimization = False
        self.seen = {}

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.w(batch).sum()
        opt.zero_grad()
        self.manual_backward(loss)
        self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None)
        li.count_manual_step(self.trainer)
        self.seen.setdefault("done", []).append(li.batches_done_in_epoch(self.trainer, 4))

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_end(self):
        loop = self.trainer.fit_loop.epoch_loop.val_loop
        self.seen["fetcher_before"] = getattr(loop, "_data_fetcher", "missing")
        li.end_validation_workers(self.trainer)
        self.seen["fetcher_after"] = loop._data_fetcher

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.rand(8, 2), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.rand(4, 2), batch_size=2)


def test_lightning_version_and_the_strategy_step():
    assert lightning.__version__.split(".")[0] == li.CHECKED_WITH.split(".")[0]
    params = inspect.signature(Strategy.optimizer_step).parameters
    assert "optimizer" in params and "closure" in params


def test_ddp_constructor_kwargs():
    kwargs = li.ddp_constructor_kwargs(DDPStrategy(find_unused_parameters=False))
    assert kwargs == {"find_unused_parameters": False}
    assert li.ddp_constructor_kwargs(SingleDeviceStrategy(torch.device("cpu"))) is None


def test_allow_unused_parameters_sets_the_ddp_flag_once():
    strategy = DDPStrategy(find_unused_parameters=False)
    assert li.allow_unused_parameters(strategy) is True
    assert li.ddp_constructor_kwargs(strategy) == {"find_unused_parameters": True}
    assert li.allow_unused_parameters(strategy) is False  # already set: nothing to say
    assert li.allow_unused_parameters(DDPStrategy(find_unused_parameters=True)) is False
    assert li.allow_unused_parameters(SingleDeviceStrategy(torch.device("cpu"))) is False


def test_step_counting_validation_workers_and_batch_progress():
    model = _Tiny()
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=1)
    trainer.fit(model)
    assert trainer.global_step == 4  # one step per batch, counted by count_manual_step
    # inside the epoch: the batches before the current one (Lightning counts a batch as processed after its step);
    # during the epoch's last batch nothing: a checkpoint there ends the epoch
    assert model.seen["done"] == [0, 1, 2, 0]
    assert model.seen["fetcher_before"] not in (None, "missing") and model.seen["fetcher_after"] is None
    assert li.batches_done_in_epoch(trainer, 4) == 0  # at the epoch's end: nothing to leave out


class _Logs(_Tiny):
    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        self.seen.setdefault("logs", []).append(li.logs_this_step(self.trainer))

    def on_train_epoch_end(self):
        self.seen.setdefault("cut", []).append(li.epoch_cut_short(self.trainer))


def test_logging_steps_cut_epochs_and_settled_checkpoints():
    """logs_this_step (the logger connector's should_update_logs), epoch_cut_short and settle_epoch_counts (the fit
    loop's progress counters), each where it was looked up."""
    model = _Logs()
    trainer = quiet_trainer(max_steps=6, log_every_n_steps=3, limit_val_batches=0)
    trainer.fit(model)  # 4 batches an epoch: stopped at batch 2 of epoch 1
    assert model.seen["logs"] == [False, False, True, True, False, True]  # step 3; epoch 0's last; the run's last
    assert model.seen["cut"] == [False, True]  # epoch 0 ran its 4 batches; max_steps cut epoch 1 after 2
    checkpoint = trainer._checkpoint_connector.dump_checkpoint()
    assert checkpoint["epoch"] == 2  # what Lightning saves after max_steps cut epoch 1
    assert li.settle_epoch_counts(trainer, checkpoint) is True and checkpoint["epoch"] == 1
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert (progress["started"], progress["processed"], progress["completed"]) == (2, 1, 1)


def test_cluster_environment_and_the_hpc_checkpoint_path(tmp_path):
    from lightning.pytorch.plugins.environments import LightningEnvironment

    trainer = quiet_trainer(default_root_dir=str(tmp_path))
    assert isinstance(li.cluster_environment(trainer), LightningEnvironment)  # a plain run: Lightning's own
    assert li.hpc_checkpoint_path(trainer) == str(tmp_path / "hpc_ckpt_1.ckpt")  # the first one, in the run folder
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert li.hpc_checkpoint_path(trainer) == str(tmp_path / "hpc_ckpt_2.ckpt")
