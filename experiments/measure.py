"""What the measurement scripts here share: the machine they ran on, memory readings, Markdown tables, and the
official training step (``Pix2PixModel.optimize_parameters``) as plain PyTorch.

The scripts are run as ``python experiments/<script>.py`` from the checkout, so this folder is on ``sys.path``
and they ``import measure``.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_report() -> str:
    """CPU model, the SIMD/matrix features that decide bf16 speed, and what PyTorch makes of them."""
    from pix2pix_lit.precision import cpu_bf16_support

    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    have = ", ".join(f for f in wanted if f in flags) or "none of " + "/".join(wanted)
    return (f"{cpu_model()}, {os.cpu_count()} cores ({have}); torch {torch.__version__}, kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, bf16 support: {cpu_bf16_support()}")


def cpu_kind() -> str:
    """``amx``, ``avx512_bf16`` or ``avx2`` (no bf16 kernels): the three kinds of machine the targets are set for."""
    flags = cpu_flags()
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "avx2"


def peak_rss_mb() -> float:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (DataLoader workers, the W&B service), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def memory_kb(pid: int, field: str) -> int:
    """``Rss`` or ``Pss`` (shared pages split between the processes sharing them) of one process, in kB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pix2pix_lit(args: list[str], cwd: Optional[Path] = None) -> None:
    """``pix2pix-lit ARGS`` in a new process (W&B off), or exit with its stderr's tail."""
    import subprocess
    import sys

    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "pix2pix_lit", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def table(rows: list[dict], cols: list[str]) -> str:
    """``rows`` as a Markdown table of ``cols`` (floats to 3 significant digits)."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def official_step(
    bf16: bool = False, channels_last: bool = False, optimizer: str = "default",
    phase: Optional[Callable[[str], None]] = None,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The official ``Pix2PixModel.optimize_parameters`` for ``unet_256`` + basic D (seeded), as plain PyTorch:
    G forward, D update on (source, fake) vs (source, target), G update (GAN + 100 * L1). Returns
    ``step(source, target)``.

    The official code on a CPU is the default: fp32, NCHW, torch's default Adam. The variants say where time
    goes: ``bf16`` autocast, ``channels_last``, ``optimizer`` ``fused`` (torch's) or ``ours``
    (``pix2pix_lit.optim.Adam``); ``phase(name)`` is called at the end of each phase (for timing).
    """
    from pix2pix_lit.nets import define_D, define_G
    from pix2pix_lit.optim import Adam

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G, D = define_G(3, 3, 64, "unet_256").to(memory_format=fmt), define_D(6, 64, "basic").to(memory_format=fmt)

    def adam(params):
        if optimizer == "ours":
            return Adam(params, lr=2e-4, betas=(0.5, 0.999))
        return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999), fused=True if optimizer == "fused" else None)

    opt_g, opt_d = adam(G.parameters()), adam(D.parameters())
    bce, l1 = torch.nn.BCEWithLogitsLoss(), torch.nn.L1Loss()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    mark = phase or (lambda name: None)

    def step(real_a: torch.Tensor, real_b: torch.Tensor) -> None:
        real_a, real_b = real_a.contiguous(memory_format=fmt), real_b.contiguous(memory_format=fmt)
        with autocast():
            fake_b = G(real_a)
        mark("G forward")
        D.requires_grad_(True)
        opt_d.zero_grad()
        with autocast():
            pred_fake, pred_real = D(torch.cat([real_a, fake_b], 1).detach()), D(torch.cat([real_a, real_b], 1))
            loss_d = 0.5 * (bce(pred_fake, torch.zeros_like(pred_fake)) + bce(pred_real, torch.ones_like(pred_real)))
        mark("D forward")
        loss_d.backward()
        mark("D backward")
        opt_d.step()
        mark("D Adam")
        D.requires_grad_(False)
        opt_g.zero_grad()
        with autocast():
            pred_fake = D(torch.cat([real_a, fake_b], 1))
            loss_g = bce(pred_fake, torch.ones_like(pred_fake)) + 100.0 * l1(fake_b, real_b)
        mark("G loss forward")
        loss_g.backward()
        mark("G backward")
        opt_g.step()
        mark("G Adam")

    return step


def plain_official_update(G, D, opt_g, opt_d, a: torch.Tensor, b: torch.Tensor) -> None:
    """One official ``optimize_parameters`` (G forward, D update on detached fakes vs reals, G update on
    GAN + 100 * L1) with the given networks and optimizers, fp32, as a bare loop: the reference the framework's
    step is timed against (experiments/overhead.py, experiments/gpu_bench.py)."""
    import torch.nn.functional as F

    fake = G(a)
    D.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    pf, pr = D(torch.cat([a, fake.detach()], 1)), D(torch.cat([a, b], 1))
    loss_d = 0.5 * (F.binary_cross_entropy_with_logits(pf, torch.zeros_like(pf))
                    + F.binary_cross_entropy_with_logits(pr, torch.ones_like(pr)))
    loss_d.backward()
    opt_d.step()
    D.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    pf = D(torch.cat([a, fake], 1))
    loss_g = F.binary_cross_entropy_with_logits(pf, torch.ones_like(pf)) + 100.0 * F.l1_loss(fake, b)
    loss_g.backward()
    opt_g.step()


class PhaseTimer:
    """Milliseconds per phase of :func:`official_step`, summed over the steps since :meth:`reset`."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.start()

    def start(self) -> None:
        self.last = time.perf_counter()

    def reset(self) -> None:
        self.total.clear()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.total[name] = self.total.get(name, 0.0) + now - self.last
        self.last = now


LOG = Path(__file__).resolve().parent / "log"


def log_entry(title: str, text: str, when: Optional[float] = None) -> Path:
    """Write one dated entry of a run (``# <date> — <title>`` and ``text``) as a new file under
    ``experiments/log/``, never over an earlier one; RESULTS.md's claims table links the entries it quotes."""
    import re
    import time

    stamp = time.strftime("%Y-%m-%d-%H%M", time.localtime(when))
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:50].strip("-") or "entry"
    LOG.mkdir(exist_ok=True)
    path, n = LOG / f"{stamp}-{slug}.md", 2
    while path.exists():
        path, n = LOG / f"{stamp}-{slug}-{n}.md", n + 1
    path.write_text(f"# {time.strftime('%Y-%m-%d %H:%M', time.localtime(when))} — {title}\n\n{text.strip()}\n")
    return path

