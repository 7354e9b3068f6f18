"""What a user sends never loses their data or lies to them, on the surfaces added last (label maps, SPADE,
shards, compare, segmentation eval): each case its message, exit code and what is (not) left on disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.compare import main as compare_main
from pix2pix_lit.data.synthetic import generate
from pix2pix_lit.errors import ConfigError, DataError
from pix2pix_lit.prepare import main as prepare_main

from conftest import REPO, noise_image, one_error_line, run, run_in_process, scored_folders, write_folders


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. a user's folder given as the built-in set's root ---------------------------------------------------------
def users_folder(root: Path) -> dict[str, bytes]:
    (root / "train").mkdir(parents=True)
    Image.fromarray(noise_image(np.random.default_rng(0), 20, 10)).save(root / "train" / "holiday.png")
    (root / "notes.txt").write_text("my thesis data")
    (root / "dataset.json").write_text(json.dumps({"name": "my dataset", "version": 1}))  # not ours
    return snapshot(root)


def test_the_built_in_set_never_replaces_a_users_folder(tmp_path, cli_env):
    mine = tmp_path / "MYFOLDER"
    before = users_folder(mine)
    with pytest.raises(ConfigError, match=r"MYFOLDER holds files the built-in dataset did not write"):
        generate(mine, {"train": 2, "val": 1, "test": 1}, 16)
    assert snapshot(mine) == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="afile holds files the built-in dataset did not write"):
        generate(tmp_path / "afile", {"train": 2, "val": 1, "test": 1}, 16)
    # as users run it: one line, exit 2, the folder byte for byte
    proc = run_in_process(["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "--data.init_args.root", str(mine),
                           "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "1"],
                          cli_env, tmp_path)
    assert proc.returncode == 2
    assert "holds files the built-in dataset did not write" in one_error_line(proc)
    assert snapshot(mine) == before and not (tmp_path / "run").exists()
    # an empty folder is filled; the project's own folder is regenerated when asked for another set
    (tmp_path / "empty").mkdir()
    generate(tmp_path / "empty", {"train": 2, "val": 1, "test": 1}, 16)
    assert len(list((tmp_path / "empty" / "train").glob("*.png"))) == 2
    generate(tmp_path / "empty", {"train": 3, "val": 1, "test": 1}, 16)
    assert len(list((tmp_path / "empty" / "train").glob("*.png"))) == 3


# -- 3. ADE20K's format asked for plain id maps -----------------------------------------------------------------
def test_ade20k_format_on_plain_ids_is_refused_and_named(tmp_path):
    from pix2pix_lit.segmentation import check_ade20k_format

    plain, ade = tmp_path / "plain", tmp_path / "ade"
    plain.mkdir()
    ade.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        ids = rng.integers(0, 5, (16, 16)).astype(np.uint8)  # classes 0..4 of a 5-class segmenter
        Image.fromarray(ids, "L").save(plain / f"{i}.png")
        Image.fromarray(ids + 1 - (ids == 0), "L").save(ade / f"{i}.png")  # ADE20K style: 1..5, some 0 unlabelled
    files = sorted(plain.glob("*.png"))
    with pytest.raises(DataError, match=r"hold ids 0..4 and never 5: they look like plain class ids \(0..4; use "
                                        r"--label_format ids\)"):
        check_ade20k_format(files, 5, plain)
    check_ade20k_format(sorted(ade.glob("*.png")), 5, ade)  # ADE20K's own: accepted
    Image.fromarray(np.full((16, 16), 9, np.uint8), "L").save(ade / "9.png")
    with pytest.raises(DataError, match=r"hold id 9, but ADE20K-style maps of this segmenter's 5 classes store 0..5"):
        check_ade20k_format(sorted(ade.glob("*.png")), 5, ade)


def test_eval_labels_with_the_wrong_format_exits_2(tmp_path, capsys):
    from pix2pix_lit.evaluate import main as eval_main

    scored_folders(tmp_path, classes=5, n=2, fake_hw=(32, 32), label_hw=(32, 32))  # plain ids 0..4
    code = eval_main([str(tmp_path / "fake"), "--labels", str(tmp_path / "labels"), "--segmenter",
                      "torchvision:lraspp_mobilenet_v3_large", "--segmenter_weights", str(tmp_path / "seg.pth"),
                      "--label_format", "ade20k", "--output", str(tmp_path / "scores.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "look like plain class ids" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "scores.json").exists()


# -- 4, 8. compare and prepare combine: nothing useful, non-zero; bad files named ------------------------------
def fake_run(folder: Path, config: str | None = "model:\n  init_args:\n    lr: 0.0002\n", rows=None) -> Path:
    (folder / "csv" / "version_0").mkdir(parents=True)
    if config is not None:
        (folder / "config.yaml").write_text(config)
    rows = rows or ["epoch,step,val/fid", "0,10,250.0", "1,20,240.0"]
    (folder / "csv" / "version_0" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_compare_says_what_is_missing_and_refuses_what_it_cannot_do(tmp_path, capsys):
    r1, r2 = fake_run(tmp_path / "r1"), fake_run(tmp_path / "r2", config=None)
    assert compare_main([str(r1), str(r2), "--output", str(tmp_path / "c.png")]) == 0
    out, err = capsys.readouterr()
    assert f"{r2 / 'config.yaml'} is missing" in err and "not compared" in out
    assert "model.init_args.lr" not in out  # no option listed as "different" for want of a file
    cases = [
        (["--metrics", "val/nothing"], "no run logged any of them; logged: val/fid"),
        (["--output", str(tmp_path)], "is a folder; give a file name"),
        (["--output", str(tmp_path / "plot.txt")], "the plot is written as"),
    ]
    for extra, message in cases:
        assert compare_main([str(r1), str(r1), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    (tmp_path / "afile").write_text("x")
    fake_run(tmp_path / "badcfg", config="model: [unclosed")
    fake_run(tmp_path / "badcsv", rows=["epoch,step,val/fid", "0,ten,250.0"])
    (tmp_path / "bincfg").mkdir()
    fake_run(tmp_path / "bincfg" / "r")
    (tmp_path / "bincfg" / "r" / "config.yaml").write_bytes(bytes(range(256)))
    for run_dir, message in ((tmp_path / "afile", "afile is a file, not a run folder"),
                             (tmp_path / "badcfg", "badcfg/config.yaml cannot be read as YAML"),
                             (tmp_path / "badcsv", "badcsv/csv/version_0/metrics.csv is not a metrics table"),
                             (tmp_path / "bincfg" / "r", "r/config.yaml cannot be read as YAML")):
        assert compare_main([str(r1), str(run_dir), "--output", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_prepare_combine_refuses_one_folder_as_both_sides(tmp_path, capsys):
    write_folders(tmp_path / "d", "train", ["a", "b"])
    assert prepare_main(["combine", str(tmp_path / "d" / "train" / "A"), str(tmp_path / "d" / "train" / "A"),
                         str(tmp_path / "out")]) == 2
    assert "are the same folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- 6. every numeric option checked before anything starts ----------------------------------------------------
@pytest.mark.parametrize("option,value,message", [
    ("z_dim", 0, "model.z_dim=0 must be >= 1"),
    ("lambda_kld", -1, "model.lambda_kld=-1 must be >= 0"),
    ("aspect_ratio", 0, "model.aspect_ratio=0 must be > 0"),
    ("aspect_ratio", -2, "model.aspect_ratio=-2 must be > 0"),
    ("num_D", 0, "model.num_D=0 must be >= 1"),
    ("ngf", 0, "model.ngf=0 must be >= 1"),
    ("init_variance", -1, "model.init_variance=-1 must be > 0"),
    ("init_variance", float("nan"), "model.init_variance=nan must be > 0"),
])
def test_spade_numeric_options_are_one_line(option, value, message):
    from pix2pix_lit.models import SPADE

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SPADE(**{"ngf": 4, "ndf": 4, "label_nc": 5, "fid": False, "kid": False, option: value})


def test_every_models_numbers_are_ranged():
    from pix2pix_lit.models import CycleGAN, Pix2Pix, Segmenter

    for make, option, value, message in (
        (Pix2Pix, "ndf", 0, "model.ndf=0 must be >= 1"),
        (Pix2Pix, "init_gain", -1.0, "model.init_gain=-1.0 must be > 0"),
        (Pix2Pix, "lambda_L1", float("nan"), "model.lambda_L1=nan must be >= 0"),
        (Pix2Pix, "beta1", 1.0, r"model.beta1=1.0 must be in \[0, 1\)"),
        (Pix2Pix, "n_layers_D", 0, "model.n_layers_D=0 must be >= 1"),
        (CycleGAN, "lambda_gp", -1.0, "model.lambda_gp=-1.0 must be >= 0"),
        (CycleGAN, "kid_subset_size", 0, "model.kid_subset_size=0 must be >= 1"),
        (Segmenter, "momentum", 1.0, r"model.momentum=1.0 must be in \[0, 1\)"),
    ):
        extra = {"label_nc": 5} if make is Segmenter else {"fid": False, "kid": False, "ngf": 4, "ndf": 4}
        with pytest.raises(ConfigError, match=message):
            make(**{**extra, option: value})


@pytest.mark.slow
def test_spade_vae_on_the_quickstart_is_one_line_and_leaves_no_run(tmp_path, cli_env):
    proc = run(["fit", "-c", str(REPO / "configs" / "spade" / "quickstart.yaml"), "--model.use_vae", "true",
                "--model.ngf", "4", "--model.ndf", "4", "--data.root", str(tmp_path / "syn"), "--data.num_train", "2",
                "--data.num_val", "1", "--data.num_test", "1", "--trainer.default_root_dir", str(tmp_path / "run")],
               cli_env, tmp_path, check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "model.use_vae makes images of model.crop_size=256 (aspect_ratio 1.0) but the data is cropped to 64" in line
    assert not (tmp_path / "run").exists()


# -- 7. shards: a cut chunk, an index that is not JSON ---------------------------------------------------------
def test_damaged_shards_are_named_when_the_run_starts(tmp_path):
    from pix2pix_lit.data.streaming import StreamingPairedDataModule, verify_shards, write_shards

    write_folders(tmp_path / "src", "train", ["a", "b", "c", "d"])
    write_shards(tmp_path / "src", tmp_path / "shards")
    verify_shards(tmp_path / "shards" / "train")  # as written: fine
    chunk = sorted((tmp_path / "shards" / "train").glob("chunk-*.bin"))[0]
    whole = chunk.read_bytes()
    chunk.write_bytes(whole[: len(whole) // 2])
    dm = StreamingPairedDataModule(str(tmp_path / "shards"), load_size=32, crop_size=32, num_workers=0)
    with pytest.raises(DataError, match=rf"{chunk.name} has {len(whole) // 2} bytes but .*index.json records "
                                        rf"{len(whole)}: the file is cut short"):
        dm.setup("fit")
    chunk.write_bytes(whole)
    (tmp_path / "shards" / "train" / "index.json").write_text("{not json")
    with pytest.raises(DataError, match=r"train/index.json is not a LitData index \(JSONDecodeError\)"):
        StreamingPairedDataModule(str(tmp_path / "shards"), load_size=32, crop_size=32, num_workers=0).setup("fit")


# -- 9. what a killed prepare left is removed by the next -------------------------------------------------------
def test_a_killed_prepares_partial_folder_is_removed_by_the_next_run(tmp_path):
    write_folders(tmp_path / "d", "train", ["a", "b"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs
    stale = tmp_path / f".out.partial-{dead.pid}"
    stale.mkdir()
    for i in range(15):
        (stale / f"{i}.png").write_bytes(b"half")
    alive = tmp_path / f".out.partial-{os.getpid()}"  # a running process's (this one): never touched by others
    assert prepare_main(["combine", str(tmp_path / "d" / "train" / "A"), str(tmp_path / "d" / "train" / "B"),
                         str(tmp_path / "out")]) == 0
    assert not stale.exists() and not alive.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


# -- 10. a bad weights file stops the run before any logger starts ----------------------------------------------
@pytest.mark.slow
def test_a_bad_vgg_file_leaves_no_run_folder(tmp_path, cli_env):
    (tmp_path / "vgg.pth").write_bytes(os.urandom(1000))
    for weights, message in ((tmp_path / "none.pth", "none.pth does not exist"),
                             (tmp_path / "vgg.pth", "vgg.pth is not a PyTorch state dict")):
        proc = run(["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "--model.lambda_vgg", "10",
                    "--model.vgg_weights", str(weights), "--data.root", str(tmp_path / "syn"), "--data.num_train", "2",
                    "--data.num_val", "1", "--data.num_test", "1", "--model.fid", "false", "--model.kid", "false",
                    "--trainer.default_root_dir", str(tmp_path / "run")], cli_env, tmp_path, check=False)
        assert proc.returncode == 2 and message in one_error_line(proc)
        assert not (tmp_path / "run").exists()  # no W&B run, no output.log, no config.yaml


# -- smaller: names and files checked, one line each ------------------------------------------------------------
def test_wandb_artifact_names_are_checked_part_by_part(monkeypatch):
    from pix2pix_lit.errors import CheckpointError
    from pix2pix_lit.loggers import download_wandb_checkpoint

    monkeypatch.setenv("WANDB_MODE", "offline")
    for bad in ("wandb:a/b/c:", "wandb:/b/c:best", "wandb:a//c:best", "wandb:a/b/c:d:e", "wandb:a/b/c"):
        with pytest.raises(CheckpointError, match="give wandb:ENTITY/PROJECT/ARTIFACT:ALIAS"):
            download_wandb_checkpoint(bad)
    with pytest.raises(CheckpointError, match="needs W&B online"):
        download_wandb_checkpoint("wandb:me/pix2pix-lit/model-1a2b3c4d:best")


def test_segmenter_specs_are_named_before_their_weights(tmp_path):
    from pix2pix_lit.segmentation import check_scorer_spec

    with pytest.raises(ConfigError, match=r"--segmenter='torchvision:nosuchnet' is not known; choose one of: "
                                          r"torchvision:deeplabv3"):
        check_scorer_spec("torchvision:nosuchnet", None)
    (tmp_path / "seg.ckpt").write_bytes(b"x")
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"--segmenter_weights .*w.pth: --segmenter .*seg.ckpt is a Segmenter "
                                          r"checkpoint with its own weights; leave --segmenter_weights out"):
        check_scorer_spec(str(tmp_path / "seg.ckpt"), str(tmp_path / "w.pth"))


def test_the_checkpoint_mismatch_hint_names_the_trained_models_configs():
    from pix2pix_lit.cli import config_hint
    from pix2pix_lit.models import SPADE, CycleGAN, Pix2Pix

    assert config_hint(CycleGAN) == " (e.g. -c configs/cyclegan/...)"
    assert "configs/spade/" in config_hint(SPADE) and "configs/cyclegan" not in config_hint(Pix2Pix)
    assert config_hint(type("MyModel", (), {})) == ""


@pytest.mark.parametrize("keep,aliases", [(True, [["best"], ["latest"]]), ("last", [["latest"]]),
                                          ("best", [["best"]])])
def test_log_checkpoints_keeps_what_it_is_told(tmp_path, monkeypatch, keep, aliases):
    from types import SimpleNamespace

    from pix2pix_lit.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("best.ckpt", "last.ckpt"):
        torch.save({"global_step": 3, "epoch": 1, "hyper_parameters": {}, "state_dict": {}}, tmp_path / name)
    logger = WandbLogger(save_dir=str(tmp_path), log_checkpoints=keep, add_file_policy="immutable")
    logged = []
    logger._experiment = SimpleNamespace(id="abc", log_artifact=lambda artifact, aliases: logged.append(aliases))
    cb = SimpleNamespace(best_model_path=str(tmp_path / "best.ckpt"), monitor="val/fid", best_model_score=1.0,
                         last_model_path=str(tmp_path / "last.ckpt"))
    logger._seen_checkpoint_callbacks[id(cb)] = cb
    logger._log_checkpoint_artifacts()
    assert logged == aliases
    with pytest.raises(ConfigError, match="log_checkpoints='all': choose true"):
        WandbLogger(save_dir=str(tmp_path), log_checkpoints="all")


def test_a_wandb_run_records_the_commit_of_the_checkout_its_run_folder_is_in(tmp_path, monkeypatch):
    """The run folder (``runs/NAME`` in a checkout) is made before W&B starts, so W&B finds the repository around it
    and records its commit with the run (a run folder made after: "git root ... does not exist", no commit)."""
    import wandb

    from pix2pix_lit.loggers import WandbLogger

    from wandb_reader import records

    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path / "runs" / "x"), project="p")
    try:
        assert logger.experiment is not None
    finally:
        wandb.finish()
    (run_file,) = (tmp_path / "runs" / "x" / "wandb").glob("offline-run-*/run-*.wandb")
    commits = [r.run.git.commit for r in records(run_file) if r.WhichOneof("record_type") == "run"]
    assert commits and set(commits) == {head}


def test_the_offline_note_comes_with_the_run_folder_not_before_a_refusal(tmp_path, monkeypatch, caplog, cli_env):
    """Without credentials W&B logs offline and says where — once the run folder is made; a command stopped by a bad
    option before that writes no run and says nothing of one."""
    import wandb

    from pix2pix_lit.loggers import WandbLogger

    env = {k: v for k, v in cli_env.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env["NETRC"] = str(tmp_path / "no-netrc")  # no credentials anywhere
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", env["NETRC"])
    with caplog.at_level("INFO"):
        bad = run_in_process(["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "--model.r1_every", "0",
                              "--trainer.default_root_dir", str(tmp_path / "bad")], env, tmp_path)
        assert bad.returncode == 2 and "model.r1_every" in one_error_line(bad)
        assert "W&B" not in caplog.text + bad.stderr + bad.stdout and not (tmp_path / "bad").exists()
        logger = WandbLogger(save_dir=str(tmp_path / "good"), project="p")
        assert "W&B" not in caplog.text
        try:
            assert logger.experiment is not None
        finally:
            wandb.finish()
    assert caplog.text.count(f"logging offline to {tmp_path / 'good' / 'wandb'}") == 1
    assert list((tmp_path / "good" / "wandb").glob("offline-run-*"))
