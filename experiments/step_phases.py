"""Where one training step's time goes: the official step (G forward, D update, G update) as a plain loop of our
networks, timed phase by phase, in the layouts, precisions and Adam kernels the framework can choose.

    python experiments/step_phases.py                 # every variant below, 10 timed steps each after 5
    python experiments/step_phases.py --variant bf16-cl-fused

Variants: fp32 NCHW with torch's default Adam (the official code on a CPU), and bf16 autocast +
channels_last with torch's default Adam, torch's fused Adam, and ours (``pix2pix_lit.optim.Adam``: fused, with
channels_last weights handed over as contiguous views). Random 256x256 inputs: data loading is not timed.
"""

from __future__ import annotations

import argparse

import torch
from measure import PhaseTimer, cpu_report, official_step

VARIANTS = {  # name: (bf16 autocast, channels_last, optimizer)
    "fp32-nchw-default": (False, False, "default"),
    "fp32-nchw-ours": (False, False, "ours"),
    "bf16-cl-default": (True, True, "default"),
    "bf16-cl-fused": (True, True, "fused"),
    "bf16-cl-ours": (True, True, "ours"),
}


def run(name: str, steps: int = 10, warmup: int = 5) -> dict[str, float]:
    bf16, cl, kind = VARIANTS[name]
    timer = PhaseTimer()
    step = official_step(bf16, cl, kind, phase=timer)
    a, b = torch.rand(1, 3, 256, 256) * 2 - 1, torch.rand(1, 3, 256, 256) * 2 - 1
    for i in range(warmup + steps):
        if i == warmup:
            timer.reset()
        timer.start()
        step(a, b)
    out = {k: 1000 * v / steps for k, v in timer.total.items()}
    out["step"] = sum(out.values())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=list(VARIANTS), action="append")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    print(cpu_report())
    rows = {name: run(name, args.steps) for name in args.variant or VARIANTS}
    cols = list(next(iter(rows.values())))
    print("| variant | " + " | ".join(f"{c} ms" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
