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
import time

import torch

from pix2pix_lit.nets import define_D, define_G
from pix2pix_lit.optim import Adam

VARIANTS = {  # name: (bf16 autocast, channels_last, optimizer)
    "fp32-nchw-default": (False, False, "default"),
    "fp32-nchw-ours": (False, False, "ours"),
    "bf16-cl-default": (True, True, "default"),
    "bf16-cl-fused": (True, True, "fused"),
    "bf16-cl-ours": (True, True, "ours"),
}


def adam(params, kind: str):
    if kind == "ours":
        return Adam(params, lr=2e-4, betas=(0.5, 0.999))
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999), fused=True if kind == "fused" else None)


def run(name: str, steps: int = 10, warmup: int = 5) -> dict[str, float]:
    bf16, cl, kind = VARIANTS[name]
    torch.manual_seed(0)
    fmt = torch.channels_last if cl else torch.contiguous_format
    G, D = define_G(3, 3, 64, "unet_256").to(memory_format=fmt), define_D(6, 64, "basic").to(memory_format=fmt)
    opt_g, opt_d = adam(G.parameters(), kind), adam(D.parameters(), kind)
    bce, l1 = torch.nn.BCEWithLogitsLoss(), torch.nn.L1Loss()
    a = (torch.rand(1, 3, 256, 256) * 2 - 1).contiguous(memory_format=fmt)
    b = (torch.rand(1, 3, 256, 256) * 2 - 1).contiguous(memory_format=fmt)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    total: dict[str, float] = {}

    def tick(key: str, t: float) -> float:
        now = time.perf_counter()
        total[key] = total.get(key, 0.0) + now - t
        return now

    for i in range(warmup + steps):
        if i == warmup:
            total.clear()
        t = time.perf_counter()
        with autocast():
            fake = G(a)
        t = tick("G forward", t)
        opt_d.zero_grad()
        with autocast():
            pred_fake, pred_real = D(torch.cat([a, fake], 1).detach()), D(torch.cat([a, b], 1))
            loss_d = 0.5 * (bce(pred_fake, torch.zeros_like(pred_fake)) + bce(pred_real, torch.ones_like(pred_real)))
        t = tick("D forward", t)
        loss_d.backward()
        t = tick("D backward", t)
        opt_d.step()
        t = tick("D Adam", t)
        D.requires_grad_(False)
        opt_g.zero_grad()
        with autocast():
            pred_fake = D(torch.cat([a, fake], 1))
            loss_g = bce(pred_fake, torch.ones_like(pred_fake)) + 100 * l1(fake, b)
        t = tick("G loss forward", t)
        loss_g.backward()
        t = tick("G backward", t)
        opt_g.step()
        tick("G Adam", t)
        D.requires_grad_(True)
    out = {k: 1000 * v / steps for k, v in total.items()}
    out["step"] = sum(out.values())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=list(VARIANTS), action="append")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    rows = {name: run(name, args.steps) for name in args.variant or VARIANTS}
    cols = list(next(iter(rows.values())))
    print("| variant | " + " | ".join(f"{c} ms" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
