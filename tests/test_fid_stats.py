"""Stored FID statistics: ``pix2pix-lit eval --save_stats`` and ``model.fid_real_stats`` give the FID computed from
the images themselves (to 1e-6 relative); files of other weights, another feature protocol or image size, or no
statistics at all are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pix2pix_lit.evaluate import evaluate_folders, save_real_stats
from pix2pix_lit.evaluate import main as eval_main
from pix2pix_lit.fid_stats import load_real_stats

from conftest import TINY_MODEL, quiet_trainer, run, run_in_process

NAMES = [f"img{i:02d}" for i in range(10)]


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    # smooth random images (noise would put every image at the same Inception features)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for d in ("A", "B"):
            (tmp_path / split / d).mkdir(parents=True)
        for name in NAMES[: 4 if split == "train" else 10]:
            for d in ("A", "B"):
                small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR).save(tmp_path / split / d / f"{name}.png")
    return tmp_path


def test_stats_give_the_fid_of_the_images(pairs: Path, tmp_path: Path) -> None:
    """eval's FID from the two folders equals the FID of the same generated images against the saved statistics."""
    stats_file = tmp_path / "real.npz"
    stats = save_real_stats(pairs / "test" / "B", stats_file)
    assert stats.num_images == 10 and stats.image_size == (32, 32)
    with np.load(stats_file) as f:  # plain numpy reads it, under pytorch-fid's key names
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and int(f["num_images"]) == 10
    reference = evaluate_folders(pairs / "test" / "A", pairs / "test" / "B", kid=False)["metrics"]["fid"]

    import torch

    from pix2pix_lit.data.io import load_image, to_tensor
    from pix2pix_lit.metrics import ImageQualityMetrics, load_inception

    metrics = ImageQualityMetrics(fid=True, kid=False)
    metrics.set_extractor(load_inception())
    metrics.use_real_stats(load_real_stats(stats_file), str(stats_file), holds_them=True)
    fakes = torch.stack([to_tensor(load_image(pairs / "test" / "A" / f"{n}.png").convert("RGB")) for n in NAMES])
    metrics.update_fake(fakes)
    fid = float(metrics.compute()["fid"])
    assert reference > 1.0
    assert abs(fid - reference) <= 1e-6 * reference, (fid, reference)
    # a process that does not hold the statistics adds nothing (DDP sums the states of all processes)
    other = ImageQualityMetrics(fid=True, kid=False)
    other.use_real_stats(load_real_stats(stats_file), str(stats_file), holds_them=False)
    assert int(other.fid.real_features_num_samples) == 0 and float(other.fid.real_features_sum.abs().sum()) == 0


def test_test_run_scores_against_the_stats(pairs: Path, tmp_path: Path) -> None:
    """A model's test FID with model.fid_real_stats equals its FID against the real images."""
    import lightning.pytorch as pl

    from pix2pix_lit.data import PairedDataModule
    from pix2pix_lit.models import Pix2Pix

    stats_file, other_file = tmp_path / "real.npz", tmp_path / "other.npz"
    assert eval_main(["--save_stats", str(pairs / "test" / "B"), str(stats_file)]) == 0
    # the statistics of other images (the inputs, B = 255 - A): a run that ignored the file could not score these
    assert eval_main(["--save_stats", str(pairs / "test" / "A"), str(other_file)]) == 0
    scores = []
    for extra in ({}, {"fid_real_stats": str(stats_file)}, {"fid_real_stats": str(other_file)}):
        dm = PairedDataModule(str(pairs), layout="folders", load_size=32, crop_size=32, num_workers=0)
        pl.seed_everything(0)  # the same generator each time
        model = Pix2Pix(**{**TINY_MODEL, "fid": True, "kid": False, **extra})
        quiet_trainer().test(model, dm, verbose=False)
        scores.append(model.test_results["test/fid"])
    assert abs(scores[1] - scores[0]) <= 1e-6 * scores[0], scores
    # the file's statistics were used: another real side, another score (the generator is untrained, far from
    # both sets, so they differ by ~1 %, a thousand times the equality tolerance above; ignoring the file: 0)
    assert abs(scores[2] - scores[0]) > 1e-3 * scores[0], scores


def _rewritten(src: Path, dst: Path, **changes) -> Path:
    with np.load(src) as f:
        data = {k: f[k] for k in f.files}
    data.update(changes)
    np.savez(dst, **data)
    return dst


def test_mismatched_or_missing_stats_are_refused(pairs: Path, tmp_path: Path, cli_env: dict) -> None:
    stats_file = tmp_path / "real.npz"
    save_real_stats(pairs / "test" / "B", stats_file)
    with np.load(stats_file) as f:
        protocol = json.loads(str(f["protocol"]))
    bad = {
        "other_weights.npz": (dict(inception_sha256=np.str_("0" * 64)), "Inception weights of sha256 000000000000"),
        "other_protocol.npz": (dict(protocol=np.str_(json.dumps({**protocol, "features": "clean-fid"}))), "'clean-fid'"),
        "other_size.npz": (dict(protocol=np.str_(json.dumps({**protocol, "image_size": [64, 64]}))),
                           "statistics of 64x64 images but the generated ones are 32x32"),
    }
    (tmp_path / "garbage.npz").write_bytes(b"not an npz")
    base = ["test", "--model", "pix2pix_lit.models.Pix2Pix", "--model.netG", "unet", "--model.num_downs", "5", "--model.ngf", "8",
            "--model.ndf", "8", "--model.kid", "false", "--data", "pix2pix_lit.data.PairedDataModule", "--data.root", str(pairs),
            "--data.layout", "folders", "--data.load_size", "32", "--data.crop_size", "32", "--data.num_workers", "0",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    cases = {name: _rewritten(stats_file, tmp_path / name, **changes) for name, (changes, _) in bad.items()}
    expect = {name: text for name, (_, text) in bad.items()}
    cases["missing.npz"], expect["missing.npz"] = tmp_path / "missing.npz", "does not exist; make it with pix2pix-lit eval"
    cases["garbage.npz"], expect["garbage.npz"] = tmp_path / "garbage.npz", "cannot be read as FID statistics"
    for name, path in cases.items():
        runner = run if name == "other_weights.npz" else run_in_process  # one case as a real process
        proc = runner([*base, "--model.fid_real_stats", str(path)], cli_env, tmp_path, check=False)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pix2pix-lit: error:")]
        assert proc.returncode != 0 and len(errors) == 1 and expect[name] in errors[0], (name, proc.stderr[-2000:])
    # KID cannot come from the statistics: refused before anything runs
    proc = run_in_process([*base, "--model.kid", "true", "--model.fid_real_stats", str(stats_file)], cli_env, tmp_path)
    assert proc.returncode != 0 and "model.kid: false" in proc.stderr


def test_save_stats_bad_input(tmp_path: Path, pairs: Path, capsys) -> None:
    out = tmp_path / "out.npz"
    assert eval_main(["--save_stats", str(tmp_path / "nowhere"), str(out)]) != 0
    assert "is not a folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.png", "b.png"):
        (broken / name).write_bytes((pairs / "test" / "B" / "img00.png").read_bytes()[:60])
    assert eval_main(["--save_stats", str(broken), str(out)]) != 0
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.npz*"))
    (tmp_path / "folder.npz").mkdir()
    assert eval_main(["--save_stats", str(pairs / "test" / "B"), str(tmp_path / "folder.npz")]) != 0
    assert "cannot be written to" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["fake", "--save_stats", str(pairs / "test" / "B"), str(out)])
