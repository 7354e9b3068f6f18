"""The segmenter through the CLI as the README's "Scoring labels -> photos" runs it on the built-in data: trained on
the real photos it scores them high, a briefly trained pix2pix's outputs lower, uniform grey near chance."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.data.labels import CITYSCAPES_TRAIN_CLASSES

from conftest import REPO, run, run_in_process, write_cityscapes


def _eval(env, cwd, fake_dir, out, *extra):
    # in this process: `eval` runs no Trainer, and a new Python would add its start-up to each of the three
    run_in_process(["eval", str(fake_dir), *extra, "--labels", "data/synthetic-labels-128/test/labels", "--segmenter",
         "runs/segmenter-quickstart/checkpoints/last.ckpt", "--output", str(out)], env, cwd, check=True)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_real_photos_score_above_generated_above_grey(tmp_path, cli_env):
    configs = REPO / "configs" / "segmenter"
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    # 2 of the quickstart's 6 epochs (100 steps): val mIoU 0.86 already
    run(["fit", "-c", str(configs / "quickstart.yaml"), "--trainer.max_epochs", "2", *quiet], cli_env, tmp_path,
        timeout=1500)
    seg_ckpts = sorted(p.name for p in (tmp_path / "runs/segmenter-quickstart/checkpoints").glob("*.ckpt"))
    assert seg_ckpts[0].startswith("best-") and "last.ckpt" in seg_ckpts  # best by val/miou

    real = _eval(cli_env, tmp_path, "data/synthetic-labels-128/test/photos", tmp_path / "real.json")
    # a label -> photo model scored by the segmenter during training, then its predictions of the test labels
    run(["fit", "-c", str(configs / "pix2pix_labels.yaml"), "--trainer.max_epochs", "1", "--model.n_epochs_decay",
         "0", "--model.fid", "false", "--model.kid", "false", "--trainer.logger", "[{class_path: pix2pix_lit.loggers.CSVLogger}]",
         "--trainer.enable_progress_bar", "false"], cli_env, tmp_path, timeout=900)
    rows = list(csv.DictReader(open(next((tmp_path / "runs/pix2pix-labels").rglob("metrics.csv")))))
    val_miou = [float(r["val/miou"]) for r in rows if r.get("val/miou")]
    assert len(val_miou) == 1 and 0 < val_miou[0] < 1
    assert next((tmp_path / "runs/pix2pix-labels/checkpoints").glob("best-*.ckpt"))
    run_in_process(["predict", "-c", str(configs / "pix2pix_labels.yaml"), "--ckpt_path",
                    "runs/pix2pix-labels/checkpoints/last.ckpt", *quiet], cli_env, tmp_path, check=True)
    generated = _eval(cli_env, tmp_path, "runs/pix2pix-labels/predictions", tmp_path / "generated.json",
                      "data/synthetic-labels-128/test/photos", "--no-fid", "--no-kid")
    grey_dir = tmp_path / "grey"
    grey_dir.mkdir()
    for label in (tmp_path / "data/synthetic-labels-128/test/labels").glob("*.png"):
        Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(grey_dir / label.name)
    grey = _eval(cli_env, tmp_path, grey_dir, tmp_path / "grey.json")

    miou = {name: r["metrics"]["miou"] for name, r in (("real", real), ("generated", generated), ("grey", grey))}
    assert miou["real"] >= 0.8 and miou["real"] > miou["generated"] > miou["grey"], miou
    assert miou["grey"] < 0.25, miou  # one class everywhere: at most about one class's IoU out of five
    for result in (real, generated, grey):
        assert set(result["per_class_iou"]) == {"sky", "building", "vegetation", "road", "car"}
        assert result["protocol"]["segmentation"]["arch"] == "lraspp_mobilenet_v3_large"
    assert {"ssim", "psnr", "l1", "miou", "pixel_acc", "class_acc"} <= set(generated["metrics"])


def test_cityscapes_config_trains_on_the_download_layout_and_scores_19_train_ids(tmp_path, cli_env):
    """configs/segmenter/cityscapes.yaml on a made-up folder in the download layout (label ids 0..33): 2 steps at
    128x64, then `test` reports the 19 train classes (Cityscapes' names) with the protocol."""
    write_cityscapes(tmp_path / "cs", "train", cities=("aachen", "bochum"), per_city=1, size=(128, 64))
    write_cityscapes(tmp_path / "cs", "val", cities=("lindau",), per_city=2, size=(128, 64), seed=1)
    common = ["-c", str(REPO / "configs" / "segmenter" / "cityscapes.yaml"), "--data.root", str(tmp_path / "cs"),
              "--data.crop_size", "128", "--data.load_size", "128", "--data.batch_size", "2", "--trainer.logger",
              "false", "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]
    run(["fit", *common, "--trainer.max_steps", "2", "--image_grid.every_n_epochs", "1"], cli_env, tmp_path, timeout=900)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    assert list((tmp_path / "run" / "images").glob("val_epoch*.png"))  # photo | predicted | labels grids
    run_in_process(["test", *common, "--ckpt_path", str(ckpt)], cli_env, tmp_path, check=True)
    report = json.loads((tmp_path / "run" / "checkpoints" / "metrics.json").read_text())
    assert set(report["metrics"]) == {"miou", "pixel_acc", "class_acc"}
    assert list(report["per_class_iou"]) == list(CITYSCAPES_TRAIN_CLASSES)
    assert report["protocol"]["segmentation"]["class_mapping"] == "cityscapes_train_ids"


@pytest.mark.slow
def test_ddp_segmenter_scores_equal_one_process(tmp_path, cli_env):
    """2 CPU processes (gloo) train the segmenter and score val together; `validate` of the saved weights in one
    process gives the same mIoU (the confusion matrix is summed over the ranks, every val image counted once)."""
    common = ["-c", str(REPO / "configs" / "segmenter" / "quickstart.yaml"), "--data.root", str(tmp_path / "data"),
              "--data.num_train", "8", "--data.num_val", "5", "--data.num_test", "2", "--data.image_size", "40",
              "--data.load_size", "40", "--data.crop_size", "40", "--data.batch_size", "2", "--data.num_workers", "0",
              "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
              "--trainer.logger", "[{class_path: pix2pix_lit.loggers.CSVLogger}]"]
    run(["fit", *common, "--trainer.max_epochs", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        cli_env, tmp_path, timeout=900)
    rows = list(csv.DictReader(open(next((tmp_path / "run" / "csv").rglob("metrics.csv")))))
    ddp_miou = [float(r["val/miou"]) for r in rows if r.get("val/miou")][-1]
    proc = run(["validate", *common, "--ckpt_path", str(tmp_path / "run" / "checkpoints" / "last.ckpt")], cli_env,
               tmp_path)
    single = [float(r["val/miou"]) for r in csv.DictReader(open(next((tmp_path / "run").rglob("csv-validate/*/metrics.csv"))))
              if r.get("val/miou")]
    assert single and single[-1] == pytest.approx(ddp_miou, abs=1e-6), proc.stdout[-2000:]
