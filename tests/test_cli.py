"""The command line as a user runs it: fit / validate / test / predict / compare, W&B run read back, errors."""

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pix2pix_lit.errors import ConfigError

from conftest import REPO, cyclegan_cli, one_error_line, page_data, run, run_in_process, tiny
from wandb_reader import read_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    tmp = tmp_path_factory.mktemp("cli")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore")
    env.pop("WANDB_API_KEY", None)
    run(["fit", *tiny(tmp / "run_a", tmp / "syn", "--trainer.max_epochs", "2")], env, tmp)
    return tmp, env


def test_fit_writes_a_wandb_run_with_metrics_grids_and_config(trained):
    tmp, _ = trained
    root = tmp / "run_a"
    (run_dir,) = list((root / "wandb").glob("offline-run-*"))
    data = read_run(run_dir)
    keys = set().union(*data["history"])
    for k in ("val/fid", "val/kid_mean", "val/kid_std", "val/ssim", "val/psnr", "train/loss_D",
              "train/loss_G_GAN", "train/loss_G_L1", "lr/G", "lr/D"):
        assert k in keys, k
    fids = [h["val/fid"] for h in data["history"] if "val/fid" in h]
    assert len(fids) == 2 and all(f > 0 for f in fids)
    assert "images/val" in {k.split("/_type")[0] for k in keys if k.endswith("/_type")}
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert data["config"]["model.init_args.lambda_L1"] == 100.0 and data["config"]["model.init_args.netG"] == "unet"
    assert data["config"]["model.class_path"].endswith("Pix2Pix")
    assert data["config"]["data.init_args.num_train"] == 8
    # local files: checkpoints, grids, the resolved config
    ckpts = {p.name for p in (root / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert len(list((root / "images").glob("val_epoch*.png"))) == 2
    assert yaml.safe_load((root / "config.yaml").read_text())["model"]["init_args"]["num_downs"] == 5
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # 8 images / batch 4 x 2 epochs: one step per batch
    assert not any("Mixed" in k or "inception" in k.lower() for k in ckpt["state_dict"])  # Inception is not saved
    grid = Image.open(sorted((root / "images").glob("val_epoch*.png"))[0])
    assert grid.size == (3 * 34 + 2, 4 * 34 + 2)  # 4 val samples as rows of source | output | target, 32 px
    assert len(list((root / "images").glob("val_start_step0000000.png"))) == 1  # before any training
    page = page_data(root / "images" / "index.html")  # every grid, newest first, linked relatively
    assert sorted(r["grid"] for r in page["rows"]) == sorted(p.name for p in (root / "images").glob("*.png"))
    assert page["rows"][0]["step"] == 4 and page["rows"][-1]["step"] == 0
    # the best and the last checkpoint, as versions of the run's model artifact (recorded offline for wandb sync)
    best, last = data["artifacts"]
    best_file = next((root / "checkpoints").glob("best-*.ckpt"))
    assert {a["name"] for a in (best, last)} == {f"model-{run_dir.name.rsplit('-', 1)[-1]}"}
    assert {a["type"] for a in (best, last)} == {"model"} and "best" in best["aliases"] and "latest" in last["aliases"]
    assert best["metadata"]["monitor"] == "val/fid" and best["metadata"]["score"] == pytest.approx(min(fids), rel=1e-6)
    assert best["metadata"]["original_filename"] == best_file.name and last["metadata"]["original_filename"] == "last.ckpt"
    # the best is whichever epoch had the lower FID (epoch 0 at step 2 on some CPUs): its step is its file's
    best_step = int(re.search(r"step(\d+)", best_file.name).group(1))
    assert best_step in (2, 4) and best["metadata"]["step"] == best_step
    assert last["metadata"]["step"] == 4 and last["metadata"]["epoch"] == 2
    assert re.fullmatch(r"[0-9a-f]{64}", best["metadata"]["config_sha256"])
    assert best["metadata"]["config_sha256"] == last["metadata"]["config_sha256"]  # one run, one config
    assert Path(best["files"]["model.ckpt"]).read_bytes() == best_file.read_bytes()  # the file itself, staged
    l1 = [h["samples/val_l1"] for h in data["history"] if "samples/val_l1" in h]
    assert len(l1) == 3 and all(0 < v < 2 for v in l1)
    assert "val/l1" in keys


def test_resume_continues_step_count(trained):
    tmp, env = trained
    # seeded otherwise than the first fit, so a fit that ignored the checkpoint could not look like a resumed one
    proc = run(["fit", *tiny(tmp / "run_a", tmp / "syn", "--trainer.max_epochs", "3", "--ckpt_path", "last",
                            "--seed_everything", "1")], env, tmp)
    assert "Restored all states from the checkpoint at" in proc.stdout + proc.stderr
    ckpt = torch.load(tmp / "run_a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 3  # 2 epochs before + 1 resumed, 2 batches each
    # the resumed fit logged only its own epoch: steps 5 and 6 (a fit from scratch would log from step 0)
    resumed_log = max((tmp / "run_a" / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    steps = {int(row["step"]) for row in csv.DictReader(resumed_log.open()) if row.get("train/loss_G_L1")}
    assert steps and min(steps) >= 4, steps


def test_test_writes_metrics_json_and_predict_writes_images(trained):
    tmp, env = trained
    ckpt = tmp / "run_a" / "checkpoints" / "last.ckpt"
    proc = run(["test", *tiny(tmp / "run_a", tmp / "syn"), "--ckpt_path", str(ckpt)], env, tmp)
    assert "litlogger" not in proc.stdout + proc.stderr  # Lightning's advert for a cloud logger, filtered out
    report = json.loads((ckpt.parent / "metrics.json").read_text())
    assert set(report["metrics"]) >= {"fid", "kid_mean", "ssim", "psnr"} and report["num_images"] == 4
    rows = (ckpt.parent / "per_image.csv").read_text().splitlines()
    assert rows[0] == "name,ssim,psnr,l1" and len(rows) == 5
    ssim_mean = sum(float(r.split(",")[1]) for r in rows[1:]) / 4
    assert ssim_mean == pytest.approx(report["metrics"]["ssim"], abs=1e-4)
    protocol = report["protocol"]
    assert protocol["inference_mode"] == "paper" and "no --eval" in protocol["inference_mode_means"]
    assert protocol["split"] == "test" and protocol["split_selected_checkpoint"] is False
    assert protocol["official_test_preprocessing"] and protocol["load_size"] == protocol["crop_size"] == 32
    # which weights were scored and with which FID weights: what papers differ on
    import hashlib

    from pix2pix_lit.inception import find_inception_weights

    selection = protocol["checkpoint_selection"]
    assert selection["file"] == "last.ckpt" and selection["kind"].startswith("last") and selection["global_step"] in (4, 6)
    weights = find_inception_weights()
    assert protocol["fid_weights"] == {"file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert protocol["fid_real_side"] == "the real images of the same split"
    tested = max((tmp / "run_a" / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    assert read_run(tested)["summary"]["test/protocol"]["checkpoint_selection"] == selection
    # index.html: each image's source | output | target (written under images/) with its scores
    page = page_data(ckpt.parent / "index.html")
    assert page["images"] == ["source", "output", "target"] and page["scores"] == ["l1", "ssim", "psnr"]
    assert page["summary"]["fid"] == report["metrics"]["fid"] and len(page["rows"]) == 4
    for row in page["rows"]:
        out_img, target = (np.asarray(Image.open(ckpt.parent / row[k]), dtype=np.float64) for k in ("output", "target"))
        assert row["l1"] == pytest.approx(np.abs(out_img - target).mean() / 127.5, abs=0.01)  # by hand, from the PNGs
        assert (ckpt.parent / row["source"]).is_file()
    out = tmp / "pred"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_in_process(["predict", *tiny(tmp / "run_a", tmp / "syn"), "--ckpt_path", str(ckpt),
                        "--predict_writer.output_dir", str(out)], env, tmp, check=True)  # `test` ran as a process
    assert not [w for w in caught if "LeafSpec" in str(w.message)]  # torch's deprecation inside Lightning: filtered
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert [r["output"] for r in page_data(out / "index.html")["rows"]] == [f"{i:05d}.png" for i in range(4)]
    assert yaml.safe_load((tmp / "run_a" / "config.yaml").read_text())["ckpt_path"] in (None, "last")
    # test and predict record their own configs beside the fit's, named by the command
    assert (tmp / "run_a" / "config-test.yaml").is_file() and (tmp / "run_a" / "config-predict.yaml").is_file()


def test_test_without_a_checkpoint_says_it_scores_untrained_weights(trained, tmp_path, caplog):
    """`test` with no --ckpt_path runs the initial weights: allowed (protocol checks, an untrained baseline), but
    said before the numbers, naming the run's last checkpoint, and written into metrics.json."""
    tmp, env = trained
    with caplog.at_level("WARNING"):
        run_in_process(["test", *tiny(tmp / "run_a", tmp / "syn"), "--trainer.logger", "false",
                        "--test_report.output_dir", tmp_path / "rep"], env, tmp, check=True)
    assert f"test without --ckpt_path runs the networks' initial weights (untrained); pass --ckpt_path " \
           f"{tmp / 'run_a' / 'checkpoints' / 'last.ckpt'}" in caplog.text
    selection = json.loads((tmp_path / "rep" / "metrics.json").read_text())["protocol"]["checkpoint_selection"]
    assert selection["kind"].startswith("untrained")


def test_compare_prints_table_and_writes_plot(trained):
    tmp, env = trained
    run(["fit", *tiny(tmp / "run_b", tmp / "syn", "--trainer.max_epochs", "1", "--model.lambda_L1", "10")], env, tmp)
    proc = run_in_process(["compare", str(tmp / "run_a"), str(tmp / "run_b"), "--output", str(tmp / "cmp.png")], env, tmp,
                          check=True)
    assert re.search(r"model\.init_args\.lambda_L1\s+100\s+10\n", proc.stdout), proc.stdout
    assert "best val/fid (step)" in proc.stdout and "run_a" in proc.stdout and "run_b" in proc.stdout
    assert "trainer.max_epochs" in proc.stdout
    assert Image.open(tmp / "cmp.png").size[0] > 400
    bad = run_in_process(["compare", str(tmp / "nothing")], env, tmp)
    assert bad.returncode == 2 and "nothing does not exist" in bad.stderr


def test_the_help_names_every_command_the_docs_use(tmp_path):
    """``pix2pix-lit --help`` lists every command the README and docs/ tell users to type (LightningCLI's four and
    the plain ones: eval, export, serve, ...), each of which answers ``--help``; with no command at all it is one
    error line naming them, exit 2."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    used = {m for page in pages for m in re.findall(r"(?:^|`)pix2pix-lit ([a-z][a-z-]+)", page.read_text(), re.M)}
    assert {"fit", "test", "predict", "eval", "export", "serve", "prepare", "compare"} <= used, used
    top = run_in_process(["--help"], {}, tmp_path)
    assert top.returncode == 0, top.stderr
    for command in sorted(used):
        assert re.search(rf"^\s+{command}\s", top.stdout, re.M), f"{command} is not in pix2pix-lit --help"
        usage = run_in_process([command, "--help"], {}, tmp_path)
        assert usage.returncode == 0 and re.match(rf"usage: pix2pix-lit (\[options\] )?{command} ", usage.stdout), (
            command, usage.stdout[:200], usage.stderr[-500:])
    bare = run_in_process([], {}, tmp_path)
    assert bare.returncode == 2 and bare.stdout == ""
    line = one_error_line(bare)
    assert all(c in line for c in ("fit", "predict", "export", "serve", "--help")), line


def test_a_data_folder_alone_is_read_as_its_model_reads_it_and_the_other_kind_is_one_line(trained, tmp_path):
    """``--data.root DIR`` with no data class reads DIR as the official code reads it for the model (pix2pix: the
    aligned A|B pairs the built-in data is written as), where it was the abstract base's NotImplementedError; a model
    given the other kind of data (CycleGAN on pairs) stops in one line before a run folder exists, where it was a
    KeyError at the first batch with a W&B run written; a data class that is not one is one line too."""
    tmp, env = trained
    run_in_process(["fit", "--data.root", tmp / "syn", "--data.load_size", "36", "--data.crop_size", "32",
                    "--data.num_workers", "0", "--model.netG", "unet", "--model.num_downs", "5", "--model.ngf", "8",
                    "--model.ndf", "8", "--model.fid", "false", "--model.kid", "false", "--trainer.max_steps", "2",
                    "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", tmp_path / "plain"],
                   env, tmp_path, check=True)
    assert (tmp_path / "plain" / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())["data"]["class_path"].endswith(
        ".PairedDataModule")
    wrong = run_in_process(["fit", *cyclegan_cli(tmp_path / "cyclegan", tmp / "syn", "--data",
                                               "pix2pix_lit.data.SyntheticPairedDataModule")], env, tmp_path)
    line = one_error_line(wrong)
    assert wrong.returncode == 2 and not (tmp_path / "cyclegan").exists()
    assert "CycleGAN" in line and "unpaired" in line and "UnpairedDataModule" in line, line
    for name in ("Nope", "pix2pix_lit.data.ImageDataModule"):  # not a data module; the base of them
        named = run_in_process(["fit", "--data", name, "--data.root", tmp / "syn", "--trainer.default_root_dir",
                                tmp_path / "named"], env, tmp_path)
        assert named.returncode == 2 and not (tmp_path / "named").exists()
        assert name in one_error_line(named) and "PairedDataModule" in one_error_line(named)


def test_cli_bad_input_one_line_no_output(trained, tmp_path):
    _, env = trained
    missing = run(["fit", "-c", str(REPO / "configs" / "maps.yaml"), "--data.root", str(tmp_path / "nope"),
                   "--trainer.default_root_dir", str(tmp_path / "r")], env, tmp_path, check=False)
    assert missing.returncode == 2
    assert "nope does not exist; set data.root" in one_error_line(missing)
    assert not (tmp_path / "r").exists()  # no checkpoint, config, CSV or W&B run of a run that never started
    odd = tmp_path / "odd" / "train"
    odd.mkdir(parents=True)
    Image.new("RGB", (65, 32)).save(odd / "a.png")
    proc = run_in_process(["fit", "-c", str(REPO / "configs" / "maps.yaml"), "--data.root", str(odd.parent),
                           "--trainer.default_root_dir", str(tmp_path / "r")], env, tmp_path)
    assert proc.returncode == 2 and "a.png is 65 pixels wide, an odd width" in one_error_line(proc)
    assert proc.stderr.strip().splitlines()[-1].startswith("pix2pix-lit: error:")
    assert not (tmp_path / "r").exists()
    crop = run_in_process(["fit", "-c", str(REPO / "configs" / "maps.yaml"), "--data.crop_size", "300",
                           "--trainer.default_root_dir", str(tmp_path / "r")], env, tmp_path)
    assert crop.returncode == 2 and "crop_size=300 is larger than data.load_size=286" in one_error_line(crop)
    # a crop the generator cannot take: before the run starts (no model summary, no run folder), not at its first batch
    deep = run_in_process(["fit", *tiny(tmp_path / "r", trained[0] / "syn", "--model.num_downs", "6")], env, tmp_path)
    assert deep.returncode == 2 and "images are 32x32 but netG=unet needs sides divisible by 64" in one_error_line(deep)
    assert "Total params" not in deep.stdout + deep.stderr and not (tmp_path / "r").exists()
    for option, value, message in (("--trainer.precision", "64", "trainer.precision=64 is not supported: use 32-true"),
                                   ("--data.eval_batch_size", "0", "data.eval_batch_size=0 must be >= 1")):
        proc = run_in_process(["fit", *tiny(tmp_path / "r", trained[0] / "syn", option, value)], env, tmp_path)
        assert proc.returncode == 2 and message in one_error_line(proc) and not (tmp_path / "r").exists()


def test_cli_unknown_names_list_choices(trained, tmp_path):
    _, env = trained
    for option, value, choice in (("--model.netG", "unet_512", "resnet_9blocks"), ("--model.gan_mode", "wgan", "hinge")):
        launch = run if option == "--model.netG" else run_in_process  # one in its own process: the real exit code
        proc = launch(["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), option, value], env, tmp_path, check=False)
        assert proc.returncode != 0 and value in proc.stderr and choice in proc.stderr
    # a misspelt option: the nearest one the class takes, not jsonargparse's dump of the union it tried
    for option, expected in (("--model.lamda_L1", "model.lamda_L1 is not an option of Pix2Pix; did you mean "
                              "model.lambda_L1? (pix2pix-lit fit --model.help Pix2Pix lists them)"),
                             ("--data.batchsize", "data.batchsize is not an option of SyntheticPairedDataModule; did "
                              "you mean data.batch_size?")):
        proc = run_in_process(["fit", "-c", REPO / "configs" / "quickstart.yaml", option, "4"], env, tmp_path)
        assert proc.returncode == 2 and expected in one_error_line(proc) and "Union" not in proc.stderr
    # a value of the wrong type: the option, the value and what it takes
    for config, option, value, expected in (
            ("cyclegan/quickstart.yaml", "--model.predict_direction", "CtoD",
             "model.predict_direction='CtoD' is not one of AtoB, BtoA (pix2pix-lit fit --model.help CycleGAN"),
            ("cut/quickstart.yaml", "--model.nce_layers", "0,4,8", "model.nce_layers='0,4,8' is not a list, written "
             "[a, b, c]"),
            ("quickstart.yaml", "--model.lr", "fast", "model.lr='fast' is not a float")):
        proc = run_in_process(["fit", "-c", REPO / "configs" / config, option, value], env, tmp_path)
        assert proc.returncode == 2 and expected in one_error_line(proc) and "Union" not in proc.stderr
    # Trainer settings Lightning refuses, or divides by: one line before any run folder, not a traceback
    for option, value, expected in (("--trainer.accumulate_grad_batches", "2", "Lightning: Automatic gradient "
                                     "accumulation is not supported for manual optimization"),
                                    ("--trainer.limit_val_batches", "-1", "Lightning: You have passed invalid value -1"),
                                    ("--trainer.check_val_every_n_epoch", "0", "check_val_every_n_epoch=0: give a"),
                                    ("--trainer.val_check_interval", "0", "val_check_interval=0: give a fraction")):
        proc = run_in_process(["fit", "-c", REPO / "configs" / "quickstart.yaml", option, value,
                               "--trainer.default_root_dir", tmp_path / "lt"], env, tmp_path)
        assert proc.returncode == 2 and expected in one_error_line(proc) and "Traceback" not in proc.stderr
        assert not (tmp_path / "lt").exists()
    # a GPU setting where there is none (gpu.yaml on a laptop): one line before any run folder, not a traceback
    if not torch.cuda.is_available():
        proc = run_in_process(["fit", "-c", REPO / "configs" / "quickstart.yaml", "-c", REPO / "configs" / "trainer" /
                               "gpu.yaml", "--trainer.default_root_dir", tmp_path / "gpu"], env, tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and not (tmp_path / "gpu").exists()
        assert "trainer.accelerator gpu: no GPU is visible to this process" in one_error_line(proc)


def test_truncated_jpeg_stops_before_the_run_starts(trained, tmp_path):
    _, env = trained
    data = tmp_path / "syn"
    from pix2pix_lit.data.synthetic import generate

    generate(data, {"train": 8, "val": 4, "test": 4}, 36)
    victim = data / "train" / "00003.png"
    Image.open(victim).save(data / "train" / "00003.jpg", quality=95)
    victim.unlink()
    jpeg = (data / "train" / "00003.jpg").read_bytes()
    (data / "train" / "00003.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # the header still reads fine
    assert Image.open(data / "train" / "00003.jpg").size == (72, 36)
    proc = run(["fit", *tiny(tmp_path / "r", data, "--trainer.max_epochs", "1", "--model.fid", "false",
                              "--model.kid", "false", "--data.num_workers", "1")], env, tmp_path, check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "00003.jpg cannot be decoded" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # no W&B run, CSV, config or checkpoint


def test_bad_checkpoints_are_one_line_and_write_nothing(trained, tmp_path):
    tmp, env = trained
    good = torch.load(tmp / "run_a" / "checkpoints" / "last.ckpt", weights_only=True)
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes((tmp / "run_a" / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    other = tmp_path / "other.ckpt"
    key = "G.model.model.0.weight"
    good["state_dict"][key] = torch.zeros(16, 3, 4, 4)
    torch.save(good, other)
    cases = [
        (tmp_path / "missing.ckpt", "missing.ckpt does not exist"),
        (truncated, "cut.ckpt cannot be read"),
        (other, f"made for another architecture than this config (1 tensor(s) differ in shape, e.g. {key}"),
        # a W&B model artifact needs W&B online (env: WANDB_MODE=offline); a malformed name is told how to spell it
        ("wandb:me/pix2pix-lit/model-1a2b3c4d:best", "needs W&B online"),
        ("wandb:model-1a2b3c4d", "give wandb:ENTITY/PROJECT/ARTIFACT:ALIAS"),
    ]
    for command in ("test", "predict", "fit"):
        for ckpt, message in cases:
            # one case in its own process (the real exit code), the rest in this one
            launch = run if (command, ckpt) == ("fit", other) else run_in_process
            proc = launch([command, *tiny(tmp_path / "r", tmp / "syn"), "--ckpt_path", str(ckpt)], env, tmp_path, check=False)
            assert proc.returncode == 2, (command, ckpt, proc.stderr[-2000:])
            assert message in one_error_line(proc) and "Traceback" not in proc.stderr
            assert not (tmp_path / "r").exists()


def test_run_options_come_from_the_command_line_with_a_checkpoint(trained, tmp_path):
    tmp, env = trained
    ckpt = str(tmp / "run_a" / "checkpoints" / "last.ckpt")
    outs = {}
    for mode in ("paper", "eval"):
        # --model.ngf 16 defines the network: the checkpoint's 8 wins and the weights load (in this process: the
        # same command line through main(); the test below runs as its own process)
        run_in_process(["predict", *tiny(tmp / "run_a", tmp / "syn"), "--ckpt_path", ckpt, "--model.inference_mode",
                        mode, "--model.ngf", "16", "--predict_writer.output_dir", str(tmp_path / mode)], env, tmp_path,
                       check=True)
        outs[mode] = (tmp_path / mode / "00000.png").read_bytes()
    assert outs["paper"] != outs["eval"]
    report = tmp_path / "report"
    run(["test", *tiny(tmp / "run_a", tmp / "syn"), "--ckpt_path", ckpt, "--model.inference_mode", "eval",
         "--test_report.output_dir", str(report)], env, tmp_path)
    assert json.loads((report / "metrics.json").read_text())["protocol"]["inference_mode"] == "eval"


def test_whole_number_limits_mean_batches_and_val_split_is_flagged(trained, tmp_path):
    tmp, env = trained
    ckpt = str(tmp / "run_a" / "checkpoints" / "last.ckpt")
    proc = run(["test", *tiny(tmp / "run_a", tmp / "syn"), "--ckpt_path", ckpt, "--data.batch_size", "2",
                "--trainer.limit_test_batches", "1", "--data.test_split", "val", "--test_report.output_dir",
                str(tmp_path)], env, tmp_path)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["num_images"] == 2  # 1 batch of 2, not 100% of the 4 images
    assert report["protocol"]["split"] == "val" and report["protocol"]["split_selected_checkpoint"] is True
    assert "testing on the validation split (val)" in proc.stderr + proc.stdout
    run_in_process(["test", *tiny(tmp / "run_a", tmp / "syn"), "--ckpt_path", ckpt, "--data.batch_size", "2",
                    "--trainer.limit_test_batches", "1.0", "--test_report.output_dir", str(tmp_path)], env, tmp_path,
                   check=True)
    assert json.loads((tmp_path / "metrics.json").read_text())["num_images"] == 4  # 1.0 is 100%


def test_eval_command_equals_torch_fidelity(trained, tmp_path):
    import warnings

    import torch_fidelity

    from pix2pix_lit.metrics import find_inception_weights

    tmp, env = trained
    real = tmp / "syn" / "val"
    fake, reals = tmp_path / "fake", tmp_path / "real"
    fake.mkdir()
    reals.mkdir()
    for i, path in enumerate(sorted(real.glob("*.png")) + sorted((tmp / "syn" / "test").glob("*.png"))):
        img = Image.open(path)
        w, h = img.size
        img.crop((0, 0, w // 2, h)).save(fake / f"{i:03d}.png")
        img.crop((w // 2, 0, w, h)).save(reals / f"{i:03d}.png")
    out = tmp_path / "m.json"
    proc = run(["eval", str(fake), str(reals), "--output", str(out), "--kid-subset-size", "4"], env, tmp_path)
    result = json.loads(out.read_text())
    assert result["num_images"] == 8 and "fid" in proc.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch_fidelity.calculate_metrics(
            input1=str(fake), input2=str(reals), fid=True, cuda=False, verbose=False,
            feature_extractor_weights_path=str(find_inception_weights()),
        )
    assert result["metrics"]["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    assert set(result["metrics"]) >= {"fid", "kid_mean", "kid_std", "ssim", "psnr", "l1"}
    missing = run_in_process(["eval", str(tmp_path / "nope"), str(reals)], env, tmp_path)
    assert missing.returncode == 2 and "nope does not exist" in missing.stderr.strip().splitlines()[-1]
    isc = run_in_process(["eval", str(fake), str(reals), "--isc"], env, tmp_path)
    assert isc.returncode == 2 and "Inception Score needs the Inception's classifier layer" in isc.stderr
    (reals / "007.png").unlink()
    Image.new("RGB", (20, 20)).save(reals / "007.png")
    sized = run_in_process(["eval", str(fake), str(reals), "--no-fid", "--no-kid"], env, tmp_path)
    assert sized.returncode == 2 and "pass --size N" in sized.stderr
    # the official test.py layout: <name>_fake_B.png and <name>_real_B.png in one folder
    official = tmp_path / "images"
    official.mkdir()
    for i in range(3):
        Image.open(fake / f"{i:03d}.png").save(official / f"{i}_fake_B.png")
        Image.open(fake / f"{i:03d}.png").save(official / f"{i}_real_B.png")
        Image.open(fake / f"{i:03d}.png").save(official / f"{i}_real_A.png")
    same = run_in_process(["eval", str(official), str(official), "--fake-suffix", "_fake_B.png", "--real-suffix",
                           "_real_B.png", "--no-fid", "--no-kid"], env, tmp_path)
    assert same.returncode == 0, same.stderr[-2000:]
    assert "(3 image pairs)" in same.stdout and re.search(r"\nl1\s+0\n", same.stdout)  # each fake is its real
    assert float(re.search(r"ssim\s+(\S+)", same.stdout).group(1)) > 0.9999


def test_eval_unpaired_and_stored_statistics_equal_torch_fidelity(tmp_path, cli_env):
    """``eval --unpaired``: every generated image against every real one, names and counts free (CycleGAN/CUT's
    protocol: translated test A against real test B), as torch-fidelity scores two folders; ``--real_stats``: the
    same FID against statistics ``--save_stats`` wrote of those real images."""
    import warnings

    import torch_fidelity

    from pix2pix_lit.metrics import find_inception_weights

    rng = np.random.default_rng(0)
    fake, real = tmp_path / "translated_A", tmp_path / "test_B"
    for folder, n, side, prefix in ((fake, 5, 36, "n02381460_"), (real, 7, 44, "n02391049_")):
        folder.mkdir()
        for i in range(n):
            base = rng.integers(0, 255, 3) if folder is real else rng.integers(60, 200, 3)
            noise = rng.integers(-40, 40, (side, side, 3))
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{prefix}{i}.png")
    out = tmp_path / "m.json"
    proc = run_in_process(["eval", fake, real, "--unpaired", "--kid-subset-size", "4", "--output", out], cli_env,
                          tmp_path, check=True)
    result = json.loads(out.read_text())
    assert (result["num_images"], result["num_real_images"]) == (5, 7) and "5 generated images against 7" in proc.stdout
    assert set(result["metrics"]) == {"fid", "kid_mean", "kid_std"}  # no pairs: no SSIM/PSNR/L1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch_fidelity.calculate_metrics(input1=str(fake), input2=str(real), fid=True, cuda=False, verbose=False,
                                               feature_extractor_weights_path=str(find_inception_weights()))
    assert result["metrics"]["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    # the official CycleGAN test.py's one folder: <name>_fake_B.png, <name>_real_B.png and more, kept by their endings
    official = tmp_path / "images"
    official.mkdir()
    for i, f in enumerate(sorted(fake.iterdir())):
        (official / f"{i}_fake_B.png").write_bytes(f.read_bytes())
        (official / f"{i}_rec_A.png").write_bytes(f.read_bytes())
    for i, f in enumerate(sorted(real.iterdir())):
        (official / f"{i}_real_B.png").write_bytes(f.read_bytes())
    run_in_process(["eval", official, official, "--unpaired", "--fake-suffix", "_fake_B.png", "--real-suffix",
                    "_real_B.png", "--kid-subset-size", "4", "--output", out], cli_env, tmp_path, check=True)
    assert json.loads(out.read_text())["metrics"] == pytest.approx(result["metrics"], rel=1e-6)
    none = run_in_process(["eval", official, real, "--unpaired", "--fake-suffix", "_fake_A.png"], cli_env, tmp_path)
    assert none.returncode == 2 and "no image in" in none.stderr and "ends with --fake-suffix '_fake_A.png'" in none.stderr
    # statistics are of one image size (FID depends on it): both sides resized to 40 here
    stats = tmp_path / "test_B.npz"
    run_in_process(["eval", "--save_stats", real, stats, "--size", "40"], cli_env, tmp_path, check=True)
    run_in_process(["eval", fake, real, "--unpaired", "--no-kid", "--size", "40", "--output", out], cli_env, tmp_path,
                   check=True)
    at_40 = json.loads(out.read_text())["metrics"]["fid"]
    run_in_process(["eval", fake, "--real_stats", stats, "--size", "40", "--output", out], cli_env, tmp_path, check=True)
    assert json.loads(out.read_text())["metrics"] == {"fid": pytest.approx(at_40, rel=1e-6)}
    # what cannot be: a generated image of another size than the statistics', pairs' metrics, nothing to score
    sized = run_in_process(["eval", fake, "--real_stats", stats], cli_env, tmp_path)
    line = sized.stderr.strip().splitlines()[-1]
    assert sized.returncode == 2 and line.startswith("pix2pix-lit eval: error: --real_stats")
    assert "holds statistics of 40x40 images but the generated ones are 36x36" in line
    for extra, message in ((["--no-fid", "--no-kid"], "--unpaired scores FID/KID only"),
                           (["--lpips_weights", tmp_path / "x.pth"], "--lpips_weights compares each image with its "
                            "namesake")):
        bad = run_in_process(["eval", fake, real, "--unpaired", *extra], cli_env, tmp_path)
        assert bad.returncode == 2 and message in bad.stderr.strip().splitlines()[-1], bad.stderr[-500:]


def test_export_command_from_a_checkpoint(trained, tmp_path):
    from pix2pix_lit.serving.export import load_exported

    tmp, env = trained
    ckpt = tmp / "run_a" / "checkpoints" / "last.ckpt"
    out = tmp_path / "g.onnx"
    proc = run(["export", "--ckpt_path", str(ckpt), "--format", "onnx", "--output", str(out)], env, tmp_path)
    assert f"wrote {out}" in proc.stdout
    run_onnx, contract = load_exported(out)
    assert contract["direction"] == "AtoB" and contract["input"]["channels"] == 3
    assert contract["global_step"] == torch.load(ckpt, weights_only=True)["global_step"]
    assert contract["input"]["size_multiple"] == 32 and contract["inference_mode"] == "eval"
    # the same image through predict (eval mode) and through the exported file
    pred = tmp_path / "pred"
    run_in_process(["predict", *tiny(tmp / "run_a", tmp / "syn"), "--ckpt_path", str(ckpt), "--model.inference_mode",
                    "eval", "--predict_writer.output_dir", str(pred)], env, tmp_path, check=True)
    src = Image.open(tmp / "syn" / "test" / "00000.png")
    w, h = src.size
    a = torch.from_numpy(np.asarray(src.crop((0, 0, w // 2, h)).resize((32, 32), Image.Resampling.BICUBIC)))
    x = a.permute(2, 0, 1)[None].float() / 127.5 - 1
    exported = ((torch.from_numpy(run_onnx(x))[0].clamp(-1, 1) + 1) * 127.5).round()
    predicted = torch.from_numpy(np.asarray(Image.open(pred / "00000.png"))).permute(2, 0, 1).float()
    assert (exported - predicted).abs().max() <= 1  # equal up to 8-bit rounding
    bad = run_in_process(["export", "--ckpt_path", str(tmp_path / "none.ckpt"), "--format", "torchscript"], env, tmp_path)
    assert bad.returncode == 2 and "none.ckpt does not exist" in bad.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.glob("*.pt"))


# every run config (overlays apart; zoo.yaml is the model zoo's catalogue, checked by tests/test_zoo.py)
CONFIGS = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")
                 if p.parent.name not in ("trainer", "data") and p.name != "zoo.yaml")
DATA_OVERLAYS = sorted(p.name for p in (REPO / "configs" / "data").glob("*.yaml"))


@pytest.mark.parametrize("overlay", DATA_OVERLAYS)
def test_every_data_overlay_builds_with_the_config_its_header_names(overlay, tmp_path, monkeypatch):
    from pix2pix_lit.cli import build_cli

    text = (REPO / "configs" / "data" / overlay).read_text()
    (command,) = [line for line in text.splitlines() if line.startswith("#") and " fit -c " in line]
    configs = re.findall(r"-c (\S+)", command)
    assert configs[-1] == f"configs/data/{overlay}"
    monkeypatch.chdir(tmp_path)
    args = [a for c in configs for a in ("-c", str(REPO / c))] + ["--trainer.logger", "false"]
    cli = build_cli(args, args, run=False)
    assert type(cli.datamodule).__name__.startswith("Streaming")
    # the built-in images' size and crop, not the folder DataModules' 286/256 defaults
    assert (cli.datamodule.hparams.load_size, cli.datamodule.hparams.crop_size) == (72, 64)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_config_parses_and_builds(config, tmp_path, monkeypatch):
    from pix2pix_lit.cli import build_cli
    from pix2pix_lit.models import SPADE, CycleGAN, Pix2Pix, Segmenter

    monkeypatch.chdir(tmp_path)
    args = ["-c", str(REPO / "configs" / config), "--trainer.logger", "false"]
    cli = build_cli(args, args, run=False)
    for option in ("input_nc", "label_nc", "contain_dontcare_label", "no_instance"):  # what the data decides
        assert cli.model.hparams[option] == cli.datamodule.hparams[option], option
    from pix2pix_lit.models.cut import CUT

    expected = CycleGAN if config.startswith("cyclegan/") else SPADE if config.startswith("spade/") else Pix2Pix
    expected = CUT if config.startswith("cut/") else expected
    if config.startswith("segmenter/") and "pix2pix" not in config:
        expected = Segmenter
    assert type(cli.model) is expected
    if expected is Segmenter:  # trained on the real photos -> labels of label-map data; best by val/miou
        assert cli.datamodule.hparams.label_nc > 0 and cli.config.best_checkpoint.monitor == "val/miou"
        assert not list(tmp_path.iterdir())
        return
    if "labels" in config or expected is SPADE:  # label maps: the networks see one-hot classes (+ edges)
        h = cli.datamodule.hparams
        assert h.label_nc > 0 and cli.model.source_channels(3) == h.label_nc + h.contain_dontcare_label + (
            not h.no_instance)
    if expected is CycleGAN:  # its own defaults, not pix2pix's carried over
        assert (cli.model.hparams.norm, cli.model.hparams.gan_mode, cli.model.hparams.pool_size) == ("instance", "lsgan", 50)
        assert cli.model.hparams.no_dropout and cli.datamodule.__class__.__name__.endswith("UnpairedDataModule")
    if expected is CUT:  # the official CUT defaults, on unpaired data
        h = cli.model.hparams
        assert (h.init_type, h.netF_nc, h.nce_T, h.antialias, h.gan_mode) == ("xavier", 256, 0.07, True, "lsgan")
        assert h.nce_idt == ("fastcut" not in config) and cli.datamodule.__class__.__name__.endswith("UnpairedDataModule")
    assert not list(tmp_path.iterdir())  # building writes nothing


def test_the_model_class_comes_from_the_configs_and_command_line():
    from pix2pix_lit.cli import model_class_path

    cyclegan_config = str(REPO / "configs" / "cyclegan" / "quickstart.yaml")
    assert model_class_path([]).endswith(".Pix2Pix")  # configs from before the models/ layer name none
    assert model_class_path(["fit", "-c", cyclegan_config]).endswith(".CycleGAN")
    assert model_class_path(["fit", "-c", cyclegan_config, "--model", "Pix2Pix"]).endswith(".Pix2Pix")
    assert model_class_path(["fit", "--model.class_path=pix2pix_lit.module.Pix2Pix"]).endswith(".Pix2Pix")
    # a model added as one file (models/cut.py) by its class name, as it is named in --model and --model.help
    assert model_class_path(["fit", "--model", "CUT"]) == model_class_path(["fit", "--model.help", "CUT"]) == (
        "pix2pix_lit.models.cut.CUT")
    with pytest.raises(ConfigError, match="'Nope' is not an image-translation model"):
        model_class_path(["fit", "--model", "Nope"])


def test_maps_best_is_the_recipe_search_winner_over_the_official_recipe(tmp_path, monkeypatch):
    """configs/maps_best.yaml and the recipe experiments/recipe_search.py scored as it are the same options."""
    import importlib.util

    from pix2pix_lit.cli import build_cli

    spec = importlib.util.spec_from_file_location("recipe_search", REPO / "experiments" / "recipe_search.py")
    recipe_search = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_search)
    monkeypatch.chdir(tmp_path)
    best = build_cli(args := ["-c", str(REPO / "configs" / "maps_best.yaml"), "--trainer.logger", "false"], args,
                     run=False)
    overlay, _ = recipe_search.RECIPES["unet_in_ms_fm_ema_l1_10"]
    searched = build_cli(args := ["-c", str(REPO / "configs" / "maps.yaml"), *overlay, "--trainer.logger", "false"],
                         args, run=False)
    assert dict(best.model.hparams) == dict(searched.model.hparams)
    assert dict(best.datamodule.hparams) == dict(searched.datamodule.hparams)
    official = build_cli(args := ["-c", str(REPO / "configs" / "maps.yaml"), "--trainer.logger", "false"], args,
                         run=False)
    changed = {k for k, v in best.model.hparams.items() if official.model.hparams[k] != v}
    assert changed == {"norm", "no_dropout", "netD", "num_D", "gan_mode", "lambda_feat", "ema_decay", "lambda_L1"}


def test_the_checkpoint_selection_names_best_last_imported_or_in_memory():
    """metrics.json's protocol.checkpoint_selection for each kind of weights scored."""
    from types import SimpleNamespace

    from pix2pix_lit.callbacks.outputs import checkpoint_selection

    def trainer(path):
        return SimpleNamespace(ckpt_path=path, checkpoint_callback=SimpleNamespace(monitor="val/fid"),
                               datamodule=SimpleNamespace(hparams={"val_split": "val"}))

    model = SimpleNamespace(loaded_from={"epoch": 3, "global_step": 12, "imported": False})
    best = checkpoint_selection(trainer("run/checkpoints/best-epoch=2-step=12.ckpt"), model)
    assert best == {"file": "best-epoch=2-step=12.ckpt", "epoch": 3, "global_step": 12, "kind": "best",
                    "chosen_by": "val/fid", "chosen_on_split": "val"}
    assert checkpoint_selection(trainer("last.ckpt"), model)["kind"].startswith("last")
    assert checkpoint_selection(trainer("step=1000.ckpt"), model)["kind"].startswith("periodic")
    imported = SimpleNamespace(loaded_from={"epoch": 0, "global_step": 0, "imported": True})
    assert checkpoint_selection(trainer("facades.ckpt"), imported)["kind"].startswith("imported")
    trained_here = trainer(None)
    trained_here.global_step = 40  # trainer.fit, then trainer.test in one process
    assert checkpoint_selection(trained_here, model) == {"kind": "in memory: the model as the run left it, no "
                                                                     "checkpoint file"}
    assert checkpoint_selection(trainer(None), model)["kind"].startswith("untrained")  # `test` with no --ckpt_path
