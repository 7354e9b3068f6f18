"""Does the EMA generator help at equal steps? G against G_ema of the same run, under the official test protocol.

    python experiments/ema_compare.py maps --steps 2000        # map -> aerial, the official maps recipe
    python experiments/ema_compare.py quickstart              # the built-in data, as `make train`

The EMA only follows G (training is unchanged by it), so one run with ``model.ema_decay`` gives both
generators from the same seed and the same training trajectory. The run trains through the CLI, then
``pix2pix-lit test`` scores each generator (``use_ema_for_eval`` true/false) in both inference modes
(``paper``: the official default, ``eval``: ``--eval``) on the val split (whole images at 256, the
official test preprocessing) and prints a Markdown table with the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPS = REPO.parent / "shared" / "datasets" / "maps"


def cli(args: list[str]) -> None:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "pix2pix_lit", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", choices=["maps", "quickstart"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "ema_compare")
    args = p.parse_args()
    run = args.out / f"{args.recipe}-seed{args.seed}"
    if args.recipe == "maps":
        base = ["-c", "configs/maps.yaml", "--data.root", str(MAPS), "--data.test_split", "val"]
        fit = ["--trainer.max_steps", str(args.steps), "--trainer.limit_val_batches", "0",
               "--periodic_checkpoint.every_n_train_steps", str(args.steps)]
    else:
        base = ["-c", "configs/quickstart.yaml"]
        fit = []
    common = [*base, "--trainer.default_root_dir", str(run), "--trainer.logger", "false", "--trainer.enable_progress_bar",
              "false", "--seed_everything", str(args.seed)]
    t0 = time.time()
    cli(["fit", *common, *fit, "--model.ema_decay", str(args.ema_decay), "--model.fid", "false", "--model.kid", "false"])
    train_s = time.time() - t0
    ckpt = run / "checkpoints" / "last.ckpt"
    rows = []
    for use_ema in ("false", "true"):
        for mode in ("paper", "eval"):
            out = run / f"test-{'G_ema' if use_ema == 'true' else 'G'}-{mode}"
            cli(["test", *common, "--ckpt_path", str(ckpt), "--model.use_ema_for_eval", use_ema,
                 "--model.inference_mode", mode, "--test_report.output_dir", str(out)])
            report = json.loads((out / "metrics.json").read_text())
            rows.append((report["protocol"]["generator"], mode, report["num_images"], report["metrics"]))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine())
    import torch

    steps = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    command = f"python experiments/ema_compare.py {args.recipe}" + (f" --steps {args.steps}" if args.recipe == "maps" else "")
    print(f"`{command} --ema-decay {args.ema_decay} --seed {args.seed}` ({cpu}; {steps} steps, training "
          f"{train_s / 60:.1f} min)\n")
    print("| generator | inference mode | images | FID | KID | SSIM | PSNR | L1 |")
    print("|---|---|---|---|---|---|---|---|")
    for gen, mode, n, m in rows:
        print(f"| {gen} | {mode} | {n} | {m.get('fid', float('nan')):.2f} | {m.get('kid_mean', float('nan')):.4f} | "
              f"{m['ssim']:.4f} | {m['psnr']:.2f} | {m['l1']:.4f} |")


if __name__ == "__main__":
    main()
