"""Writing so that a reader never sees half a result: into a temporary name beside the target, renamed over it
when complete. The temporary names carry the writer's process id, so what a killed process left behind is told
apart from what a running one is still writing, and removed at the next run."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from pix2pix_lit.errors import ConfigError

log = logging.getLogger(__name__)


def process_running(pid: int) -> bool:
    """Whether a process with this id runs on this machine (also someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def stage_name(out: Path) -> Path:
    """The temporary folder beside ``out`` that this process fills: ``.NAME.partial-PID``."""
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def remove_stale_stages(out: Path) -> int:
    """Remove the ``.NAME.partial-PID`` folders beside ``out`` of processes that no longer run (killed while
    writing); returns how many."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.partial-(?P<pid>\d+)$")
    removed = 0
    if not out.parent.is_dir():
        return 0
    for path in out.parent.iterdir():
        m = pattern.match(path.name)
        if m and int(m["pid"]) != os.getpid() and not process_running(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d folder(s) an interrupted run left beside %s", removed, out)
    return removed


def check_free_output(out: Path, *inputs: Path) -> None:
    """``out`` can take the results: new or empty, and neither inside an input folder nor holding one (the next
    run would read the outputs as inputs)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file; give a folder that does not exist yet")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty; choose a new folder (nothing is overwritten)")
    target = out.resolve()
    for folder in inputs:
        src = Path(folder).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise ConfigError(f"output folder {out} is inside the input folder {folder} (or holds it); choose an "
                              "output folder outside the inputs")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into, renamed to ``out`` when everything is written: a failure
    leaves no output at all (and a rerun is not refused for a half-filled folder). ``out`` must be absent or
    empty."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(out)
    stage = stage_name(out)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        if out.exists():
            out.rmdir()  # empty (the caller checked)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """A temporary file name beside ``out`` (``.NAME.PID.partial.SUFFIX``: writers that read the format from the
    suffix still can) to write, renamed to ``out`` when the block ends without an error; on an error it is removed
    and ``out`` is left as it was (absent, or the earlier file). Folders above ``out`` are made."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
