"""pix2pixHD's coarse-to-fine training of the local generator: its global part starts from a netG global checkpoint,
stays fixed (outside G's optimizer) for niter_fix_global epochs, then trains with the rest; exact resume on both
sides of the change."""

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from pix2pix_lit.data import SyntheticPairedDataModule
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models import Pix2Pix

from conftest import quiet_trainer, step_at_start

HD = dict(ngf=4, ndf=4, norm="instance", no_dropout=True, n_downsample_global=2, n_blocks_global=1, netD="multiscale",
          num_D=2, lambda_feat=10.0, fid=False, kid=False)
LOCAL = dict(HD, netG="local", n_blocks_local=1, n_epochs=2, n_epochs_decay=1, niter_fix_global=1)


def data(root):
    return SyntheticPairedDataModule(str(root), num_train=4, num_val=2, num_test=2, image_size=72, load_size=72,
                                     crop_size=64, batch_size=2, num_workers=0)


@pytest.fixture(scope="module")
def global_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("global")
    torch.manual_seed(0)
    model = Pix2Pix(**{**HD, "ngf": 8}, netG="global")  # the local generator's global part has 2 x its ngf
    ckpt = ModelCheckpoint(dirpath=tmp, save_last=True, save_top_k=0)
    quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[ckpt], limit_val_batches=0).fit(model, data(tmp / "d"))
    return tmp / "last.ckpt", {k: v.clone() for k, v in model.G.state_dict().items()}


class Record(Callback):
    """G's global part at the start and after each epoch; how many tensors G's optimizer holds in each epoch."""

    def __init__(self, stop_after=None):
        self.stop_after, self.weights, self.held = stop_after, {}, {}

    def on_train_start(self, trainer, pl_module):
        self.weights.setdefault("start", {k: v.clone() for k, v in pl_module.G.model.state_dict().items()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.held[trainer.current_epoch] = sum(len(g["params"]) for g in trainer.optimizers[0].param_groups)

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.G.model.state_dict().items()}
        if trainer.current_epoch == self.stop_after:
            trainer.should_stop = True  # an interruption of the same 3-epoch run


def train_local(tmp, global_path, stop_after=None, ckpt_path=None, seed=1):
    record, ckpt = Record(stop_after), ModelCheckpoint(dirpath=tmp / "ckpt", save_last=True, save_top_k=0)
    start = step_at_start()
    trainer = quiet_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[record, ckpt, start],
                            limit_val_batches=0, deterministic=True)
    torch.manual_seed(seed)  # a resumed fit is seeded otherwise: only its checkpoint can make it equal
    model = Pix2Pix(**LOCAL, init_global_from=str(global_path))
    trainer.fit(model, data(tmp / "d"), ckpt_path=ckpt_path)
    record.step_at_start = start.step
    return model, record


def test_the_global_part_starts_from_stage_one_stays_fixed_then_trains(tmp_path, global_ckpt):
    path, stage_one = global_ckpt
    model, record = train_local(tmp_path, path)
    kept = {k[len("model."):]: v for k, v in stage_one.items() if k[len("model."):] in record.weights["start"]}
    assert kept.keys() == record.weights["start"].keys()  # every layer but the global's output ones
    assert all(torch.equal(kept[k], v) for k, v in record.weights["start"].items())  # equal at the start
    assert all(torch.equal(kept[k], v) for k, v in record.weights[0].items())  # unchanged while fixed
    assert not all(torch.equal(kept[k], v) for k, v in record.weights[1].items())  # training after
    outermost = sum(1 for n, _ in model.G.named_parameters() if n.startswith("model1_"))
    assert record.held == {0: outermost, 1: len(list(model.G.parameters())), 2: len(list(model.G.parameters()))}


@pytest.mark.parametrize("stop_after", [0, 1], ids=["resumed-while-fixed", "resumed-after-the-change"])
def test_exact_resume_across_the_phase_change(tmp_path, global_ckpt, stop_after):
    path, _ = global_ckpt
    straight, _ = train_local(tmp_path / "a", path)
    train_local(tmp_path / "b", path, stop_after=stop_after)
    resumed, record = train_local(tmp_path / "b", path, ckpt_path="last", seed=2)
    assert record.step_at_start == 2 * (stop_after + 1)  # 2 batches an epoch: restored, not trained again
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_coarse_to_fine_refusals(tmp_path, global_ckpt):
    with pytest.raises(ConfigError, match="coarse-to-fine training of netG local"):
        Pix2Pix(**{**HD, "netG": "global"}, niter_fix_global=1)
    path, _ = global_ckpt
    wrong = Pix2Pix(**{**LOCAL, "ngf": 8})  # its global part has 16 filters, the checkpoint's 8
    with pytest.raises(ConfigError, match="does not fit this local generator's global part"):
        wrong.load_global_generator(str(path))
