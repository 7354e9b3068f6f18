"""What each multi-process spelling costs per training step, against one process (CPU, gloo).

    python experiments/ddp_cost.py [--steps 80] [--warmup 10]

Trains the quickstart model (U-Net 6 levels, ngf 32, 64x64, batch 4 per process) on the built-in data
with 1 process, then with 2 processes under each DDP spelling, and prints seconds per step (median
after warm-up, rank 0) and images/s over all processes. Each spelling runs in its own Python process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

SPELLINGS = ["1 process", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"]


class Timer(pl.Callback):
    """Wall time at the end of every training batch; rank 0 writes them (module level: ddp_spawn pickles it)."""

    def __init__(self, out: Path) -> None:
        self.out, self.times = out, []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            (self.out / "times.json").write_text(json.dumps({"times": self.times, "world": trainer.world_size}))


def train(spelling: str, out: Path, steps: int) -> None:
    from pix2pix_lit import Pix2Pix, SyntheticPairedDataModule

    pl.seed_everything(0)
    model = Pix2Pix(netG="unet", num_downs=6, ngf=32, ndf=32, fid=False, kid=False)
    dm = SyntheticPairedDataModule(str(out.parent / "data"), num_train=400, image_size=72, load_size=72, crop_size=64,
                                   batch_size=4, num_workers=0)
    devices, strategy = (1, "auto") if spelling == "1 process" else (2, spelling)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, precision="32-true", max_steps=steps,
                         limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Timer(out)])
    trainer.fit(model, dm)


def main() -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        train(args.worker[0], Path(args.worker[1]), args.steps)
        return []
    import torch
    from measure import cpu_model

    from pix2pix_lit.precision import cpu_bf16_support

    cpu = cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, bf16 kernels: {cpu_bf16_support()}")
    print(f"{'spelling':36s} {'s/step (rank 0)':>16s} {'images/s':>10s} {'vs 1 process':>13s}")
    base, rows = None, []
    with tempfile.TemporaryDirectory() as tmp:
        for spelling in SPELLINGS:
            out = Path(tmp) / spelling.replace(" ", "_")
            out.mkdir()
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker", spelling, str(out)],
                                  env=env, capture_output=True, text=True, cwd=tmp)
            if proc.returncode != 0:
                print(f"{spelling:36s} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            rec = json.loads((out / "times.json").read_text())
            t = rec["times"][args.warmup:]
            per_step = statistics.median(b - a for a, b in zip(t, t[1:]))
            images = 4 * rec["world"] / per_step
            base = base or images
            print(f"{spelling:36s} {per_step:16.3f} {images:10.1f} {images / base:12.2f}x")
            rows.append(f"| {spelling} | {per_step:.3f} | {images:.1f} | {images / base:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
