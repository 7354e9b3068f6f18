"""SPADE the model: its loss terms against hand computations, exact resume, the Cityscapes download layout through
the CLI with the official configuration's parameter counts, and what it refuses."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from pix2pix_lit.data import SyntheticLabelDataModule
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models import SPADE

from conftest import REPO, quiet_trainer, run, step_at_start, write_cityscapes

TINY = dict(ngf=4, ndf=4, num_upsampling_layers="normal", norm_G="spectralspadebatch3x3", label_nc=5, fid=False,
            kid=False, n_epochs=1, n_epochs_decay=1)


def labels_data(root, **kw):
    return SyntheticLabelDataModule(str(root), **{**dict(num_train=8, num_val=2, num_test=2, image_size=72,
                                                         load_size=72, crop_size=64, batch_size=2, num_workers=0), **kw})


def test_hinge_and_feature_matching_terms_equal_hand_computations(monkeypatch):
    model = SPADE(**TINY)
    # D's activations for the (fake | real) batch of two: two scales, two layers each (the last one the logits)
    fake_scale = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.5]])]
    real_scale = [torch.tensor([[0.0, 2.5]]), torch.tensor([[2.0, -0.5]])]
    scales = [[torch.cat([f, r]) for f, r in zip(fake_scale, real_scale)],
              [torch.cat([2 * f, 2 * r]) for f, r in zip(fake_scale, real_scale)]]
    monkeypatch.setattr(model.D, "features", lambda both: scales)
    labels, image = torch.zeros(1, 6, 2, 2), torch.zeros(1, 3, 2, 2)
    loss, logs = model.generator_loss(labels, image, image)
    gan = (-(0.5 - 1.5) / 2 + -(1.0 - 3.0) / 2) / 2  # -mean(fake logits), averaged over the scales
    feat = 10.0 * ((0.5 * (1.0 + 0.5)) + (0.5 * (2.0 + 1.0))) / 2  # λ_feat · L1 of the non-final layers / num_D
    assert logs["loss_G_GAN"].item() == pytest.approx(gan)
    assert logs["loss_G_feat"].item() == pytest.approx(feat)
    assert loss.item() == pytest.approx(gan + feat) and "loss_G_VGG" not in logs  # no VGG weights: off
    loss_d, logs_d = model.discriminator_loss(labels, image, image)
    hinge_fake = (((1 + 0.5) + max(0, 1 - 1.5)) / 2 + ((1 + 1.0) + max(0, 1 - 3.0)) / 2) / 2  # mean(relu(1 + x))
    hinge_real = ((max(0, 1 - 2.0) + (1 + 0.5)) / 2 + (max(0, 1 - 4.0) + (1 + 1.0)) / 2) / 2  # mean(relu(1 - x))
    assert logs_d["loss_D_fake"].item() == pytest.approx(hinge_fake)
    assert logs_d["loss_D_real"].item() == pytest.approx(hinge_real)
    assert loss_d.item() == pytest.approx(hinge_fake + hinge_real)  # summed, as the official D loss


def test_two_time_scale_update_rule():
    """NVlabs/SPADE's options: TTUR (lr/2 for G, 2·lr for D) with betas (0, 0.9); --no_TTUR one lr and, unless
    given, its own default betas (0.5, 0.999) (train_options.py ``set_defaults`` under ``no_TTUR``)."""
    opts, _ = SPADE(**TINY).configure_optimizers()
    assert [o.param_groups[0]["lr"] for o in opts] == [1e-4, 4e-4]
    assert [o.param_groups[0]["betas"] for o in opts] == [(0.0, 0.9)] * 2
    opts, _ = SPADE(**TINY, no_TTUR=True).configure_optimizers()
    assert [o.param_groups[0]["lr"] for o in opts] == [2e-4, 2e-4]
    assert [o.param_groups[0]["betas"] for o in opts] == [(0.5, 0.999)] * 2
    opts, _ = SPADE(**TINY, no_TTUR=True, beta1=0.2).configure_optimizers()
    assert opts[0].param_groups[0]["betas"] == (0.2, 0.999)  # what the user sets stays
    assert SPADE(**TINY).hparams.lr_policy == "linear_nvidia"  # SPADE's own decay rule


def _train(ckpt_dir, data_dir, epochs, ckpt_path=None, seed=0, **extra):
    ckpt, start = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0), step_at_start()
    trainer = quiet_trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[ckpt, start],
                            limit_val_batches=0, deterministic=True)
    trainer.step_at_start = start
    torch.manual_seed(seed)  # a resumed fit is seeded otherwise: only its checkpoint can make it equal
    model = SPADE(**{**TINY, **extra})
    trainer.fit(model, labels_data(data_dir), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "ema"])
def test_exact_resume_equals_uninterrupted_run(tmp_path, ema):
    straight, t1 = _train(tmp_path / "a", tmp_path / "data", 2, ema_decay=ema)
    _train(tmp_path / "b", tmp_path / "data", 1, ema_decay=ema)
    resumed, t2 = _train(tmp_path / "b", tmp_path / "data", 2, ckpt_path="last", seed=1, ema_decay=ema)
    assert t1.global_step == t2.global_step == 8 and t2.step_at_start.step == 4
    assert straight.state_dict().keys() == resumed.state_dict().keys()
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k  # spectral norm's u/v and batch-norm statistics included


def test_without_vgg_weights_the_vgg_loss_is_off_and_the_log_says_where_to_get_them(caplog, tmp_path):
    model = SPADE(**TINY)
    with caplog.at_level("WARNING"):
        model.setup("fit")
    lines = [r.getMessage() for r in caplog.records if "VGG" in r.getMessage()]
    assert len(lines) == 1 and "needs model.vgg_weights" in lines[0] and "vgg19-dcbb9e9d.pth" in lines[0]
    assert model.vgg is None and "vgg" not in dict(model.named_children())
    caplog.clear()
    with caplog.at_level("WARNING"):
        SPADE(**TINY, no_vgg_loss=True).setup("fit")
    assert not [r for r in caplog.records if "VGG" in r.getMessage()]
    # a file that is not there: nothing at construction or for test/predict; one line when training starts
    missing = SPADE(**TINY, vgg_weights=str(tmp_path / "vgg19.pth"))
    missing.setup("test")
    with pytest.raises(ConfigError, match="model.vgg_weights=.*vgg19.pth does not exist"):
        missing.setup("fit")


def test_spade_needs_label_maps_and_says_so():
    with pytest.raises(ConfigError, match="SPADE turns label maps into photos"):
        SPADE(ngf=4, ndf=4, fid=False, kid=False)
    with pytest.raises(ConfigError, match="model.norm_G='spadegroup3x3' is not known"):
        SPADE(**{**TINY, "norm_G": "spadegroup3x3"})


def official_count(state: dict, prefix: str) -> int:
    """Parameters (not buffers: spectral norm's u/v, batch-norm statistics) of one network in a state dict."""
    buffers = ("weight_u", "weight_v", "running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in state.items() if k.startswith(prefix) and not k.endswith(buffers))


@pytest.mark.slow
def test_cityscapes_download_layout_trains_with_the_official_configuration(tmp_path, cli_env):
    """configs/spade/cityscapes.yaml on a made-up folder in the download layout: 2 steps (at 128x64 so it is
    quick: the networks' sizes do not depend on the image size), and the checkpoint holds the published counts."""
    write_cityscapes(tmp_path / "cs", "train", cities=("aachen", "bochum"), per_city=1, size=(128, 64))
    write_cityscapes(tmp_path / "cs", "val", cities=("lindau",), per_city=1, size=(128, 64), seed=1)
    run(["fit", "-c", str(REPO / "configs" / "spade" / "cityscapes.yaml"), "--data.root", str(tmp_path / "cs"),
         "--data.crop_size", "128", "--data.load_size", "128", "--trainer.max_steps", "2", "--trainer.logger", "false",
         "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
         "--model.fid", "false", "--model.kid", "false", "--image_grid.every_n_epochs", "1"], cli_env, tmp_path,
        timeout=1200)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert official_count(ckpt["state_dict"], "G.") == 93_048_003
    assert official_count(ckpt["state_dict"], "D.") == 5_601_410
    assert ckpt["hyper_parameters"]["label_nc"] == 35 and not ckpt["hyper_parameters"]["no_instance"]


def test_vae_trains_the_encoder_and_validation_takes_each_photos_style(tmp_path):
    torch.manual_seed(0)
    model = SPADE(**{**TINY, "use_vae": True, "z_dim": 8, "crop_size": 64, "lambda_kld": 0.05})
    assert model.G.fc.in_features == 8 and isinstance(model.E.fc_mu, torch.nn.Linear)
    before = {k: v.clone() for k, v in model.E.state_dict().items()}
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, labels_data(tmp_path / "data"))
    assert any(not torch.equal(before[k], v) for k, v in model.E.state_dict().items())  # E is trained with G
    assert "train/loss_G_KLD" in trainer.callback_metrics
    # the KL term by hand on E's posterior for one photo
    dm = labels_data(tmp_path / "data")
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    model.eval()
    with torch.no_grad():
        mu, logvar = model.E(batch["target"])
    assert mu.shape == (2, 8) and logvar.shape == (2, 8)
    # a style code decides the output: the same code gives the same photo, another code another one
    labels = model.network_input(batch)
    z = torch.randn(2, 8)
    same = model.generate(labels, z=z)
    assert torch.equal(same, model.generate(labels, z=z))
    assert not torch.allclose(same, model.generate(labels, z=z + 1.0))
