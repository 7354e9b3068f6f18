"""The small measurements behind issue 10's changes, quoted in experiments/RESULTS.md (one process each, CPU).

    python experiments/issue10_probes.py adam        # Adam alone on unet_256's parameters, per layout and kernel
    python experiments/issue10_probes.py autocast    # paper-mode G under autocast: per-call weight casts vs cast once
    python experiments/issue10_probes.py inception   # FID Inception img/s and extra peak memory by batch size
    python experiments/issue10_probes.py memory ours|official [--at 30]   # per-process memory of a training

(The numbers quoted in RESULTS.md for issue 10 were taken with loose scripts doing these same measurements;
this file repeats them so they can be re-run. Re-runs on a shared VM vary by ~10%.)
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]


def adam() -> None:
    from pix2pix_lit.nets import define_G
    from pix2pix_lit.optim import Adam

    G = define_G(3, 3, 64, "unet_256")

    def bench(opt) -> float:
        for _ in range(3):
            opt.step()
        t = time.perf_counter()
        for _ in range(10):
            opt.step()
        return (time.perf_counter() - t) / 10 * 1000

    def torch_adam(**kw):
        return torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), **kw)

    for layout in ("nchw", "channels_last"):
        if layout == "channels_last":
            G.to(memory_format=torch.channels_last)
        for p in G.parameters():
            p.grad = torch.randn_like(p)  # keeps the parameter's layout
        print(f"{layout}: torch fused {bench(torch_adam(fused=True)):.1f} ms, foreach {bench(torch_adam(foreach=True)):.1f} ms, "
              f"loop {bench(torch_adam(foreach=False)):.1f} ms, pix2pix_lit.optim.Adam "
              f"{bench(Adam(G.parameters(), 2e-4, (0.5, 0.999))):.1f} ms")


def autocast() -> None:
    from pix2pix_lit import Pix2Pix
    from pix2pix_lit.nets.norm import batch_norm_own_statistics
    from pix2pix_lit.precision import autocast_ready_copy

    G = Pix2Pix(fid=False, kid=False).G.train().to(memory_format=torch.channels_last)
    x = (torch.rand(1, 3, 256, 256) * 2 - 1).contiguous(memory_format=torch.channels_last)

    def rate(g: nn.Module, n: int = 40):
        torch.manual_seed(0)  # dropout is on in paper mode
        with torch.inference_mode(), batch_norm_own_statistics(g):
            for _ in range(5):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    g(x)
            t = time.perf_counter()
            for _ in range(n):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = g(x)
        return n / (time.perf_counter() - t), y

    r1, y1 = rate(G)
    r2, y2 = rate(autocast_ready_copy(copy.deepcopy(G), torch.bfloat16))
    print(f"autocast casts each call: {r1:.2f} img/s; conv weights cast once: {r2:.2f} img/s; "
          f"max |diff| {(y1.float() - y2.float()).abs().max():.3g}")


def inception() -> None:
    for bs in (1, 2, 4, 8):  # each in its own process, so its peak memory is its own
        subprocess.run([sys.executable, __file__, "inception-one", str(bs)], check=True)


def inception_one(bs: int) -> None:
    from pix2pix_lit.metrics import load_inception

    net = load_inception().to(memory_format=torch.channels_last)
    u8 = torch.randint(0, 255, (bs, 3, 256, 256), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        for _ in range(2):
            net(u8)
        t, n = time.perf_counter(), 0
        while n < 64:
            net(u8)
            n += bs
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"batch {bs}: {n / (time.perf_counter() - t):.2f} img/s, peak rss +{extra:.0f} MB")


def memory(who: str, at: float) -> None:
    sys.path.insert(0, str(REPO / "experiments"))
    from bench import MAPS, memory_kb, process_tree

    if who == "ours":
        cmd = [sys.executable, "-m", "pix2pix_lit", "fit", "-c", "configs/maps.yaml", "--data.root", str(MAPS),
               "--trainer.max_steps", "200", "--trainer.default_root_dir", "/tmp/issue10-memory"]
    else:
        cmd = [sys.executable, "experiments/bench.py", "--child", "--part", "official", "--steps", "200"]
    env = dict(os.environ, BENCH_T0=repr(time.time()), PYTHONWARNINGS="ignore")
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(at)
    print("| pid | parent | Rss | Pss | Private_Dirty | Shared_Dirty | command |\n|---|---|---|---|---|---|---|")
    for q in process_tree(p.pid):
        fields = [memory_kb(q, f) // 1024 for f in ("Rss", "Pss", "Private_Dirty", "Shared_Dirty")]
        ppid = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()[1]
        cmdline = Path(f"/proc/{q}/cmdline").read_text().replace("\0", " ")[:50]
        print(f"| {q} | {ppid} | " + " | ".join(map(str, fields)) + f" | {cmdline} |")
    p.kill()
    p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["adam", "autocast", "inception", "inception-one", "memory"])
    p.add_argument("arg", nargs="?")
    p.add_argument("--at", type=float, default=30.0, help="memory: seconds after the start")
    args = p.parse_args()
    if args.probe == "inception-one":
        inception_one(int(args.arg))
    elif args.probe == "memory":
        memory(args.arg or "ours", args.at)
    else:
        {"adam": adam, "autocast": autocast, "inception": inception}[args.probe]()


if __name__ == "__main__":
    main()
