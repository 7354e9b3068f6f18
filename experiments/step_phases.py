"""Where one training step's time goes: the official step (G forward, D update, G update) as a plain loop of our
networks, timed phase by phase, in the layouts, precisions and Adam kernels the framework can choose.

    python experiments/step_phases.py                 # every variant below, 10 timed steps each after 5
    python experiments/step_phases.py --variant bf16-cl-fused
    python experiments/step_phases.py --variant bf16-cl-ours --profile   # the ops a step spends its time in

Variants: fp32 NCHW with torch's default Adam (the official code on a CPU), and bf16 autocast +
channels_last with torch's default Adam, torch's fused Adam, and ours (``pix2pix_lit.optim.Adam``: fused, with
channels_last weights handed over as contiguous views). Random 256x256 inputs: data loading is not timed.
``--profile``: torch.profiler over the timed steps instead; the ops by their own time and shapes, and each tensor
copy of 1 M elements or more with the op it was made for (a weight cast by autocast, a gradient cast back, ...).
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


def profile(name: str, steps: int = 10, warmup: int = 5) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    bf16, cl, kind = VARIANTS[name]
    step = official_step(bf16, cl, kind)
    a, b = torch.rand(1, 3, 256, 256) * 2 - 1, torch.rand(1, 3, 256, 256) * 2 - 1
    for _ in range(warmup):
        step(a, b)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step(a, b)
    print(f"{name}: {steps} steps")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                             max_name_column_width=32, max_shapes_column_width=48))
    copies: dict[tuple[str, str], list[float]] = {}
    for e in prof.events():
        shape = e.input_shapes[0] if e.name == "aten::copy_" and e.input_shapes else []
        if not shape or torch.Size(shape).numel() < 1 << 20:
            continue
        made_for, q = [], e.cpu_parent
        while q is not None and len(made_for) < 4:
            if not q.name.startswith("aten::_to_copy") and q.name not in ("aten::to", "aten::copy_"):
                made_for.append(q.name)
            q = q.cpu_parent
        copies.setdefault((str(shape), " <- ".join(made_for[:2]) or "(top level)"), []).append(e.self_cpu_time_total)
    print("| copied tensor | made for | copies a step | ms a step |")
    print("|---|---|---|---|")
    for (shape, made_for), times in sorted(copies.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {shape} | {made_for} | {len(times) / steps:g} | {sum(times) / 1000 / steps:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=list(VARIANTS), action="append")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="profile the steps instead of timing their phases")
    args = p.parse_args()
    print(cpu_report())
    if args.profile:
        for name in args.variant or VARIANTS:
            profile(name, args.steps)
        return
    rows = {name: run(name, args.steps) for name in args.variant or VARIANTS}
    cols = list(next(iter(rows.values())))
    print("| variant | " + " | ".join(f"{c} ms" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
