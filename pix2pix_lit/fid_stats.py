"""Stored FID statistics of a real image set: ``pix2pix-lit eval --save_stats REAL_DIR real_stats.npz`` writes them,
``model.fid_real_stats: real_stats.npz`` scores validation and test against them, so a large real set is read
through the Inception once, not at every validation.

The file is an ``.npz`` with ``mu`` (2048) and ``sigma`` (2048 x 2048) in float64 — the names pytorch-fid uses —
plus ``num_images``, ``inception_sha256`` (the weights the features came from) and ``protocol`` (JSON: the
feature implementation, how images were resized, their size). FID from it equals FID computed from the images
(torchmetrics' sums are rebuilt from the mean and covariance in float64; tests/test_fid_stats.py); a file made
with other Inception weights, another feature implementation, or images of another size is refused in one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pix2pix_lit.atomic import staged_file
from pix2pix_lit.errors import ConfigError

FORMAT_VERSION = 1


@dataclass
class RealStats:
    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    inception_sha256: str
    protocol: dict

    @property
    def image_size(self) -> Optional[tuple[int, int]]:
        """(width, height) of every image the statistics came from, or None if they differ in size."""
        size = self.protocol.get("image_size")
        return tuple(size) if size else None

    # torchmetrics' FID keeps sum(x), sum(x x^T) and n; these rebuild them from the mean and covariance
    def feature_sums(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        mu = torch.from_numpy(self.mu).double()
        sigma = torch.from_numpy(self.sigma).double()
        n = self.num_images
        return mu * n, sigma * (n - 1) + n * torch.outer(mu, mu), n

    @classmethod
    def from_sums(cls, total: torch.Tensor, outer_total: torch.Tensor, n: int, inception_sha256: str,
                  protocol: dict) -> "RealStats":
        mu = total.double() / n
        sigma = (outer_total.double() - n * torch.outer(mu, mu)) / (n - 1)
        return cls(mu.cpu().numpy(), sigma.cpu().numpy(), n, inception_sha256, protocol)

    def save(self, path: Path) -> None:
        """Write to ``path`` via a temporary file and a rename (no half-written file)."""
        path = check_writable(path)
        try:
            with staged_file(path) as tmp:
                np.savez(tmp, mu=self.mu, sigma=self.sigma, num_images=np.int64(self.num_images),
                         inception_sha256=np.str_(self.inception_sha256), format_version=np.int64(FORMAT_VERSION),
                         protocol=np.str_(json.dumps(self.protocol, sort_keys=True)))
        except OSError as e:
            raise ConfigError(f"FID statistics cannot be written to {path} ({e.strerror}); choose another file") from None


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` if a file can be written there (its folder made if missing), else a one-line error — checked before
    the statistics are computed, which takes a pass over every image."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"FID statistics cannot be written to {path} ({e.strerror}); choose another file") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK):
        raise ConfigError(f"FID statistics cannot be written to {path} (a folder, or not writable); choose another file")
    return path


def load_real_stats(path: str | os.PathLike, option: str = "model.fid_real_stats") -> RealStats:
    """Read a file written by :meth:`RealStats.save`, with a one-line error for anything else."""
    path = Path(path).expanduser()
    fix = f"make it with pix2pix-lit eval --save_stats REAL_DIR {path.name}"
    if not path.is_file():
        raise ConfigError(f"{option} {path} does not exist; {fix}")
    try:
        with np.load(path, allow_pickle=False) as f:
            stats = RealStats(
                mu=f["mu"].astype(np.float64), sigma=f["sigma"].astype(np.float64), num_images=int(f["num_images"]),
                inception_sha256=str(f["inception_sha256"]), protocol=json.loads(str(f["protocol"])),
            )
    except KeyError as e:
        raise ConfigError(f"{option} {path} lacks {e} (not written by pix2pix-lit eval --save_stats); {fix}") from None
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"{option} {path} cannot be read as FID statistics ({e}); {fix}") from None
    d = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
    if stats.sigma.shape != (d, d) or stats.num_images < 2:
        raise ConfigError(f"{option} {path} holds a mean of shape {stats.mu.shape}, a covariance of shape "
                          f"{stats.sigma.shape} from {stats.num_images} images; {fix}")
    return stats


def check_compatible(stats: RealStats, path: str, inception_sha256: str, features: str,
                     option: str = "model.fid_real_stats") -> None:
    """Refuse statistics that other Inception weights or another feature implementation made."""
    fix = f"make it anew with pix2pix-lit eval --save_stats REAL_DIR {Path(path).name}"
    if stats.inception_sha256 != inception_sha256:
        raise ConfigError(f"{option} {path} was computed with Inception weights of sha256 {stats.inception_sha256[:12]}…, "
                          f"not the {inception_sha256[:12]}… used here; {fix}")
    if stats.protocol.get("features") != features:
        raise ConfigError(f"{option} {path} holds features of {stats.protocol.get('features')!r}, not {features!r}; {fix}")


def check_image_size(stats: RealStats, path: str, width: int, height: int,
                     option: str = "model.fid_real_stats") -> None:
    """Refuse comparing generated images with statistics of real images of another size (FID depends on it)."""
    size = stats.image_size
    if size is not None and tuple(size) != (width, height):
        raise ConfigError(f"{option} {path} holds statistics of {size[0]}x{size[1]} images but the generated ones are "
                          f"{width}x{height}; make it with pix2pix-lit eval --save_stats REAL_DIR OUT --size N "
                          "at the size the model generates")
