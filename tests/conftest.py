"""Shared fixtures: small datasets the tests make themselves, tiny models, a quiet Trainer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MAPS = SHARED / "datasets" / "maps"


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
