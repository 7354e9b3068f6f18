"""A runnable copy of an official checkout for the comparison scripts: NVlabs/SPADE needs its ``sync_batchnorm``
submodule (absent from a plain checkout: stubbed by BatchNorm2d, the same layers on one process) and ``dill``
(stubbed by pickle). Used by experiments/spade_step.py and experiments/official_import_check.py."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path


def spade_copy(checkout: Path, parts: tuple[str, ...] = ("models", "util")) -> Path:
    """``parts`` of a NVlabs/SPADE checkout copied to a temporary folder with the stubs, put first on sys.path."""
    work = Path(tempfile.mkdtemp(prefix="spade-official-"))
    for part in parts:
        shutil.copytree(Path(checkout) / part, work / part)
    stub = work / "models" / "networks" / "sync_batchnorm"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text("import torch.nn as nn\nSynchronizedBatchNorm2d = nn.BatchNorm2d\n"
                                      "class DataParallelWithCallback(nn.DataParallel):\n    pass\n")
    (work / "dill.py").write_text("from pickle import *\ndef extend(use_dill=False):\n    pass\n")
    sys.path.insert(0, str(work))
    return work
