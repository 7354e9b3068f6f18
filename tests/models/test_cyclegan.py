"""CycleGAN against the official code: parameter counts, losses on fixed inputs, training and exact resume,
validation in both directions."""


import numpy as np
import pytest
import torch
import torch.nn as nn
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from pix2pix_lit.data import SyntheticUnpairedDataModule
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models import CycleGAN
from pix2pix_lit.models.base import count_parameters

from conftest import quiet_trainer, step_at_start

TINY = dict(netG="resnet_6blocks", ngf=8, ndf=8, fid=False, kid=False, n_epochs=1, n_epochs_decay=1)


def test_official_parameter_counts():
    model = CycleGAN(fid=False, kid=False)  # the defaults: resnet_9blocks, basic D, instance norm
    assert count_parameters(model.G_A) == count_parameters(model.G_B) == 11_378_179
    assert count_parameters(model.D_A) == count_parameters(model.D_B) == 2_764_737
    h = model.hparams
    assert (h.gan_mode, h.norm, h.no_dropout, h.pool_size, h.lambda_A, h.lambda_B, h.lambda_identity) == (
        "lsgan", "instance", True, 50, 10.0, 10.0, 0.5)
    assert (h.lr, h.beta1, h.lr_policy, h.n_epochs, h.n_epochs_decay) == (0.0002, 0.5, "linear", 100, 100)


class Affine(nn.Module):
    """A stand-in network with a known output: a * x + b (so the losses can be computed by hand)."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        return self.a * x + self.b


def _hand_model(**kw):
    model = CycleGAN(**{**TINY, "pool_size": 0, **kw})
    model.G_A, model.G_B = Affine(0.5, 0.1), Affine(1.5, -0.2)
    model.D_A, model.D_B = Affine(1.0, 0.3), Affine(-1.0, 0.0)
    return model


def test_generator_and_discriminator_losses_equal_a_hand_computation():
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4) * 2 - 1
    model = _hand_model()
    fake_B, fake_A = 0.5 * a + 0.1, 1.5 * b - 0.2
    rec_A, rec_B = 1.5 * fake_B - 0.2, 0.5 * fake_A + 0.1
    loss, logs = model.generator_loss(a, b, fake_A, fake_B, rec_A, rec_B)
    A, B = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    fB, fA = 0.5 * A + 0.1, 1.5 * B - 0.2
    rA, rB = 1.5 * fB - 0.2, 0.5 * fA + 0.1
    expected = {
        "loss_G_A": np.mean((fB + 0.3 - 1.0) ** 2),  # lsgan: D_A(fake_B) pushed to 1
        "loss_G_B": np.mean((-fA - 1.0) ** 2),
        "loss_cycle_A": 10 * np.mean(np.abs(rA - A)),
        "loss_cycle_B": 10 * np.mean(np.abs(rB - B)),
        "loss_idt_A": 10 * 0.5 * np.mean(np.abs(0.5 * B + 0.1 - B)),  # G_A(b) vs b, lambda_B * lambda_identity
        "loss_idt_B": 10 * 0.5 * np.mean(np.abs(1.5 * A - 0.2 - A)),
    }
    for k, v in expected.items():
        assert logs[k].item() == pytest.approx(v, rel=1e-5), k
    assert loss.item() == pytest.approx(sum(expected.values()), rel=1e-5)

    loss_D, logs_D = model.discriminator_loss(a, b, fake_A, fake_B)
    d_a = 0.5 * (np.mean((B + 0.3 - 1) ** 2) + np.mean((fB + 0.3) ** 2))  # D_A: real B -> 1, fake B -> 0
    d_b = 0.5 * (np.mean((-A - 1) ** 2) + np.mean((-fA) ** 2))
    assert logs_D["loss_D_A"].item() == pytest.approx(d_a, rel=1e-5)
    assert logs_D["loss_D_B"].item() == pytest.approx(d_b, rel=1e-5)
    assert loss_D.item() == pytest.approx(d_a + d_b, rel=1e-5)

    no_idt, logs = _hand_model(lambda_identity=0.0, lambda_A=3.0).generator_loss(a, b, fake_A, fake_B, rec_A, rec_B)
    assert "loss_idt_A" not in logs and logs["loss_cycle_A"].item() == pytest.approx(3 * np.mean(np.abs(rA - A)), rel=1e-5)


def test_identity_loss_needs_equal_channels():
    with pytest.raises(ConfigError, match="lambda_identity"):
        CycleGAN(input_nc=1, output_nc=3, **TINY)
    assert CycleGAN(input_nc=1, output_nc=3, lambda_identity=0.0, **TINY).G_B.model[1].in_channels == 3


def _fit(tmp_path, epochs, ckpt_path=None, seed=0, **extra):
    ckpt, start = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0), step_at_start()
    trainer = quiet_trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[ckpt, start],
                            limit_val_batches=0, deterministic=True)
    trainer.step_at_start = start
    seed_everything(seed)  # the pools draw from Python's random; a resumed fit is seeded otherwise
    model = CycleGAN(**{**TINY, "pool_size": 3, **extra})
    dm = SyntheticUnpairedDataModule(str(tmp_path.parent / "syn"), num_train=6, num_val=2, num_test=2, image_size=36,
                                     load_size=36, crop_size=32, num_workers=0)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "ema"])
def test_training_counts_batches_and_resume_is_exact(tmp_path, ema):
    straight, t1 = _fit(tmp_path / "a", 2, ema_decay=ema)
    assert t1.global_step == 12  # 6 images, batch 1: one step per batch, with two optimizers
    assert len(straight.fake_A_pool.images) == len(straight.fake_B_pool.images) == 3
    fresh = CycleGAN(**{**TINY, "pool_size": 3})
    for name in ("G_A", "G_B", "D_A", "D_B"):
        assert not torch.equal(next(getattr(fresh, name).parameters()), next(getattr(straight, name).parameters()))
    assert (straight.G_A_ema is not None) == (ema is not None)
    _fit(tmp_path / "b", 1, ema_decay=ema)  # stops after the first epoch...
    resumed, t2 = _fit(tmp_path / "b", 2, ckpt_path="last", seed=1, ema_decay=ema)  # ...goes on: the same weights
    assert t2.step_at_start.step == 6 and t2.global_step == 12
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    for pool in ("fake_A_pool", "fake_B_pool"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(straight, pool).images, getattr(resumed, pool).images))


def test_validation_scores_both_directions(tmp_path):
    dm = SyntheticUnpairedDataModule(str(tmp_path / "syn"), num_train=4, num_val=6, num_test=2, image_size=36,
                                     load_size=36, crop_size=32, num_workers=0)
    model = CycleGAN(**{**TINY, "fid": True, "kid": True, "kid_subset_size": 4})
    metrics = quiet_trainer().validate(model, dm, verbose=False)[0]
    for name in ("fid_A", "fid_B", "kid_mean_A", "kid_mean_B", "ssim_A", "ssim_B", "psnr_A", "psnr_B"):
        assert np.isfinite(metrics[f"val/{name}"]), name
    assert metrics["val/fid_B"] != metrics["val/fid_A"]
