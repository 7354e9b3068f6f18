"""Checkpoints written straight to disk.

Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into memory before writing it
(``_atomic_save``: ``torch.save`` into an ``io.BytesIO``, then ``getvalue()``): for unet_256 + the basic D
with their Adam states that is a 690 MB buffer at every save, which set the peak memory of a maps
training (+630 MB resident when the last checkpoint was written; ``experiments/RESULTS.md``, issue 10).
This one streams ``torch.save`` into a temporary file beside the target and renames it over the target:
as atomic as Lightning's (a reader sees the old file or the new one, never half of one). Other
filesystems (fsspec URLs) keep Lightning's way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class StreamingCheckpointIO(TorchCheckpointIO):
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
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
