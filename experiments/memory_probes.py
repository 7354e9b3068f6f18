"""The small measurements behind the Adam kernel, autocast weight cache, Inception batch and training-memory
choices, quoted in experiments/RESULTS.md (one process each, CPU).

    python experiments/memory_probes.py adam        # Adam alone on unet_256's parameters, per layout and kernel
    python experiments/memory_probes.py autocast    # paper-mode G under autocast: per-call weight casts vs cast once
    python experiments/memory_probes.py inception   # FID Inception img/s and extra peak memory by batch size
    python experiments/memory_probes.py memory ours|official [--at 30]   # per-process memory of a training
    python experiments/memory_probes.py anatomy     # the trainer's memory at steps 1/30: tensors by dtype, malloc heap
    python experiments/memory_probes.py workers     # 60 maps iterations per data-worker / malloc setting: speed, peak PSS
    python experiments/memory_probes.py val-workers # a full maps validation with no workers and with 2
    python experiments/memory_probes.py timeline [seconds] [fit options]  # process-tree PSS every second

(The numbers quoted in RESULTS.md for these choices were taken with loose scripts doing these same measurements;
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
    from pix2pix_lit.nets.norm import batch_norm_per_image
    from pix2pix_lit.precision import autocast_ready_copy

    G = Pix2Pix(fid=False, kid=False).G.train().to(memory_format=torch.channels_last)
    x = (torch.rand(1, 3, 256, 256) * 2 - 1).contiguous(memory_format=torch.channels_last)

    def rate(g: nn.Module, n: int = 40):
        torch.manual_seed(0)  # dropout is on in paper mode
        with torch.inference_mode(), batch_norm_per_image(g):
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
    from measure import memory_kb, process_tree

    if who == "ours":
        cmd = _fit_cmd([], steps=200)
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


try:
    import lightning.pytorch as _pl

    class Anatomy(_pl.Callback):
        """``--trainer.callbacks+=experiments.memory_probes.Anatomy``: the trainer's memory at steps 1 and 30."""

        def on_train_start(self, trainer, pl_module):
            report("train start")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step in (1, 30):
                report(f"step {trainer.global_step}")
            if trainer.global_step == 30:
                trainer.should_stop = True
except ImportError:  # the other probes need no Lightning
    pass


def report(tag: str) -> None:
    """RSS and anonymous memory, every tensor reachable from the garbage collector by dtype (storages counted
    once), and glibc's heap: in use, free inside it (kept by malloc), and mapped apart (large blocks)."""
    import ctypes
    import gc

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    mi = libc.mallinfo2()
    seen, by_dtype = set(), {}
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor):
            storage = o.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                by_dtype[str(o.dtype)] = by_dtype.get(str(o.dtype), 0) + storage.nbytes()
    mb = lambda v: v // 2**20  # noqa: E731
    sm = {ln.split(":")[0]: int(ln.split()[1]) // 1024 for ln in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]}
    tensors = ", ".join(f"{k} {mb(v)}" for k, v in sorted(by_dtype.items()) if mb(v))
    print(f"\nANATOMY {tag}: Rss {sm['Rss']} MB, anonymous {sm['Anonymous']} MB | tensors {mb(sum(by_dtype.values()))} MB "
          f"({tensors}) | malloc heap {mb(mi.arena)} MB: in use {mb(mi.uordblks)}, free {mb(mi.fordblks)}; "
          f"mapped apart {mb(mi.hblkhd)} MB", flush=True)


def _fit_cmd(extra: list[str], steps: int = 60) -> list[str]:
    sys.path.insert(0, str(REPO / "experiments"))
    from bench import MAPS

    return [sys.executable, "-m", "pix2pix_lit", "fit", "-c", "configs/maps.yaml", "--data.root", str(MAPS),
            "--trainer.max_steps", str(steps), "--trainer.default_root_dir", "/tmp/memory-probe", *extra]


def anatomy() -> None:
    import re

    out = subprocess.run(_fit_cmd(["--trainer.callbacks+=experiments.memory_probes.Anatomy"]), cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    print("\n".join(re.findall(r"ANATOMY [^\r\n]*", out.stdout)) or out.stderr[-2000:])


def workers() -> None:
    """Whole `fit -c configs/maps.yaml` processes to the 60th iteration (bench's start-up run) per setting."""
    sys.path.insert(0, str(REPO / "experiments"))
    from bench import run_watched

    settings = [([], {}), (["--data.num_workers", "1"], {}), (["--data.num_workers", "2"], {}),
                ([], {"MALLOC_MMAP_THRESHOLD_": "4194304"}), ([], {"MALLOC_MMAP_THRESHOLD_": "1048576"}),
                ([], {"MALLOC_TRIM_THRESHOLD_": "0"})]
    print("| options | environment | to_iteration_60_s | s_per_it_15_to_60 | peak_tree_pss_mb | processes |")
    print("|---|---|---|---|---|---|")
    for extra, env in settings:
        cmd = _fit_cmd([*extra, "--trainer.callbacks+=experiments.bench.MarkIterations"])
        r = run_watched(cmd, dict(os.environ, PYTHONWARNINGS="ignore", WANDB_SILENT="true", **env))
        m = r["marks"]
        print(f"| {' '.join(extra) or '(as shipped)'} | {' '.join(f'{k}={v}' for k, v in env.items())} | {m[60]:.1f} | "
              f"{(m[60] - m[15]) / 45:.3f} | {r['peak_tree_pss_mb']:.0f} | {r['processes']} |", flush=True)


def val_workers() -> None:
    import functools
    import json

    sys.path.insert(0, str(REPO / "experiments"))
    import bench

    original = bench.datamodule
    for n in (None, 2):
        bench.datamodule = functools.partial(original, num_workers=n)
        r = bench.run_val("bf16-mixed", 1)
        keep = ("first_val_s", "cached_val_s", "val_fid", "peak_rss_mb")
        print(f"num_workers {n}: " + json.dumps({k: r[k] for k in keep}), flush=True)


def timeline(seconds: float, extra: list[str]) -> None:
    sys.path.insert(0, str(REPO / "experiments"))
    from measure import memory_kb, process_tree

    t0 = time.time()
    p = subprocess.Popen(_fit_cmd(extra, steps=100000), cwd=REPO, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while time.time() - t0 < seconds:
        pss = [memory_kb(q, "Pss") // 1024 for q in process_tree(p.pid)]
        peak = max(peak, sum(pss))
        print(f"{time.time() - t0:5.1f} s: tree PSS {sum(pss)} MB (per process: {' '.join(map(str, pss))})", flush=True)
        time.sleep(1.0)
    p.kill()
    p.wait()
    print(f"peak tree PSS {peak} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["adam", "autocast", "inception", "inception-one", "memory", "anatomy", "workers",
                                      "val-workers", "timeline"])
    p.add_argument("arg", nargs="?")
    p.add_argument("fit_options", nargs=argparse.REMAINDER, help="timeline: options added to the fit command")
    p.add_argument("--at", type=float, default=30.0, help="memory: seconds after the start")
    args = p.parse_args()
    if args.probe == "inception-one":
        inception_one(int(args.arg))
    elif args.probe == "memory":
        memory(args.arg or "ours", args.at)
    elif args.probe == "timeline":
        timeline(float(args.arg or 60), args.fit_options)
    else:
        {"adam": adam, "autocast": autocast, "inception": inception, "anatomy": anatomy, "workers": workers,
         "val-workers": val_workers}[args.probe]()


if __name__ == "__main__":
    main()
