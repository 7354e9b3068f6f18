"""pix2pixHD's coarse-to-fine training of the local generator: its global part starts from a netG global checkpoint,
stays fixed (outside G's optimizer) for niter_fix_global epochs, then trains with the rest; exact resume on both
sides of the change."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from pix2pix_lit.data import SyntheticPairedDataModule
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models import Pix2Pix

from conftest import quiet_trainer, same_kernels, step_at_start

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
    # in a fit, a wrong or missing first stage stops it before any logger writes (the model's prepare_data)
    from lightning.pytorch.loggers import CSVLogger

    missing = (str(tmp_path / "nope.ckpt"), "init_global_from .*nope.ckpt does not exist: train the first stage")
    for init, message in ((str(path), "does not fit"), missing):
        model = Pix2Pix(**{**LOCAL, "ngf": 8, "init_global_from": init})
        trainer = quiet_trainer(max_epochs=1, logger=CSVLogger(tmp_path / "logs"), limit_val_batches=0)
        with pytest.raises(Exception, match=message):
            trainer.fit(model, data(tmp_path / "d"))
        assert not (tmp_path / "logs").exists()  # no hparams.yaml, no metrics: the run never started


# -- the recipe as NVIDIA/pix2pixHD trains it ---------------------------------------------------------------------
# ``experiments/pix2pixhd_check.py --official <checkout> --steps 3 --fixture ...`` wrote this file from the official
# code: small networks' initial weights, a batch, and the official train.py loop's losses and weights after 3 steps
OFFICIAL_STEPS = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "pix2pixhd_steps.pt"
RECIPE = dict(input_nc=3, output_nc=3, norm="instance", no_dropout=True, netD="multiscale", gan_mode="lsgan",
              gan_scales="sum", padding_D=2, step_order="pix2pixhd", init_type="pix2pixhd", lambda_feat=10.0,
              lambda_L1=0.0, fid=False, kid=False, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1,
              n_blocks_local=1, ndf=4, n_layers_D=2, lr_policy="linear_nvidia")
STAGE = {1: dict(netG="global", ngf=8, num_D=2), 2: dict(netG="local", ngf=4, num_D=3, niter_fix_global=10)}


def official_d_to_ours(theirs: dict, ours: dict, num_D: int) -> dict:
    """The official ``scale{num_D-1-i}_layer{j}.0.*`` tensors under our names (scale i, its j-th convolution)."""
    out = {}
    for i in range(num_D):
        convs = sorted({int(k.split(".")[3]) for k in ours if k.startswith(f"discriminators.{i}.")})
        for j, idx in enumerate(convs):
            for p in ("weight", "bias"):
                out[f"discriminators.{i}.model.{idx}.{p}"] = theirs[f"scale{num_D - 1 - i}_layer{j}.0.{p}"]
    return out


@pytest.mark.parametrize("stage", [1, 2])
def test_three_steps_equal_the_official_train_loop(stage):
    """Losses and weights of 3 steps from the official code's starting point: the sum over D's scales, padding 2,
    all losses on the batch's D then G's and D's updates, the 4/(n_layers_D+1) feature-matching weight (n_layers_D 2
    here), stage 2's fixed global part. (The biases an instance norm cancels are left out: their gradient is 0 up to
    rounding, which Adam scales to +-lr a step in either code.)"""
    from torch.utils.data import DataLoader

    ref = torch.load(OFFICIAL_STEPS, weights_only=True)["stages"][stage]
    model = Pix2Pix(**RECIPE, **STAGE[stage])
    model.G.load_state_dict(ref["G0"])
    model.D.load_state_dict(ref["D0"])
    seen = []
    g_loss, d_loss = model.generator_loss, model.discriminator_loss
    model.generator_loss = lambda *a: (lambda r: (seen.append(dict(r[1])), r)[1])(g_loss(*a))
    model.discriminator_loss = lambda *a: (lambda r: (seen[-1].update(r[1]), r)[1])(d_loss(*a))
    label, image = ref["batch"]
    quiet_trainer(max_steps=3, limit_val_batches=0).fit(
        model, DataLoader([{"source": label[0], "target": image[0], "name": "x"}] * 3, batch_size=1))
    for official, ours in zip(ref["losses"], seen, strict=True):
        for k, v in official.items():
            assert float(ours[k].detach()) == pytest.approx(v, abs=1e-5), k
    theirs_d = official_d_to_ours(ref["D"], model.D.state_dict(), STAGE[stage]["num_D"])
    exact = same_kernels(torch.load(OFFICIAL_STEPS, weights_only=True)["kernels"])
    for net, theirs in (("G", ref["G"]), ("D", theirs_d)):
        for k, v in getattr(model, net).state_dict().items():
            if not k.endswith("weight"):
                continue
            if exact:
                torch.testing.assert_close(v, theirs[k], atol=1e-6, rtol=0, msg=f"{net}.{k}")
            else:  # other kernels: the 3 updates equal the official ones up to rounding (AVX2: <= 0.4 %; a wrong
                # gradient or step gives O(1))
                start = ref[f"{net}0"][k]
                assert (v - theirs[k]).norm() <= 0.02 * (theirs[k] - start).norm(), f"{net}.{k}"  # fixed: 0 <= 0


def test_gan_loss_summed_over_scales_is_the_official_value():
    """pix2pixHD's GANLoss (lsgan) on three fixed scales' predictions: 5.334504 (real), 2.115016 (fake), from the
    official networks.GANLoss; averaged (SPADE, our default) it is a third of that."""
    from pix2pix_lit.losses import GANLoss

    torch.manual_seed(0)
    preds = [torch.randn(1, 1, s, 2 * s) for s in (8, 4, 2)]
    assert GANLoss("lsgan", scales="sum")(preds, True).item() == pytest.approx(5.334504, abs=1e-5)
    assert GANLoss("lsgan", scales="sum")(preds, False).item() == pytest.approx(2.115016, abs=1e-5)
    assert GANLoss("lsgan")(preds, True).item() == pytest.approx(5.334504 / 3, abs=1e-5)


def test_padding_2_gives_the_official_layer_maps():
    """The official 3-scale NLayerDiscriminator (padding ceil(3/2) = 2) on a 256x512 input: its layers' maps."""
    from pix2pix_lit.nets import define_D

    official = [[(129, 257), (65, 129), (33, 65), (34, 66), (35, 67)],
                [(65, 129), (33, 65), (17, 33), (18, 34), (19, 35)],
                [(33, 65), (17, 33), (9, 17), (10, 18), (11, 19)]]
    with torch.no_grad():
        for padding, expected in ((2, official), (1, None)):
            feats = define_D(39, 8, "multiscale", 3, "instance", num_D=3, padding=padding).features(
                torch.zeros(1, 39, 256, 512))
            shapes = [[tuple(t.shape[2:]) for t in scale] for scale in feats]
            assert (shapes == expected) if expected else shapes[0][0] == (128, 256)  # pix2pix's padding 1


def test_second_stage_d_takes_the_first_stages_scales_at_their_resolutions(tmp_path, global_ckpt):
    """The official --load_pretrain loads stage 1's ``scale{i}`` (which sees level num_D-1-i) by name into stage 2's
    3-scale D: our scale k (level k of stage 1, half stage 2's resolution) becomes scale k + 1; scale 0 is new.
    (``experiments/pix2pixhd_check.py --steps`` checks this against the official loading tensor by tensor.)"""
    path, _ = global_ckpt
    stage_one = torch.load(path, weights_only=True)["state_dict"]
    torch.manual_seed(0)
    model = Pix2Pix(**{**LOCAL, "num_D": 3})
    fresh = {k: v.clone() for k, v in model.D.discriminators[0].state_dict().items()}
    model.load_global_generator(str(path))
    for k in (0, 1):
        for name, v in model.D.discriminators[k + 1].state_dict().items():
            assert torch.equal(v, stage_one[f"D.discriminators.{k}.{name}"]), (k, name)
    assert all(torch.equal(v, fresh[n]) for n, v in model.D.discriminators[0].state_dict().items())
    with pytest.raises(ConfigError, match="more than this num_D=1"):
        Pix2Pix(**{**LOCAL, "num_D": 1}).load_global_generator(str(path))


def test_pix2pixhd_init_keeps_pytorchs_biases():
    """NVIDIA/pix2pixHD's weights_init draws conv weights ~ N(0, 0.02) and leaves biases at PyTorch's default
    (uniform in +-1/sqrt(fan_in)); junyanz's zeroes them."""
    from pix2pix_lit.nets import define_D

    torch.manual_seed(0)
    hd = define_D(6, 16, "basic", norm="instance", init_type="pix2pixhd")
    first = hd.model[0]
    bound = 1 / (first.in_channels * 16) ** 0.5
    assert first.bias.abs().max() <= bound and first.bias.abs().min() > 0
    assert first.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert define_D(6, 16, "basic", norm="instance").model[0].bias.abs().max() == 0


def official_lrs(lr: float, niter: int, niter_decay: int) -> list[float]:
    """The learning rate of each epoch as NVIDIA/pix2pixHD's train.py (and NVlabs/SPADE's) sets it: after each epoch
    e (counted from 1) with e > niter, ``update_learning_rate`` takes lr / niter_decay off."""
    lrs, current = [], lr
    for epoch in range(1, niter + niter_decay + 1):
        lrs.append(current)
        if epoch > niter:
            current -= lr / niter_decay
    return lrs


@pytest.mark.parametrize("niter,niter_decay", [(3, 4), (100, 100)])
def test_linear_nvidia_is_the_official_learning_rate_of_every_epoch(niter, niter_decay):
    from pix2pix_lit.optim import make_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-4)
    sched = make_scheduler(opt, "linear_nvidia", niter, niter_decay, 50, "val/fid")
    ours = []
    for _ in range(niter + niter_decay):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours == pytest.approx(official_lrs(2e-4, niter, niter_decay), abs=1e-12)
