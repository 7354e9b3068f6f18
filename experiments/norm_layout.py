"""What instance norm costs in a channels_last network: the 256x256 U-Net generator's forward and backward (batch 1)
with torch's ``nn.InstanceNorm2d``, with ours (``pix2pix_lit.nets.norm.InstanceNorm2d``: the same numbers, kept in
channels_last) and, for scale, with the official batch norm; in bf16 autocast + channels_last (the framework's
default on a CPU with bf16 kernels) and in fp32 NCHW. The variants take turns, so a busy CPU slows each alike.

    python experiments/norm_layout.py [--rounds 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn as nn
from measure import cpu_report

from pix2pix_lit.nets import define_G
from pix2pix_lit.nets.generators import UnetGenerator
from pix2pix_lit.nets.norm import InstanceNorm2d, init_weights


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    layer = {"instance norm, torch's": nn.InstanceNorm2d, "instance norm, ours": InstanceNorm2d}.get(kind)
    if layer is None:
        return define_G(3, 3, 64, "unet_256", "batch", use_dropout=False)
    net = UnetGenerator(3, 3, 8, 64, functools.partial(layer, affine=False, track_running_stats=False), False)
    return init_weights(net)


def seconds(net: nn.Module, bf16: bool, steps: int) -> float:
    layout = torch.channels_last if bf16 else torch.contiguous_format
    net = net.to(memory_format=layout)
    x = (torch.rand(1, 3, 256, 256) * 2 - 1).to(memory_format=layout)
    total = 0.0
    for i in range(steps + 1):  # the first is warm-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().mean().backward()
        if i:
            total += time.perf_counter() - t0
    return total / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 1:
        p.error(f"--rounds {args.rounds} --steps {args.steps}: both must be at least 1")
    print(cpu_report())
    kinds = ["instance norm, torch's", "instance norm, ours", "batch norm"]
    for bf16 in (True, False):
        nets = {k: build(k) for k in kinds}
        times = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                times[k].append(seconds(nets[k], bf16, args.steps))
        base = min(times["batch norm"])
        print(f"\n{'bf16 autocast, channels_last' if bf16 else 'fp32, NCHW'}: U-Net 256 forward + backward, batch 1 "
              f"(best of {args.rounds} rounds of {args.steps})")
        print("| norm | ms | vs batch norm |\n|---|---|---|")
        for k in kinds:
            print(f"| {k} | {1000 * min(times[k]):.0f} | {min(times[k]) / base:.2f}x |")


if __name__ == "__main__":
    main()
