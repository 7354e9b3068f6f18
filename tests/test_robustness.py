"""Bad input and faults as users meet them: grey images in an RGB domain, 16-bit and rotated files, odd folder
entries, half-written outputs, full disks, runs that stop at once or are stopped, and which metric is best."""

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit import Pix2Pix
from pix2pix_lit.checkpoint_io import StreamingCheckpointIO, remove_stale_partials
from pix2pix_lit.compare import _best
from pix2pix_lit.data import PairedDataModule
from pix2pix_lit.data.datasets import FolderPairDataset, SeededSampler, match_pairs
from pix2pix_lit.data.io import list_images, load_image, to_tensor
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import CheckpointError, DataError
from pix2pix_lit.modes import higher_is_better, metric_mode
from pix2pix_lit.prepare import main as prepare_main

from conftest import (
    REPO,
    TINY_MODEL,
    noise_image,
    one_error_line,
    quiet_trainer,
    run,
    run_in_process,
    step_at_start,
    tiny,
    write_aligned,
    write_folders,
)


# -- images as they come ---------------------------------------------------------------------------------
def test_grey_images_in_an_rgb_domain_are_read_as_rgb_and_counted(tmp_path, caplog):
    from pix2pix_lit.data.unpaired import UnpairedDataModule

    root = tmp_path / "horse2zebra"
    rng = np.random.default_rng(0)
    for folder, n in (("trainA", 4), ("trainB", 4), ("testA", 2), ("testB", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(noise_image(rng, 40, 40)).save(root / folder / f"{i}.jpg", quality=95)
    grey = noise_image(rng, 40, 40, channels=1)
    Image.fromarray(grey).save(root / "trainB" / "grey.jpg", quality=95)  # as in the official download
    with caplog.at_level(logging.INFO):
        dm = UnpairedDataModule(str(root), load_size=36, crop_size=32)
        dm.setup("fit")
    assert "1 grayscale image(s) read as RGB (data.output_nc=3" in caplog.text
    image = dm.train_dataset.B.read(dm.train_dataset.B.files.index(root / "trainB" / "grey.jpg"))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 0], np.asarray(image)[..., 2])
    with pytest.raises(DataError, match=r"grey.jpg is a grayscale image but data.output_nc=3 and data.strict_channels"):
        UnpairedDataModule(str(root), load_size=36, crop_size=32, strict_channels=True).setup("fit")
    # paired data too
    write_folders(tmp_path / "pairs", "train", ["a", "b", "c"])
    Image.open(tmp_path / "pairs" / "train" / "B" / "b.png").convert("L").save(tmp_path / "pairs" / "train" / "B" / "b.png")
    dm = PairedDataModule(str(tmp_path / "pairs"), layout="folders", load_size=36, crop_size=32, val_fraction=0.34)
    dm.setup("fit")
    assert all(item["target"].shape[0] == 3 for item in (dm.val_dataset[0], dm.train_dataset[0], dm.train_dataset[1]))


def test_sixteen_bit_and_rotated_files_are_read_as_shown(tmp_path):
    a8 = noise_image(np.random.default_rng(1), 40, 32, channels=1)
    Image.fromarray(a8.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    with load_image(tmp_path / "deep.png") as img:
        assert img.mode == "L" and np.array_equal(np.asarray(img), a8)  # scaled, not clipped to white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.fromarray(noise_image(np.random.default_rng(2), 40, 32)).save(tmp_path / "phone.jpg", exif=exif)
    with load_image(tmp_path / "phone.jpg") as img:
        assert img.size == (32, 40)
    # a pair of a 16-bit target and its 8-bit source trains as the 8-bit twin would
    write_folders(tmp_path / "d", "train", ["x"], size=(40, 32))
    b = tmp_path / "d" / "train" / "B" / "x.png"
    twin = np.asarray(Image.open(b).convert("L"))
    Image.fromarray(twin.astype(np.uint16) * 257).save(b)
    pairs = match_pairs(tmp_path / "d" / "train" / "A", tmp_path / "d" / "train" / "B")
    item = FolderPairDataset(pairs, JointTransform("none", 32, 32, flip=False, train=False), output_nc=1)[0]
    assert torch.allclose(item["target"], to_tensor(Image.fromarray(twin)))


def test_odd_folder_entries_are_named_not_skipped(tmp_path):
    folder = tmp_path / "B"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "1.png")
    (folder / "5.png").mkdir()
    with pytest.raises(DataError, match=r"5.png has an image's name but is a folder"):
        list_images(folder)
    (folder / "5.png").rmdir()
    os.symlink(tmp_path / "gone.png", folder / "2.png")
    with pytest.raises(DataError, match=r"2.png has an image's name but is a link to nothing"):
        list_images(folder)
    (folder / "2.png").unlink()
    os.mkfifo(folder / "3.png")
    with pytest.raises(DataError, match=r"3.png has an image's name but is not a regular file"):
        list_images(folder)
    (folder / "3.png").unlink()
    Image.new("RGB", (8, 8)).save(folder / "1.jpg")
    other = tmp_path / "A"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "1.png")
    with pytest.raises(DataError, match=r"1.jpg and .*1.png have the same name '1'"):
        match_pairs(other, folder)


# -- prepare: all or nothing ------------------------------------------------------------------------------
def test_prepare_combine_writes_all_or_nothing(tmp_path, capsys):
    names = [f"{i:02d}" for i in range(10)]
    write_folders(tmp_path / "in", "x", names, size=(24, 16))
    a, b = tmp_path / "in" / "x" / "A", tmp_path / "in" / "x" / "B"
    Image.new("RGB", (20, 16)).save(b / "07.png")  # one pair of two sizes
    out = tmp_path / "out"
    assert prepare_main(["combine", str(a), str(b), str(out)]) == 2
    assert "07.png is 24x16 but" in capsys.readouterr().err and not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))
    Image.new("RGB", (24, 16)).save(b / "07.png")
    assert prepare_main(["combine", str(a), str(b), str(out)]) == 0  # the rerun is not refused
    assert len(list(out.glob("*.png"))) == 10
    assert prepare_main(["combine", str(a), str(b), str(a / "combined")]) == 2
    assert "inside the input folder" in capsys.readouterr().err and not (a / "combined").exists()
    Image.new("RGB", (24, 16)).save(a / "03.jpg")
    assert prepare_main(["combine", str(a), str(b), str(tmp_path / "out2")]) == 2
    assert "have the same name '03'" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    assert prepare_main(["edges", str(a), str(a / "sketches")]) == 2


def test_compare_and_the_checkpoint_pick_the_best_by_one_rule(monkeypatch, tmp_path):
    names = {"val/fid": False, "val/fid_B": False, "val/kid_mean": False, "val/kid_std": False, "val/l1": False,
             "val/l1_A": False, "val/mifid_train_B": False, "train/loss_G": False, "train/loss_G_L1": False,
             "samples/val_l1": False, "val/ssim": True, "val/ssim_B": True, "val/psnr": True, "test/psnr_A": True}
    for name, higher in names.items():
        assert higher_is_better(name) is higher and metric_mode(name) == ("max" if higher else "min"), name
    assert _best("val/l1", [(1, 0.5), (2, 0.3), (3, 0.4)]) == (2, 0.3)
    assert _best("val/l1", [(1, 0.6), (2, 0.2), (3, 0.7)]) == (2, 0.2)
    assert _best("val/ssim", [(1, 0.6), (2, 0.8), (3, 0.7)]) == (2, 0.8)
    from pix2pix_lit.cli import build_cli

    monkeypatch.setattr("sys.argv", ["pix2pix-lit"])  # pytest's own arguments are not the CLI's
    args = ["-c", str(REPO / "configs" / "quickstart.yaml"), "--best_checkpoint.monitor", "val/psnr",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    cli = build_cli(args, args, run=False)
    best = [cb for cb in cli.trainer.checkpoint_callbacks if cb.monitor == "val/psnr"]
    assert best and best[0].mode == "max"
    # clean-FID only (model.fid_protocol clean): the default best checkpoint is the lowest val/clean_fid
    args = ["-c", str(REPO / "configs" / "quickstart.yaml"), "--model.fid_protocol", "clean", "--trainer.logger",
            "false", "--trainer.default_root_dir", str(tmp_path)]
    cli = build_cli(args, args, run=False)
    assert any(cb.monitor == "val/clean_fid" and cb.mode == "min" for cb in cli.trainer.checkpoint_callbacks)


# -- checkpoints ---------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    io_ = StreamingCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint({"w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def full(obj, f, *a, **k):  # as torch's writer fails on a full disk: a RuntimeError while handling the OSError
        f.write(b"x" * 100)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2947072 vs 2946960")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=rf"no space left in {tmp_path} \(it needs about 4 MB.*kept"):
        io_.save_checkpoint({"w": torch.ones(1_000_000)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_temporary_files_of_killed_saves_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.ckpt.{dead.pid}.partial"
    live = tmp_path / f".last.ckpt.{os.getpid()}.partial"
    stale.write_bytes(b"x" * 10)
    live.write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"ckpt")
    assert remove_stale_partials(tmp_path) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "last.ckpt"])


def test_the_sampler_resumes_within_an_epoch():
    data = list(range(10))
    full = SeededSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    full.set_epoch(2)
    order = list(full)
    resumed = SeededSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    resumed.resume_within(2, 4)
    resumed.set_epoch(2)
    assert list(resumed) == order[4:] and len(resumed) == 10
    resumed.set_epoch(3)
    assert len(list(resumed)) == 10  # only the resumed epoch is shortened


# -- the command line ----------------------------------------------------------------------------------
@pytest.fixture
def env():
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore")


def test_runs_that_cannot_start_leave_nothing(tmp_path, env):
    data = tmp_path / "syn"
    cases = [
        (["--trainer.max_steps", "0"], "trainer.max_steps=0: give a positive number of steps, or -1"),
        (["--trainer.max_steps", "-5"], "trainer.max_steps=-5"),
        (["--trainer.max_epochs", "0"], "trainer.max_epochs=0"),
        (["--data.crop_size", "30"], "images are 30x30 but netG=unet needs sides divisible by 32"),
        (["--trainer.devices", "3", "--data.num_val", "2"], "the val split has 2 image(s) but 3 processes evaluate it"),
        (["--ckpt_path", str(tmp_path)], "is a folder, not a file"),
    ]
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:  # another test's run in this worker process, not these cases'
        wandb.finish()
    for extra, message in cases:
        # the first case in its own process (the real exit code), the others in this one (no start-up each)
        launch = run if extra is cases[0][0] else run_in_process
        proc = launch(["fit", *tiny(tmp_path / "r", data, "--model.fid", "false", "--model.kid", "false"), *extra], env,
                      tmp_path, check=False)
        assert proc.returncode == 2 and message in one_error_line(proc), (extra, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists(), extra
        # a W&B run the failed start had begun is finished, so it cannot write its files into the folder later
        # (it did under load: the next case found the removed folder back with an output.log)
        wandb = sys.modules.get("wandb")  # imported by the in-process cases
        assert wandb is None or wandb.run is None, extra
    time.sleep(1)
    assert not (tmp_path / "r").exists()


# A callback the stopped run loads from the test's folder: at step 30 it says so in a file and waits for the
# signal, so the SIGTERM sent from outside lands mid-run however fast the CPU finishes the 100 steps.
WAIT_FOR_SIGTERM = """
import time
from pathlib import Path
from lightning.pytorch.callbacks import Callback

class WaitForSigterm(Callback):
    def __init__(self, at_step: int, ready: str):
        self.at_step, self.ready = at_step, ready

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at_step:
            Path(self.ready).write_text("")
            deadline = time.monotonic() + 120
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)
"""


@pytest.mark.slow
def test_sigterm_saves_exits_non_zero_and_resumes_exactly(tmp_path, env):
    args = tiny(tmp_path / "stopped", tmp_path / "syn", "--model.fid", "false", "--model.kid", "false",
                "--data.num_train", "40", "--data.batch_size", "2", "--trainer.max_epochs", "5",
                "--trainer.logger", "false", "--trainer.callbacks", "[]", "--image_grid.every_n_epochs", "0")
    whole = run(["fit", *args, "--trainer.default_root_dir", str(tmp_path / "whole")], env, tmp_path)
    assert whole.returncode == 0
    (tmp_path / "wait_for_sigterm.py").write_text(WAIT_FOR_SIGTERM)
    ready = tmp_path / "at_step_30"
    waiting = ["--trainer.callbacks+=wait_for_sigterm.WaitForSigterm", "--trainer.callbacks.at_step", "30",
               "--trainer.callbacks.ready", str(ready)]
    proc = subprocess.Popen([sys.executable, "-m", "pix2pix_lit", "fit", *args, *waiting], cwd=tmp_path,
                            env=dict(env, PYTHONPATH=str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ready.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # from outside, as a scheduler or kill sends it
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
    saved = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 30
    # seeded otherwise: only the checkpoint (weights, RNG states, data position) can make it equal the whole run
    resumed = run(["fit", *args, "--ckpt_path", "last", "--seed_everything", "1"], env, tmp_path)
    assert "Restored all states from the checkpoint at" in resumed.stdout + resumed.stderr
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 100 and a["epoch"] == b["epoch"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_mid_epoch_resume_goes_on_with_the_rest_of_the_epoch(tmp_path):
    """From a periodic checkpoint inside an epoch, and from the last.ckpt of a run that max_steps stopped inside an
    epoch, the resumed run equals the uninterrupted one: weights, step, epoch number and learning rate."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    write_aligned(tmp_path / "d" / "train", 8, seed=1)
    write_aligned(tmp_path / "d" / "val", 2, seed=2)

    def fit(root, max_steps, ckpt=None, every=None, seed=0):
        pl.seed_everything(seed)  # resumed fits are seeded otherwise: only the checkpoint can make them equal
        dm = PairedDataModule(str(tmp_path / "d"), load_size=32, crop_size=32, batch_size=2, num_workers=0)
        model = Pix2Pix(**TINY_MODEL)  # the linear LR policy over 1 + 1 epochs: the LR changes at each epoch end
        saver = (ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, filename="{step}") if every
                 else ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0))
        start = step_at_start()
        trainer = quiet_trainer(max_steps=max_steps, limit_val_batches=0, callbacks=[saver, start],
                                enable_checkpointing=True, default_root_dir=root)
        trainer.fit(model, dm, ckpt_path=ckpt)
        return model, trainer, start.step

    def same(a, b):
        (ma, ta, _), (mb, tb, _) = a, b
        assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))
        assert ta.global_step == tb.global_step == 10 and ta.current_epoch == tb.current_epoch
        assert [o.param_groups[0]["lr"] for o in ta.optimizers] == [o.param_groups[0]["lr"] for o in tb.optimizers]

    whole = fit(tmp_path / "whole", 10, every=1)  # 4 batches an epoch: ends at batch 2 of epoch 2
    resumed = fit(tmp_path / "resumed", 10, ckpt=str(tmp_path / "whole" / "step=1.ckpt"), seed=1)
    assert resumed[2] == 1
    same(whole, resumed)
    for stop in (6, 8):  # inside epoch 1, and at its end
        fit(tmp_path / f"short{stop}", stop)
        saved = torch.load(tmp_path / f"short{stop}" / "last.ckpt", weights_only=False)
        assert (saved["global_step"], saved["epoch"]) == (stop, stop // 4)  # the epochs done, no more
        again = fit(tmp_path / f"short{stop}", 10, ckpt=str(tmp_path / f"short{stop}" / "last.ckpt"), seed=2)
        assert again[2] == stop
        same(whole, again)


def test_the_official_horse2zebra_layout_with_grey_jpegs_trains(tmp_path, env):
    rng = np.random.default_rng(0)
    root = tmp_path / "horse2zebra"
    for folder, n in (("trainA", 4), ("trainB", 4), ("testA", 2), ("testB", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(noise_image(rng, 40, 40)).save(root / folder / f"n{i}.jpg", quality=95)
    Image.fromarray(noise_image(rng, 40, 40, channels=1)).save(root / "trainB" / "n9.jpg", quality=95)
    proc = run(["fit", "-c", str(REPO / "configs" / "cyclegan" / "horse2zebra.yaml"), "--data.root", str(root),
                "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "2",
                "--data.load_size", "36", "--data.crop_size", "32", "--model.ngf", "8", "--model.ndf", "8",
                "--model.fid", "false", "--model.kid", "false", "--trainer.logger", "false", "--trainer.callbacks", "[]",
                "--trainer.enable_progress_bar", "false"], env, tmp_path)
    assert "1 grayscale image(s) read as RGB (data.output_nc=3" in proc.stderr + proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def _checkpoint(tmp_path, model, dm) -> Path:
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    path = tmp_path / f"{type(model).__name__}.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_export_refuses_what_it_cannot_do_and_states_the_true_sizes(tmp_path):
    from pix2pix_lit.data.unpaired import SyntheticUnpairedDataModule
    from pix2pix_lit.models import CycleGAN
    from pix2pix_lit.serving.export import ExportError, export_checkpoint, load_exported
    from pix2pix_lit.serving.export import main as export_main

    write_aligned(tmp_path / "d" / "train", 4, seed=1)
    write_aligned(tmp_path / "d" / "val", 2, seed=2)
    pix2pix = _checkpoint(tmp_path, Pix2Pix(**TINY_MODEL), PairedDataModule(str(tmp_path / "d"), load_size=32,
                                                                            crop_size=32, num_workers=0))
    with pytest.raises(ExportError, match="holds a one-way Pix2Pix generator .*--direction BtoA is for two-way"):
        export_checkpoint(str(pix2pix), "onnx", str(tmp_path / "g.onnx"), direction="BtoA")
    assert export_main(["--ckpt_path", str(pix2pix), "--format", "onnx", "--output", "/proc/no-such-place/g.onnx"]) == 2
    assert not (tmp_path / "g.onnx").exists()
    dm = SyntheticUnpairedDataModule(str(tmp_path / "syn"), num_train=4, num_val=2, num_test=2, image_size=36,
                                     load_size=36, crop_size=32, num_workers=0)
    cyclegan = _checkpoint(tmp_path, CycleGAN(netG="resnet_6blocks", ngf=8, ndf=8, fid=False, kid=False), dm)
    path, contract = export_checkpoint(str(cyclegan), "torchscript", str(tmp_path / "g.pt"), direction="BtoA")
    assert contract["input"]["size_multiple"] == 4 and contract["input"]["min_size"] == 8
    assert [1, 12, 20] in contract["parity"]["shapes"]  # odd multiples at the smallest side, checked before writing
    run_file, stored = load_exported(path)
    assert stored["generator"].startswith("G_B") and stored["memory"]["bytes_per_pixel"] > 0
    assert run_file(torch.zeros(1, 3, 12, 20)).shape == (1, 3, 12, 20)


def test_mifid_compares_with_the_training_images(tmp_path):
    from pix2pix_lit.metrics import find_inception_weights

    write_aligned(tmp_path / "d" / "train", 6, seed=1)
    write_aligned(tmp_path / "d" / "val", 3, seed=2)
    model = Pix2Pix(**{**TINY_MODEL, "fid": True, "kid": True}, mifid=True, kid_subset_size=2,
                    inception_weights=str(find_inception_weights()))
    dm = PairedDataModule(str(tmp_path / "d"), load_size=32, crop_size=32, num_workers=0)
    trainer = quiet_trainer()
    trainer.validate(model, dm)
    metrics = model.evaluator.metrics["val"]["out"]
    assert metrics.training_features.shape == (6, 2048)  # the 6 training targets, not the 3 val images
    assert "val/mifid_train" in trainer.callback_metrics
    key = metrics.training_key
    trainer.validate(model, dm)
    assert metrics.training_key == key  # computed once for the same files


def test_eval_names_its_own_options_when_no_names_match(tmp_path, capsys):
    from pix2pix_lit.evaluate import main as eval_main

    for folder, name in (("fake", "a_fake.png"), ("real", "b_real.png")):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / folder / name)
    assert eval_main([str(tmp_path / "fake"), str(tmp_path / "real")]) == 2
    err = capsys.readouterr().err
    assert "--fake-suffix/--real-suffix" in err and "data.a_suffix" not in err
