"""CycleGAN: the official sizes, each loss term against a hand computation, unpaired data, training, resume,
MiFID against NumPy, and the command line in both directions."""

import csv
import json
import random

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from test_cli import run

from pix2pix_lit.data import SyntheticUnpairedDataModule, UnpairedDataModule
from pix2pix_lit.errors import ConfigError, DataError
from pix2pix_lit.metrics import ImageQualityMetrics, memorization_distance
from pix2pix_lit.models import CycleGAN
from pix2pix_lit.models.base import count_parameters
from pix2pix_lit.nets.image_pool import ImagePool

from conftest import REPO, quiet_trainer, write_aligned
from wandb_reader import read_run as read_wandb_run

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


def test_image_pool_follows_the_official_buffer(monkeypatch):
    pool = ImagePool(2)
    x = [torch.full((1, 1, 2, 2), float(i)) for i in range(5)]
    assert torch.equal(pool.query(torch.cat(x[:2])), torch.cat(x[:2]))  # filling: the images themselves
    draws = iter([0.9, 0.1])  # first a swap with stored image 1, then the new image as is
    monkeypatch.setattr(random, "uniform", lambda lo, hi: next(draws))
    monkeypatch.setattr(random, "randint", lambda lo, hi: 1)
    out = pool.query(torch.cat(x[2:4]))
    assert out[0, 0, 0, 0] == 1.0 and out[1, 0, 0, 0] == 3.0  # the old image 1 returned, image 3 passed through
    assert [t[0, 0, 0, 0].item() for t in pool.images] == [0.0, 2.0]  # image 2 took its place
    assert torch.equal(ImagePool(0).query(x[4]), x[4])


def test_identity_loss_needs_equal_channels():
    with pytest.raises(ConfigError, match="lambda_identity"):
        CycleGAN(input_nc=1, output_nc=3, **TINY)
    assert CycleGAN(input_nc=1, output_nc=3, lambda_identity=0.0, **TINY).G_B.model[1].in_channels == 3


def write_domains(root, split, n_a, n_b, size_a=(40, 36), size_b=(48, 48), seed=0):
    rng = np.random.default_rng(seed)
    for domain, n, (w, h) in (("A", n_a, size_a), ("B", n_b, size_b)):
        folder = root / f"{split}{domain}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{domain.lower()}{i:02d}.png")


def test_unpaired_folders_any_counts_and_sizes(tmp_path):
    write_domains(tmp_path, "train", 5, 3)
    write_domains(tmp_path, "test", 2, 4, seed=1)
    dm = UnpairedDataModule(str(tmp_path), load_size=36, crop_size=32, num_workers=0, val_fraction=0.4)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.train_dataset.A) == 3 and len(dm.train_dataset.B) == 2  # max(|A|, |B|)
    assert len(dm.val_dataset.A) == 2 and len(dm.val_dataset.B) == 1  # carved from each domain, seeded
    assert not set(dm.val_dataset.A.files) & set(dm.train_dataset.A.files)
    item = dm.train_dataset[(0, 123)]
    assert item["A"].shape == item["B"].shape == (3, 32, 32)
    # a random B for each A, a function of the sample's seed; serial_batches: B i mod |B|
    picks = {dm.train_dataset[(0, s)]["name_B"] for s in range(20)}
    assert len(picks) == 2 and dm.train_dataset[(0, 5)]["name_B"] == dm.train_dataset[(0, 5)]["name_B"]
    serial = UnpairedDataModule(str(tmp_path), load_size=36, crop_size=32, num_workers=0, serial_batches=True,
                                val_fraction=0.4)
    serial.setup("fit")
    assert [serial.train_dataset[(i, s)]["name_B"] for i, s in ((0, 1), (1, 2), (2, 3))] == [
        p.stem for p in serial.train_dataset.B.files] + [serial.train_dataset.B.files[0].stem]
    a_loader, b_loader = dm.val_dataloader()
    assert len(a_loader.dataset) == 2 and len(b_loader.dataset) == 1 and "target" not in a_loader.dataset[0]
    dm.setup("test")
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [2, 4]
    with pytest.raises(DataError, match="trainB"):
        (tmp_path / "empty").mkdir()
        write_domains(tmp_path / "empty", "train", 2, 0)
        UnpairedDataModule(str(tmp_path / "empty"), num_workers=0).setup("fit")


def test_side_by_side_files_as_two_domains_keep_val_pairs(tmp_path):
    write_aligned(tmp_path / "train", 6, size=32)
    write_aligned(tmp_path / "val", 3, size=32, seed=5)
    dm = UnpairedDataModule(str(tmp_path), layout="aligned", load_size=32, crop_size=32, num_workers=0)
    dm.setup("fit")
    a_view, b_view = (loader.dataset for loader in dm.val_dataloader())
    item = a_view[0]
    assert torch.allclose(item["target"], -item["image"], atol=1.5 / 127.5)  # write_aligned: B = 255 - A
    assert torch.allclose(b_view[0]["target"], -b_view[0]["image"], atol=1.5 / 127.5)
    names = {dm.train_dataset[(0, s)]["name_B"] for s in range(30)}
    assert len(names) > 1  # in training B is drawn independently of A, not its partner


def _fit(tmp_path, epochs, ckpt_path=None, **extra):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    trainer = quiet_trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[ckpt], limit_val_batches=0,
                            deterministic=True)
    seed_everything(0)  # the pools draw from Python's random
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
    resumed, t2 = _fit(tmp_path / "b", 2, ckpt_path="last", ema_decay=ema)  # ...and goes on: the same weights
    assert t2.global_step == 12
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


def _numpy_fid(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _kaggle_distance(fake, real, eps=0.1):
    """The Kaggle MiFID code's cosine distance: per generated image, the closest real one; thresholded."""
    nf = fake / np.linalg.norm(fake, axis=1, keepdims=True)
    nr = real / np.linalg.norm(real, axis=1, keepdims=True)
    d = np.mean(np.min(1.0 - np.abs(nf @ nr.T), axis=1))
    return d if d < eps else 1.0


@pytest.mark.parametrize("memorized", [False, True])
def test_mifid_equals_a_numpy_computation(memorized):
    rng = np.random.default_rng(0)
    real = rng.uniform(-0.9, 0.9, (60, 2048))  # inside [-1, 1]: images are clamped there
    train = rng.uniform(-0.9, 0.9, (50, 2048))  # what the generator was trained on: MiFID's reference
    fake = train[:40] + rng.normal(0, 0.01, (40, 2048)) if memorized else rng.uniform(-0.8, 1, (40, 2048))
    m = ImageQualityMetrics(fid=True, kid=True, kid_subset_size=10, mifid=True)
    m.features = lambda images: images.flatten(1)  # fixed features in place of the Inception's
    m.update_real(torch.tensor(real, dtype=torch.float32).view(60, 2048, 1, 1))
    m.update_fake(torch.tensor(fake, dtype=torch.float32).view(40, 2048, 1, 1))
    m.set_training_reference(torch.tensor(train, dtype=torch.float32), "train")
    out = m.compute()
    f32 = lambda x: torch.tensor(x, dtype=torch.float32).double().numpy()  # noqa: E731 - the features as stored
    fid, dist = _numpy_fid(f32(fake), f32(real)), _kaggle_distance(f32(fake), f32(train))
    assert (dist < 0.1) == memorized
    assert _kaggle_distance(f32(fake), f32(real)) >= 0.1  # against the val images no memorization could show
    assert out["fid"].item() == pytest.approx(fid, rel=1e-3)
    assert out["mifid_train"].item() == pytest.approx(fid / (dist + 1e-15), rel=1e-3)
    assert memorization_distance(torch.tensor(fake), torch.tensor(real)).item() == pytest.approx(
        _kaggle_distance(fake, real), rel=1e-9)
    assert "ssim" not in out  # no pairs were given


def cyclegan_cli(root, data, *extra):
    return [
        "-c", str(REPO / "configs" / "cyclegan" / "quickstart.yaml"),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--data.root", str(data), "--data.num_train", "6", "--data.num_val", "4", "--data.num_test", "4",
        "--data.image_size", "36", "--data.load_size", "36", "--data.crop_size", "32", "--data.num_workers", "0",
        "--model.ngf", "8", "--model.ndf", "8", "--model.kid_subset_size", "4", "--trainer.log_every_n_steps", "1",
        *extra,
    ]


@pytest.mark.slow
def test_command_line_fit_validate_test_predict_export_both_ways(tmp_path, cli_env):
    root, data = tmp_path / "run", tmp_path / "syn"
    run(["fit", *cyclegan_cli(root, data, "--trainer.max_epochs", "2")], cli_env, tmp_path)
    ckpts = {p.name for p in (root / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)  # best by val/fid_B
    rows = list(csv.DictReader(open(root / "csv" / "version_0" / "metrics.csv")))
    fid_B = [(int(r["step"]), float(r["val/fid_B"])) for r in rows if r.get("val/fid_B")]
    # the config's full sanity check scores the untrained generators (step 0), then each epoch
    assert len(fid_B) == 3 and fid_B[0][0] == 0 and all(f > 0 for _, f in fid_B)
    assert any(r.get("train/loss_cycle_A") for r in rows) and any(r.get("val/ssim_A") for r in rows)
    grid = Image.open(sorted((root / "images").glob("val_epoch*.png"))[0])
    assert grid.size == (3 * 34 + 2, 8 * 34 + 2)  # 4 A rows and 4 B rows: real | translated | back
    (wandb_run,) = list((root / "wandb").glob("offline-run-*"))
    tracked = read_wandb_run(wandb_run)
    keys = set().union(*tracked["history"])
    assert {"val/fid_B", "val/fid_A", "train/loss_cycle_B", "train/loss_idt_A", "images/val/_type"} <= keys
    assert tracked["config"]["model.class_path"].endswith("CycleGAN")
    compared = run(["compare", str(root), "--output", str(tmp_path / "c.png")], cli_env, tmp_path)
    assert "best val/fid_B" in compared.stdout and "best val/fid_A" in compared.stdout
    last = str(root / "checkpoints" / "last.ckpt")

    val = run(["validate", *cyclegan_cli(root, data), "--ckpt_path", last], cli_env, tmp_path)
    assert "val/fid_A" in val.stdout and "val/fid_B" in val.stdout
    run(["test", *cyclegan_cli(root, data), "--ckpt_path", last], cli_env, tmp_path)
    report = json.loads((root / "checkpoints" / "metrics.json").read_text())
    assert {"fid_A", "fid_B", "kid_mean_A", "ssim_B", "psnr_A"} <= set(report["metrics"])
    assert report["protocol"]["generator"] == "G_A+G_B" and report["num_images"] == 8
    per_image = list(csv.DictReader(open(root / "checkpoints" / "per_image.csv")))
    assert {r["direction"] for r in per_image} == {"AtoB", "BtoA"} and all(r["ssim"] for r in per_image)

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(photos / "p.png")
    for direction in ("BtoA", "AtoB"):
        out = tmp_path / f"pred-{direction}"
        run(["predict", *cyclegan_cli(root, data), "--ckpt_path", last, "--data.predict_dir", str(photos),
             "--model.predict_direction", direction, "--predict_writer.output_dir", str(out)], cli_env, tmp_path)
        assert Image.open(out / "p.png").size == (50, 30)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "pred-AtoB" / "p.png")),
                              np.asarray(Image.open(tmp_path / "pred-BtoA" / "p.png")))  # two generators

    export = run(["export", "--ckpt_path", last, "--format", "onnx", "--direction", "BtoA"], cli_env, tmp_path)
    assert "G_B" in export.stdout and (root / "checkpoints" / "last.G_B.eval.onnx").is_file()

    wrong = run(["test", "-c", str(REPO / "configs" / "quickstart.yaml"), "--data.root", str(data),
                 "--ckpt_path", last, "--trainer.default_root_dir", str(tmp_path / "wrong")], cli_env, tmp_path,
                check=False)
    assert wrong.returncode == 2 and "holds a CycleGAN model" in wrong.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "wrong").exists()


def test_the_model_class_comes_from_the_configs_and_command_line():
    from pix2pix_lit.cli import model_class_path

    cyclegan_config = str(REPO / "configs" / "cyclegan" / "quickstart.yaml")
    assert model_class_path([]).endswith(".Pix2Pix")  # configs from before the models/ layer name none
    assert model_class_path(["fit", "-c", cyclegan_config]).endswith(".CycleGAN")
    assert model_class_path(["fit", "-c", cyclegan_config, "--model", "Pix2Pix"]).endswith(".Pix2Pix")
    assert model_class_path(["fit", "--model.class_path=pix2pix_lit.module.Pix2Pix"]).endswith(".Pix2Pix")
    with pytest.raises(ConfigError, match="'Nope' is not an image-translation model"):
        model_class_path(["fit", "--model", "Nope"])
