"""The import graph as pyproject.toml's import-linter contracts have it (what `make lint` checks): layers from the
commands down to the helpers, no cycle inside a package — and a cycle or an upward import breaks it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # import-linter's command, installed by .[dev]


def lint(cwd, pythonpath) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run([str(LINT_IMPORTS)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_import_contracts():
    proc = lint(REPO, REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_a_cycle_or_an_upward_import_breaks_them(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "pix2pix_lit", copy / "pix2pix_lit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    # the cycle an earlier version had: scoring imports the model that imports scoring (lazily, in a function)
    seg = copy / "pix2pix_lit" / "segmentation.py"
    seg.write_text(seg.read_text() + "\n\ndef _segmenter():\n    from pix2pix_lit.models.segmenter import Segmenter\n"
                   "    return Segmenter\n")
    proc = lint(copy, copy)
    assert proc.returncode == 1 and "Contracts: 0 kept, 2 broken." in proc.stdout, proc.stdout[-3000:]
    assert "pix2pix_lit.segmentation is not allowed to import pix2pix_lit.models" in proc.stdout
