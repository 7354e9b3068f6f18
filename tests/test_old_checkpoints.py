"""Checkpoints written by earlier code (``tests/fixtures/README.md`` says by which command and commit) still test,
predict and resume with today's code: what they trained comes from the checkpoint, how they run from the command
line."""

import json

import pytest
import torch

from conftest import REPO, cyclegan_cli, run, run_in_process, tiny

FIXTURES = REPO / "tests" / "fixtures"
NO_INCEPTION = ["--model.fid", "false", "--model.kid", "false"]


def copy(name: str, tmp_path):
    path = tmp_path / name
    path.write_bytes((FIXTURES / name).read_bytes())
    return str(path)


def cli(args: list[str], env: dict, cwd) -> None:
    """``pix2pix-lit ARGS`` in this process (the subject is the checkpoint, not the process: each test's resumed
    ``fit`` still runs as its own process, through ``run``)."""
    run_in_process(args, env, cwd, check=True)


def report_of(args: list[str], env: dict, cwd) -> dict:
    """``test`` with ``args``: the metrics.json it wrote beside the checkpoint."""
    cli(["test", *args], env, cwd)
    return json.loads((cwd / "metrics.json").read_text())


def resumed_by(args: list[str], env: dict, cwd, epochs: int = 2) -> dict:
    """``fit`` resumed with ``args`` up to ``epochs``: the last checkpoint it wrote."""
    run(["fit", *args, "--trainer.max_epochs", str(epochs), "--trainer.logger", "false"], env, cwd)
    return torch.load(cwd / "run" / "checkpoints" / "last.ckpt", weights_only=True)


def pix2pix_with_ema_runs(args: list[str], env: dict, cwd) -> dict:
    """An old pix2pix checkpoint with an EMA generator (and a pool of 2, 2 steps trained): ``test`` scores its EMA
    generator on the 4 test images, ``predict`` writes 4 images, a resumed ``fit`` goes on to step 4 with its pool
    and EMA. Returns the resumed run's last checkpoint."""
    report = report_of(args, env, cwd)
    assert report["num_images"] == 4 and report["protocol"]["generator"] == "G_ema"
    cli(["predict", *args, "--predict_writer.output_dir", str(cwd / "pred")], env, cwd)
    assert len(list((cwd / "pred").glob("*.png"))) == 4
    resumed = resumed_by(args, env, cwd)
    assert resumed["global_step"] == 4 and len(resumed["pix2pix_lit"]["image_pools"]["pool"]) == 2
    assert any(k.startswith("G_ema.") for k in resumed["state_dict"])
    return resumed


@pytest.mark.slow
def test_pix2pix_from_fc12e82(tmp_path, cli_env):
    old = copy("pix2pix-fc12e82.ckpt", tmp_path)
    # before the models/ layer the checkpoint named no class and held 4-channel networks as hyper-parameters
    small = ["--model.num_downs", "5", "--model.ngf", "4", "--model.ndf", "4", "--model.pool_size", "2", *NO_INCEPTION]
    args = tiny(tmp_path / "run", tmp_path / "syn")
    cli(["test", *args, *small, "--ckpt_path", old], cli_env, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["num_images"] == 4
    cli(["predict", *args, *small, "--ckpt_path", old, "--predict_writer.output_dir", str(tmp_path / "pred")],
        cli_env, tmp_path)
    assert len(list((tmp_path / "pred").glob("*.png"))) == 4
    # resume: its image pool held lone fakes (no sources), which cannot be paired again: dropped with a warning
    proc = run(["fit", *args, *small, "--ckpt_path", old, "--trainer.max_epochs", "2", "--trainer.logger", "false"],
               cli_env, tmp_path)
    assert "image pool holds fakes without their sources" in proc.stderr + proc.stdout
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.slow
def test_pix2pix_with_ema_from_b98c3a6(tmp_path, cli_env):
    old = copy("pix2pix-ema-b98c3a6.ckpt", tmp_path)
    pix2pix_with_ema_runs([*tiny(tmp_path / "run", tmp_path / "syn"), *NO_INCEPTION, "--ckpt_path", old], cli_env,
                          tmp_path)


@pytest.mark.slow
def test_cyclegan_from_b98c3a6(tmp_path, cli_env):
    old = copy("cyclegan-b98c3a6.ckpt", tmp_path)
    args = [*cyclegan_cli(tmp_path / "run", tmp_path / "syn"), *NO_INCEPTION, "--ckpt_path", old]
    report = report_of(args, cli_env, tmp_path)
    assert report["num_images"] == 8 and report["protocol"]["generator"] == "G_A_ema+G_B_ema"
    for direction in ("AtoB", "BtoA"):  # the direction was a data option when it was written; now the model's
        out = tmp_path / f"pred-{direction}"
        cli(["predict", *args, "--model.predict_direction", direction, "--predict_writer.output_dir", str(out)],
            cli_env, tmp_path)
        assert len(list(out.glob("*.png"))) == 4
    assert (tmp_path / "pred-AtoB" / "00000.png").read_bytes() != (tmp_path / "pred-BtoA" / "00000.png").read_bytes()
    assert resumed_by(args, cli_env, tmp_path)["global_step"] == 12


@pytest.mark.slow
def test_pix2pix_multiscale_with_ema_from_0667ffe(tmp_path, cli_env):
    """Written before pix2pixHD's recipe options existed: it keeps pix2pix's (D's scales averaged, padding 1, D
    first), which are the defaults, and resumes with its pool, EMA and step count."""
    old = copy("pix2pix-multiscale-ema-0667ffe.ckpt", tmp_path)
    size = ["--data.image_size", "72", "--data.load_size", "72", "--data.crop_size", "64", "--model.num_downs", "6"]
    args = [*tiny(tmp_path / "run", tmp_path / "syn"), *size, *NO_INCEPTION, "--ckpt_path", old]
    resumed = pix2pix_with_ema_runs(args, cli_env, tmp_path)
    h = resumed["hyper_parameters"]
    assert (h["netD"], h["num_D"], h["gan_scales"], h["padding_D"], h["step_order"]) == ("multiscale", 2, "mean", 1,
                                                                                      "pix2pix")

