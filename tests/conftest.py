"""What the tests share: small datasets they make themselves, tiny models, a quiet Trainer, the command line
as users run it (``run``, ``tiny``, ``one_error_line``) and the HTTP service as a client sees it
(``start_server``, ``png_bytes``, ...). Test files in subfolders import them with ``from conftest import ...``."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one compute thread each (and in the commands they start), so the
    # workers do not oversubscribe the cores; their Python start-ups and file work then overlap
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MAPS = SHARED / "datasets" / "maps"


# The files that take a worker longest (--durations of fresh-clone runs: README "Tests"), started first: xdist's
# loadfile hands out files in collection order, so a long file collected last would run alone at the end
LONGEST_FIRST = ("test_precision.py", "test_cli_walkthroughs.py", "test_cli.py", "test_metrics.py",
                 "test_distributed.py", "test_segmenter.py", "test_old_checkpoints.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def noise_image(rng: np.random.Generator, w: int, h: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_aligned(folder: Path, n: int, size: int = 32, seed: int = 0, fn=lambda a: 255 - a) -> list[Path]:
    """n side-by-side files A|B with B = fn(A) for a random texture A."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = noise_image(rng, size, size)
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.concatenate([a, fn(a)], axis=1)).save(path)
        out.append(path)
    return out


def write_folders(root: Path, split: str, names: list[str], size=(40, 32), seed: int = 0,
                  a_suffix: str = ".png", b_suffix: str = ".png", fn=lambda a: 255 - a) -> None:
    rng = np.random.default_rng(seed)
    (root / split / "A").mkdir(parents=True, exist_ok=True)
    (root / split / "B").mkdir(parents=True, exist_ok=True)
    for name in names:
        a = noise_image(rng, *size)
        Image.fromarray(a).save(root / split / "A" / f"{name}{a_suffix}")
        Image.fromarray(fn(a)).save(root / split / "B" / f"{name}{b_suffix}")


def step_at_start():
    """A callback recording the global step a fit starts training from (``.step``): 0 for a fresh fit, the
    checkpoint's step for a resumed one. The resume tests seed the resumed process differently and assert it, so
    a resume that ignored its checkpoint (and trained again from scratch) cannot pass them."""
    from lightning.pytorch.callbacks import Callback

    class StepAtStart(Callback):
        step = None

        def on_train_start(self, trainer, pl_module):
            self.step = trainer.global_step

    return StepAtStart()


def same_kernels(recorded: str) -> bool:
    """Whether this CPU runs the kernels a fixture of the official code's numbers was recorded with (``recorded``:
    ``precision.cpu_kernels()`` there). Other kernels (an AVX2-only CPU, another vendor's or AMX, or this one limited with
    ``ONEDNN_MAX_CPU_ISA``) round differently, and a few Adam steps turn that rounding into ~lr-sized updates
    wherever a gradient is near 0 — so training steps equal the official ones exactly only on the same kernels."""
    from pix2pix_lit.precision import cpu_kernels

    return cpu_kernels() == recorded and "ONEDNN_MAX_CPU_ISA" not in os.environ


TINY_MODEL = dict(netG="unet", num_downs=5, ngf=8, ndf=8, fid=False, kid=False, n_epochs=1, n_epochs_decay=1)


def quiet_trainer(**kwargs):
    import lightning.pytorch as pl

    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


@pytest.fixture
def aligned_root(tmp_path: Path) -> Path:
    root = tmp_path / "aligned"
    write_aligned(root / "train", 8, seed=1)
    write_aligned(root / "val", 4, seed=2)
    write_aligned(root / "test", 4, seed=3)
    return root


@pytest.fixture
def cli_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore")
    return env


# -- the command line, as users run it ---------------------------------------------------------------
CLI = [sys.executable, "-m", "pix2pix_lit"]



def run(args, env, cwd, check=True, timeout=600):
    proc = subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc



def run_in_process(args, env, cwd, check=False) -> subprocess.CompletedProcess:
    """``pix2pix-lit ARGS`` by calling its ``main`` in this process, for matrices of commands that must stop
    before training and for commands whose subject is not the process (a checkpoint tested or predicted): each
    saves the start-up of a new Python with torch and Lightning (~6-15 s); every such test also runs one of its
    commands through ``run``, the real process. The same exit code, stdout and stderr; an
    uncaught exception is exit 1 with its traceback on stderr, as Python would print it. Unlike ``run`` it does
    not raise on a non-zero exit unless ``check``: these matrices are about failures."""
    import contextlib
    import traceback

    from pix2pix_lit.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    wandb = sys.modules.get("wandb")
    if code == 0 and wandb is not None and wandb.run is not None:
        # a process that ends finishes its W&B run (wandb's exit hook); here the next test goes on in this process.
        # A failed command's run is left as it is: that the CLI finished it is what tests of failures assert.
        wandb.finish()
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{out.getvalue()[-3000:]}\n{err.getvalue()[-5000:]}")
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def tiny(root: Path, data: Path, *extra) -> list[str]:
    return [
        "-c", str(REPO / "configs" / "quickstart.yaml"),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--data.root", str(data), "--data.num_train", "8", "--data.num_val", "4", "--data.num_test", "4",
        "--data.image_size", "36", "--data.load_size", "36", "--data.crop_size", "32", "--data.num_workers", "0",
        "--model.num_downs", "5", "--model.ngf", "8", "--model.ndf", "8", "--model.kid_subset_size", "4",
        "--image_grid.every_n_epochs", "1", "--trainer.log_every_n_steps", "1", *extra,
    ]



def cyclegan_cli(root, data, *extra):
    return [
        "-c", str(REPO / "configs" / "cyclegan" / "quickstart.yaml"),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--data.root", str(data), "--data.num_train", "6", "--data.num_val", "4", "--data.num_test", "4",
        "--data.image_size", "36", "--data.load_size", "36", "--data.crop_size", "32", "--data.num_workers", "0",
        "--model.ngf", "8", "--model.ndf", "8", "--model.kid_subset_size", "4", "--trainer.log_every_n_steps", "1",
        *extra,
    ]



def page_data(path: Path) -> dict:
    """What an ``index.html`` of callbacks/pages.py shows: its rows, columns and summary (the page's JSON block)."""
    import json
    import re

    text = Path(path).read_text()
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1))


def one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("pix2pix-lit: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]



# -- the HTTP service, as a client sees it ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], cwd: Path, threads: int = 1) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "pix2pix_lit", "serve", *args, "--port", str(port), "--threads", str(threads)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not answer /health in 120 s")


def stop_server(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return out


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def drawing(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.full((h, w), 255, np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, h), rng.integers(0, w)
        a[max(0, y - 1):y + 2, : x] = 0
    return Image.fromarray(a, "L")


def expected(model_file: Path, img: Image.Image) -> np.ndarray:
    """The file's own answer for ``img`` with predict's padding rule, computed here without the server."""
    import torch

    from pix2pix_lit.data.io import to_pil, to_tensor
    from pix2pix_lit.data.transforms import crop_box, pad_to_multiple
    from pix2pix_lit.serving.export import load_exported

    run, contract = load_exported(model_file)
    x, box = pad_to_multiple(to_tensor(img.convert("L"))[None], contract["input"]["size_multiple"])
    out = torch.from_numpy(run(x))
    return np.asarray(to_pil(crop_box(out, box)[0]))


# -- label maps ----------------------------------------------------------------------------------------------
def scored_folders(tmp_path: Path, classes: int, n: int, fake_hw: tuple[int, int], label_hw: tuple[int, int],
                   fake_suffix: str = ".png") -> Path:
    """For ``eval --labels``: a random torchvision LR-ASPP of ``classes`` classes saved as ``seg.pth`` (returned),
    ``fake/{i}{fake_suffix}`` random photos and ``labels/{i}.png`` random id maps below ``classes``."""
    import torch

    from pix2pix_lit.segmentation import build_torchvision

    torch.manual_seed(0)
    torch.save(build_torchvision("lraspp_mobilenet_v3_large", classes).state_dict(), tmp_path / "seg.pth")
    (tmp_path / "fake").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*fake_hw, 3), dtype=np.uint8)).save(tmp_path / "fake" / f"{i}{fake_suffix}")
        Image.fromarray(rng.integers(0, classes, label_hw, dtype=np.uint8), "L").save(tmp_path / "labels" / f"{i}.png")
    return tmp_path / "seg.pth"



def write_cityscapes(root: Path, split: str = "train", cities=("aachen", "bremen"), per_city: int = 2,
                     size=(64, 32), seed: int = 0) -> list[str]:
    """A tiny folder in the Cityscapes download layout: ``gtFine/{split}/{city}/*_gtFine_labelIds.png`` (ids 0..33),
    ``*_gtFine_instanceIds.png`` (16-bit: class * 1000 + k for cars, else the class id), ``*_gtFine_color.png`` (left
    out of training by its suffix) and ``leftImg8bit/{split}/{city}/*_leftImg8bit.png``; returns the names."""
    rng = np.random.default_rng(seed)
    w, h = size
    names = []
    for city in cities:
        for k in range(per_city):
            name = f"{city}_{k:06d}_000019"
            labels = np.repeat(rng.integers(0, 34, (h // 8, w // 8)), 8, 0).repeat(8, 1).astype(np.uint8)
            instances = labels.astype(np.uint16)
            instances[labels == 26] = 26000 + np.arange((labels == 26).sum()) // 64  # cars: one object per block
            gt, photo_dir = root / "gtFine" / split / city, root / "leftImg8bit" / split / city
            gt.mkdir(parents=True, exist_ok=True)
            photo_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels, "L").save(gt / f"{name}_gtFine_labelIds.png")
            Image.fromarray(instances).save(gt / f"{name}_gtFine_instanceIds.png")
            Image.fromarray(noise_image(rng, w, h)).save(gt / f"{name}_gtFine_color.png")
            Image.fromarray(noise_image(rng, w, h)).save(photo_dir / f"{name}_leftImg8bit.png")
            names.append(f"{city}/{name}")
    return names
