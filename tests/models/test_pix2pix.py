"""Training behaviour, in process: steps, resume, inference modes, non-finite losses, predict."""

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from pix2pix_lit import Pix2Pix, SyntheticPairedDataModule
from pix2pix_lit.callbacks import PredictionWriter
from pix2pix_lit.data import PairedDataModule
from pix2pix_lit.errors import ConfigError, NonFiniteLossError

from conftest import TINY_MODEL, noise_image, quiet_trainer, step_at_start


def synthetic(tmp_path, **kw):
    args = dict(num_train=16, num_val=4, num_test=4, image_size=36, load_size=36, crop_size=32, batch_size=4,
                num_workers=0)
    args.update(kw)
    return SyntheticPairedDataModule(str(tmp_path / "syn"), **args)


def synthetic64(tmp_path, **kw):
    """64x64 crops, for U-Nets with 6 levels (the first depth with a dropout layer)."""
    return synthetic(tmp_path / "64", image_size=68, load_size=68, crop_size=64, **kw)


def val_l1(model, dm) -> float:
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    return (model.generate(batch["source"]) - batch["target"]).abs().mean().item()


def test_global_step_counts_batches_and_resume_continues(tmp_path):
    torch.manual_seed(0)
    dm = synthetic(tmp_path)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[ckpt], limit_val_batches=0)
    model = Pix2Pix(**TINY_MODEL)
    trainer.fit(model, dm)
    assert trainer.global_step == 4  # 16 samples / batch 4: one step per batch (D and G update each)
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 4
    start = step_at_start()
    trainer2 = quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[ckpt, start], limit_val_batches=0)
    trainer2.fit(Pix2Pix(**TINY_MODEL), synthetic(tmp_path), ckpt_path="last")
    assert start.step == 4 and trainer2.global_step == 8 and trainer2.current_epoch == 2
    limited = quiet_trainer(max_steps=3, limit_val_batches=0)
    limited.fit(Pix2Pix(**TINY_MODEL), synthetic(tmp_path))
    assert limited.global_step == 3 and limited.fit_loop.epoch_loop.batch_progress.total.completed == 3


def _train(tmp_path, dm_dir, epochs, ckpt_path=None, workers=0, seed=0, **extra):
    ckpt, start = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0), step_at_start()
    trainer = quiet_trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[ckpt, start],
                            limit_val_batches=0, deterministic=True)
    trainer.step_at_start = start
    torch.manual_seed(seed)  # a resumed fit is seeded otherwise: only its checkpoint can make it equal
    model = Pix2Pix(**{**TINY_MODEL, "num_downs": 6, "lr_policy": "linear", "n_epochs": 1, "n_epochs_decay": 2, **extra})
    trainer.fit(model, synthetic64(dm_dir, num_workers=workers), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "ema+spectral_norm_D"])
def test_exact_resume_equals_uninterrupted_run(tmp_path, ema):
    # with EMA also a spectrally normalised D: its power-iteration vectors resume too
    extra = {"ema_decay": ema, "spectral_norm_D": ema is not None}
    straight, t1 = _train(tmp_path / "a", tmp_path, 2, **extra)
    _train(tmp_path / "b", tmp_path, 1, **extra)
    resumed, t2 = _train(tmp_path / "b", tmp_path, 2, ckpt_path="last", seed=1, **extra)
    assert t2.step_at_start.step == 4  # restored from the epoch-1 checkpoint, not trained again
    assert any(k.endswith("weight_u") for k in straight.state_dict()) == (ema is not None)
    assert any(isinstance(m, torch.nn.Dropout) for m in straight.G.modules())  # dropout draws from the RNG
    assert straight.state_dict().keys() == resumed.state_dict().keys()
    assert any(k.startswith("G_ema.module.") for k in straight.state_dict()) == (ema is not None)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    for oa, ob in zip(t1.optimizers, t2.optimizers):
        sa, sb = oa.state_dict(), ob.state_dict()
        assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
        for pa, pb in zip(sa["state"].values(), sb["state"].values()):
            assert all(torch.equal(pa[k], pb[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    lrs = [s.scheduler.get_last_lr()[0] for s in t2.lr_scheduler_configs]
    # the official linear rule, n_epochs=1, n_epochs_decay=2, after 2 epochs: 1 - (2 + 1 - 1) / (2 + 1)
    assert lrs == pytest.approx([2e-4 / 3] * 2)
    assert t1.global_step == t2.global_step == 8


def test_training_lowers_l1(tmp_path):
    torch.manual_seed(0)
    dm = synthetic(tmp_path, num_train=32)
    model = Pix2Pix(**{**TINY_MODEL, "ngf": 16, "ndf": 16, "n_epochs": 10})
    before = val_l1(model, dm)
    quiet_trainer(max_epochs=10, limit_val_batches=0, precision="bf16-mixed").fit(model, dm)
    after = val_l1(model, dm)
    assert after < 0.8 * before, (before, after)


def test_linear_policy_never_goes_negative():
    from pix2pix_lit.module import linear_decay

    rule = linear_decay(2, 3)
    assert [rule(e) for e in range(7)] == pytest.approx([1, 1, 0.75, 0.5, 0.25, 0, 0])


def test_inference_modes(tmp_path):
    dm = synthetic64(tmp_path)
    dm.setup("validate")
    src = next(iter(dm.val_dataloader()))["source"]
    eval_model = Pix2Pix(**{**TINY_MODEL, "num_downs": 6, "inference_mode": "eval"})
    assert torch.equal(eval_model.generate(src), eval_model.generate(src))
    paper = Pix2Pix(**{**TINY_MODEL, "num_downs": 6})
    assert paper.hparams.inference_mode == "paper"  # the official test.py default (no --eval)
    buffers = {k: v.clone() for k, v in paper.G.named_buffers()}
    a, b = paper.generate(src), paper.generate(src)
    assert not torch.equal(a, b)  # dropout stays on at test time
    assert all(torch.equal(v, buffers[k]) for k, v in paper.G.named_buffers())  # running stats untouched


def test_nonfinite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    model = Pix2Pix(**{**TINY_MODEL, "max_nonfinite_steps": 3})
    before = {k: v.clone() for k, v in model.named_parameters()}
    forward = model.G.forward
    monkeypatch.setattr(model.G, "forward", lambda x: forward(x) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="3 consecutive batches had NaN/Inf losses"):
        quiet_trainer(max_epochs=5, limit_val_batches=0).fit(model, synthetic(tmp_path))
    assert model.nonfinite_total == 3
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]), k  # no update was made from NaN losses


@pytest.mark.parametrize("gan_mode,netD,extra", [
    ("lsgan", "n_layers", {}), ("hinge", "pixel", {}), ("wgangp", "basic", {}),
    ("vanilla", "multiscale", {"num_D": 2, "n_layers_D": 2, "lambda_feat": 10.0, "pool_size": 4}),
    ("vanilla", "basic", {"netG": "resnet", "n_blocks": 2, "lr_policy": "cosine", "norm": "instance"}),
])
def test_other_losses_and_networks_train(tmp_path, gan_mode, netD, extra):
    model = Pix2Pix(**{**TINY_MODEL, "gan_mode": gan_mode, "netD": netD, **extra})
    before = model.G.model.state_dict() if hasattr(model.G, "model") else None
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, synthetic(tmp_path))
    assert trainer.global_step == 2
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["train/loss_D"]) and torch.isfinite(logged["train/loss_G"])
    if gan_mode == "wgangp":
        assert "train/loss_D_gp" in logged
    if extra.get("lambda_feat"):
        assert "train/loss_G_feat" in logged
    assert before is not None


def test_spectral_norm_bounds_every_conv_of_D_and_adds_no_parameters():
    plain = Pix2Pix(**{**TINY_MODEL, "netD": "multiscale", "num_D": 2})
    model = Pix2Pix(**{**TINY_MODEL, "netD": "multiscale", "num_D": 2, "spectral_norm_D": True})
    assert sum(p.numel() for p in model.D.parameters()) == sum(p.numel() for p in plain.D.parameters())
    convs = [m for m in model.D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "weight_orig") for m in convs)
    model.D.train()
    with torch.no_grad():
        for _ in range(30):  # each training forward runs one power iteration
            model.D(torch.randn(2, 6, 64, 64))
    for conv in convs:  # the weight used, as a matrix: largest singular value 1 (by SVD, not by the power method)
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, rel=0.05)
    assert any(abs(torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2) - 1) > 0.2
               for m in plain.D.modules() if isinstance(m, torch.nn.Conv2d))  # without it they are not


def test_lr_D_gives_D_its_own_learning_rate(tmp_path):
    model = Pix2Pix(**{**TINY_MODEL, "lr": 1e-4, "lr_D": 4e-4, "lr_policy": "linear"})
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, synthetic(tmp_path))
    opt_g, opt_d = trainer.optimizers
    assert opt_g.param_groups[0]["initial_lr"] == 1e-4 and opt_d.param_groups[0]["initial_lr"] == 4e-4
    with pytest.raises(ConfigError, match="model.lr_D=0"):
        Pix2Pix(**{**TINY_MODEL, "lr_D": 0})


def test_the_vgg_loss_is_added_when_training_with_a_file_and_needs_none_to_predict(tmp_path):
    """pix2pixHD's VGG term: λ_vgg · VGGLoss(fake, target) on top of the other terms, with a local VGG-19 file (random
    weights saved here); without the file `fit` stops in one line while test/predict of the same model run."""
    from torchvision.models import vgg19

    from pix2pix_lit.losses import VGG_SLICES, VGGLoss

    path = tmp_path / "vgg19.pth"
    torch.manual_seed(0)
    torch.save(vgg19(weights=None).features[: VGG_SLICES[-1]].state_dict(), path)
    model = Pix2Pix(**{**TINY_MODEL, "lambda_vgg": 10.0, "vgg_weights": str(path)})
    model.setup("fit")
    assert "vgg" not in dict(model.named_children())  # not saved in checkpoints
    source, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    fake = model.G(source)
    loss, logs = model.generator_loss(source, target, fake)
    vgg = VGGLoss(str(path))(fake, target).item() * 10.0
    assert logs["loss_G_VGG"].item() == pytest.approx(vgg, rel=1e-5) and vgg > 0
    assert loss.item() == pytest.approx(logs["loss_G_GAN"].item() + logs["loss_G_L1"].item() + vgg, rel=1e-5)
    without = Pix2Pix(**{**TINY_MODEL, "lambda_vgg": 10.0})
    without.setup("test")  # test and predict never need the file
    with pytest.raises(ConfigError, match="model.lambda_vgg=10.0 needs model.vgg_weights: torchvision's ImageNet VGG-19"):
        without.setup("fit")
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, synthetic(tmp_path))
    assert torch.isfinite(trainer.callback_metrics["train/loss_G_VGG"])


def test_plateau_policy_needs_its_metric(tmp_path):
    model = Pix2Pix(**{**TINY_MODEL, "lr_policy": "plateau", "plateau_monitor": "train/loss_G"})
    quiet_trainer(max_epochs=1, limit_val_batches=0).fit(model, synthetic(tmp_path))
    bad = Pix2Pix(**{**TINY_MODEL, "lr_policy": "plateau", "plateau_monitor": "val/nothing"})
    with pytest.raises(ConfigError, match="plateau watches 'val/nothing'"):
        quiet_trainer(max_epochs=1, limit_val_batches=0).fit(bad, synthetic(tmp_path))


def test_wrong_image_size_for_generator(tmp_path):
    model = Pix2Pix(**{**TINY_MODEL, "num_downs": 6})  # needs multiples of 64
    with pytest.raises(ConfigError, match="images are 32x32 but netG=unet needs sides divisible by 64"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, synthetic(tmp_path))


@pytest.mark.parametrize("fit", ["pad", "resize"])
def test_predict_keeps_names_and_sizes(tmp_path, fit):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"a.png": (45, 37), "b.jpg": (20, 70), "sub/c.png": (64, 64)}
    for name, (w, h) in sizes.items():
        Image.fromarray(noise_image(rng, w, h)).save(folder / name)
    model = Pix2Pix(**{**TINY_MODEL, "predict_fit": fit, "predict_size": 64})
    writer = PredictionWriter(str(tmp_path / "out"))
    dm = PairedDataModule("unused", predict_dir=str(folder), num_workers=0)
    quiet_trainer(callbacks=[writer]).predict(model, dm, return_predictions=False)
    for name, size in sizes.items():
        assert Image.open(tmp_path / "out" / name).size == size
    # the output is the generator's: compare one image to a direct call
    src = torch.from_numpy(np.asarray(Image.open(folder / "sub/c.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    direct = model.generate(src)[0] if fit == "pad" else None
    if direct is not None:
        out = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / "sub/c.png"))).permute(2, 0, 1).float()
        assert (out - ((direct + 1) * 127.5).round()).abs().max() <= 1


def test_missing_fid_weights_stop_before_the_loggers_write(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from pix2pix_lit.errors import InceptionWeightsError

    model = Pix2Pix(**{**TINY_MODEL, "fid": True, "inception_weights": str(tmp_path / "none.pth")})
    trainer = quiet_trainer(max_steps=1, logger=CSVLogger(str(tmp_path / "run")))
    with pytest.raises(InceptionWeightsError, match="none.pth .* do not exist"):
        trainer.fit(model, synthetic(tmp_path))
    assert not (tmp_path / "run").exists()
    # the same logger writes its folder once the run can start
    quiet_trainer(max_steps=1, logger=CSVLogger(str(tmp_path / "run")), limit_val_batches=0).fit(
        Pix2Pix(**TINY_MODEL), synthetic(tmp_path))
    assert (tmp_path / "run").is_dir()


@pytest.mark.parametrize("sanity_steps", [1, 0])
def test_fid_inception_held_only_for_validation_during_fit(tmp_path, sanity_steps):
    """fit loads the FID Inception at setup (a bad file fails first), holds it in each validation and lets go of
    it while training, with or without a sanity check; every validation still scores FID."""
    import lightning.pytorch as pl

    from pix2pix_lit import SyntheticPairedDataModule

    held = {"train": set(), "val": set()}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            held["train"].add(bool(pl_module.evaluator.metrics["val"]["out"]._extractor))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            held["val"].add(bool(pl_module.evaluator.metrics["val"]["out"]._extractor))

    fids = []

    class Scores(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                fids.append(float(trainer.callback_metrics["val/fid"]))

    dm = SyntheticPairedDataModule(str(tmp_path / "data"), num_train=2, num_val=4, num_test=1, image_size=64,
                                   load_size=64, crop_size=64, batch_size=1, num_workers=0)
    model = Pix2Pix(**{**TINY_MODEL, "fid": True})
    trainer = quiet_trainer(default_root_dir=str(tmp_path), max_epochs=2, num_sanity_val_steps=sanity_steps,
                            callbacks=[Watch(), Scores()])
    trainer.fit(model, dm)
    assert held == {"train": {False}, "val": {True}}
    assert len(fids) == 2 and all(f > 0 for f in fids)
