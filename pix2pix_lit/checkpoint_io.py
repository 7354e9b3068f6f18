"""Checkpoints written straight to disk, and read memory-mapped.

Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into memory before writing it
(``_atomic_save``: ``torch.save`` into an ``io.BytesIO``, then ``getvalue()``): for unet_256 + the basic D
with their Adam states that is a 690 MB buffer at every save, which set the peak memory of a maps
training (+630 MB resident when the last checkpoint was written; ``experiments/RESULTS.md``, the training-memory section).
This one streams ``torch.save`` into a temporary file beside the target and renames it over the target:
as atomic as Lightning's (a reader sees the old file or the new one, never half of one). Other
filesystems (fsspec URLs) keep Lightning's way.

Reading, Lightning's ``torch.load`` copies every tensor of the file into memory, Adam's moments too, which
``validate``/``test``/``predict`` never use: for pix2pixHD's 183 M-parameter local generator with its 3-scale D that
is 2.2 GB before the first image (``experiments/memory.py predict``). A local file is read with ``mmap=True``:
tensors are loaded from the file when used (the weights), the rest is never read. Renaming a new save over the file
leaves a mapped old one intact.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pix2pix_lit.atomic import process_running
from pix2pix_lit.errors import CheckpointError, find_in_chain

log = logging.getLogger(__name__)
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial$")


def checkpoint_bytes(obj: Any) -> int:
    """The bytes of the tensors in a checkpoint (what its file needs, near enough)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(checkpoint_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(checkpoint_bytes(v) for v in obj)
    return 0


def remove_stale_partials(folder: Path) -> int:
    """Delete the temporary files of saves that never finished (a process killed while writing): those of
    processes that no longer run. Returns the bytes freed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    freed = 0
    for path in folder.iterdir():
        m = _PARTIAL.match(path.name)
        if m and path.is_file() and not process_running(int(m["pid"])):
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
    if freed:
        log.info("removed the temporary files of an interrupted checkpoint save in %s (%.0f MB)", folder, freed / 2**20)
    return freed


class StreamingCheckpointIO(TorchCheckpointIO):
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        if not isinstance(get_filesystem(path), LocalFileSystem) or not Path(path).is_file():
            return super().load_checkpoint(path, weights_only=weights_only)
        # on the CPU whatever device saved it (mmap needs it): Lightning copies the weights to the model's device
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
            os.replace(partial, path)
        except BaseException as e:
            partial.unlink(missing_ok=True)
            # torch's writer turns a full disk into a RuntimeError raised while handling the OSError
            cause = find_in_chain(e, OSError)
            if cause is not None:
                raise self._save_error(path, cause, checkpoint_bytes(checkpoint)) from None
            raise

    @staticmethod
    def _save_error(path: Path, cause: OSError, needed: int) -> CheckpointError:
        """One line for a save that failed for want of space or permission."""
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        kept = " (the earlier checkpoint there is kept)" if path.exists() else ""
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return CheckpointError(
                f"cannot save checkpoint {path.name}: no space left in {path.parent} (it needs about {needed / 2**20:.0f} MB, "
                f"{free / 2**20:.0f} MB are free){kept}; "
                "free space there or point trainer.default_root_dir elsewhere, then resume with --ckpt_path last")
        reason = cause.strerror or str(cause).splitlines()[0][:120]
        return CheckpointError(f"cannot save checkpoint {path} ({reason}){kept}; check the folder's permissions "
                               "or point trainer.default_root_dir elsewhere")
