"""Whole paths through the command line as users type them: the README's sketch -> photo walkthrough, plain DDP,
and CycleGAN through fit / validate / test / predict / export (a file of its own so that `make test`'s workers
share these long tests with test_cli.py's). Each path's training and serving run in their own processes, as users
start them; the commands whose subject is a file written before (prepare, and those that read a checkpoint) run
in this process (``run_in_process``: the same exit code and output, without a new Python's start-up)."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, cyclegan_cli, one_error_line, page_data, run, run_in_process, tiny
from wandb_reader import read_run


@pytest.fixture(scope="module")
def built_in(tmp_path_factory):
    """The built-in scenes at the tiny commands' size (8 train, 4 val, 4 test), as `fit` would generate them."""
    from pix2pix_lit.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("walk") / "syn", {"train": 8, "val": 4, "test": 4}, image_size=36)


@pytest.mark.slow
def test_sketch_to_photo_walkthrough(built_in, tmp_path, cli_env):
    """The README's path: photos -> prepare edges -> prepare combine -> prepare split -> fit -> export -> serve."""
    import httpx

    from conftest import png_bytes, start_server, stop_server

    env = cli_env
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((built_in / "train").glob("*.png")) + sorted((built_in / "val").glob("*.png")):
        img = Image.open(path)
        img.crop((img.size[0] // 2, 0, img.size[0], img.size[1])).save(photos / path.name)
    run_in_process(["prepare", "edges", str(photos), str(tmp_path / "edges")], env, tmp_path, check=True)
    run_in_process(["prepare", "combine", str(tmp_path / "edges"), str(photos), str(tmp_path / "combined")], env, tmp_path,
                   check=True)
    run_in_process(["prepare", "split", str(tmp_path / "combined"), str(tmp_path / "data"), "--val", "0.25", "--test",
                    "0.25"], env, tmp_path, check=True)
    run(["fit", "-c", str(REPO / "configs" / "sketch2photo.yaml"), "--data.root", str(tmp_path / "data"),
         "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "4", "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false", "--data.load_size", "36", "--data.crop_size", "32",
         "--data.num_workers", "0", "--model.ngf", "8", "--model.ndf", "8", "--model.fid", "false", "--model.kid", "false"],
        env, tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run_in_process(["export", "--ckpt_path", str(ckpt), "--format", "onnx", "--output", str(tmp_path / "sketch.onnx")], env,
                   tmp_path, check=True)
    for how in (["--model", str(tmp_path / "sketch.onnx")], ["--ckpt_path", str(ckpt)]):
        proc, url = start_server(how, tmp_path)
        try:
            assert httpx.get(f"{url}/health").json()["model"]["input"]["channels"] == 1
            sketch = Image.open(tmp_path / "edges" / "00000.png")
            r = httpx.post(f"{url}/v1/translate", content=png_bytes(sketch), headers={"Content-Type": "image/png"},
                           timeout=60)
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == sketch.size
            assert Image.open(io.BytesIO(r.content)).mode == "RGB"
        finally:
            stop_server(proc)


@pytest.mark.slow
def test_plain_ddp_as_users_type_it(built_in, tmp_path, cli_env):
    env = cli_env
    proc = run(["fit", *tiny(tmp_path / "ddp", built_in, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
                             "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.limit_train_batches", "2")],
               env, tmp_path)
    assert "find_unused_parameters=True" in proc.stderr + proc.stdout
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1  # 2 batches shared by 2 processes: one step each
    bad = run_in_process(["fit", *tiny(tmp_path / "fsdp", built_in, "--trainer.strategy", "fsdp")], env, tmp_path)
    assert bad.returncode == 2 and "trainer.strategy=fsdp is not supported" in one_error_line(bad)
    assert not (tmp_path / "fsdp").exists()


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
    tracked = read_run(wandb_run)
    keys = set().union(*tracked["history"])
    assert {"val/fid_B", "val/fid_A", "train/loss_cycle_B", "train/loss_idt_A", "images/val/_type"} <= keys
    assert tracked["config"]["model.class_path"].endswith("CycleGAN")
    compared = run_in_process(["compare", str(root), "--output", str(tmp_path / "c.png")], cli_env, tmp_path, check=True)
    assert "best val/fid_B" in compared.stdout and "best val/fid_A" in compared.stdout
    last = str(root / "checkpoints" / "last.ckpt")

    val = run_in_process(["validate", *cyclegan_cli(root, data), "--ckpt_path", last], cli_env, tmp_path, check=True)
    assert "val/fid_A" in val.stdout and "val/fid_B" in val.stdout
    run_in_process(["test", *cyclegan_cli(root, data), "--ckpt_path", last], cli_env, tmp_path, check=True)
    report = json.loads((root / "checkpoints" / "metrics.json").read_text())
    assert {"fid_A", "fid_B", "kid_mean_A", "ssim_B", "psnr_A"} <= set(report["metrics"])
    assert report["protocol"]["generator"] == "G_A+G_B" and report["num_images"] == 8
    per_image = list(csv.DictReader(open(root / "checkpoints" / "per_image.csv")))
    assert {r["direction"] for r in per_image} == {"AtoB", "BtoA"} and all(r["ssim"] for r in per_image)
    assert report["num_images_by_direction"] == {"AtoB": 4, "BtoA": 4}
    page = page_data(root / "checkpoints" / "index.html")  # each direction's images in their own folder
    assert {r["output"].split("/")[1] for r in page["rows"]} == {"AtoB", "BtoA"} and len(page["rows"]) == 8

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(photos / "p.png")
    for direction in ("BtoA", "AtoB"):
        out = tmp_path / f"pred-{direction}"
        run_in_process(["predict", *cyclegan_cli(root, data), "--ckpt_path", last, "--data.predict_dir", str(photos),
                        "--model.predict_direction", direction, "--predict_writer.output_dir", str(out)], cli_env,
                       tmp_path, check=True)
        assert Image.open(out / "p.png").size == (50, 30)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "pred-AtoB" / "p.png")),
                              np.asarray(Image.open(tmp_path / "pred-BtoA" / "p.png")))  # two generators

    export = run_in_process(["export", "--ckpt_path", last, "--format", "onnx", "--direction", "BtoA"], cli_env, tmp_path,
                            check=True)
    assert "G_B" in export.stdout and (root / "checkpoints" / "last.G_B.eval.onnx").is_file()

    wrong = run_in_process(["test", "-c", str(REPO / "configs" / "quickstart.yaml"), "--data.root", str(data),
                 "--ckpt_path", last, "--trainer.default_root_dir", str(tmp_path / "wrong")], cli_env, tmp_path,
                check=False)
    assert wrong.returncode == 2 and "holds a CycleGAN model" in wrong.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "wrong").exists()
