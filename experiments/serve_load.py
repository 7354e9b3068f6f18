"""A hostile mixed burst against a real `pix2pix-lit serve` on 127.0.0.1: does it stay within its memory?

    python experiments/serve_load.py [--requests 240] [--clients 24] [--seconds 180] [--memory-budget-mb 2048]

For each generator (the quickstart's U-Net and the official resnet_9blocks, freshly initialised: the weights do
not change the cost), exported to ONNX, a server is started with `--memory-budget-mb` and sent REQUESTS
requests from CLIENTS concurrent clients, bounded by SECONDS, in a fixed shuffled mix: tiny (16x16), normal
(256x256), large (1024x1024), huge (a flat 4096x4096 PNG, 42 KB on the wire) and garbage bytes. Prints the
server's resident memory (idle and peak, sampled every 20 ms from /proc), latency percentiles per kind and the
count of each status code, as a Markdown table with the command and the CPU above it.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_bench import cpu_name  # noqa: E402
from test_serve import start_server, stop_server  # noqa: E402  (the tests' server start/stop)

from pix2pix_lit import Pix2Pix  # noqa: E402
from pix2pix_lit.serving.export import export_generator  # noqa: E402

GENERATORS = {
    "quickstart U-Net (unet, 6 downs, ngf 32)": dict(netG="unet", num_downs=6, ngf=32),
    "resnet_9blocks (ngf 64)": dict(netG="resnet_9blocks", norm="instance"),
}
MIX = {"tiny": 3, "normal": 4, "large": 2, "huge": 1, "garbage": 2}


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    noise = lambda s: Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))  # noqa: E731
    return {"tiny": png(noise(16)), "normal": png(noise(256)), "large": png(noise(1024)),
            "huge": png(Image.new("RGB", (4096, 4096), (200, 200, 200))), "garbage": os.urandom(50_000)}


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def burst(url: str, pid: int, requests: int, clients: int, seconds: float) -> dict:
    payload = bodies()
    kinds = [k for k, n in MIX.items() for _ in range(n)]
    plan = [kinds[i % len(kinds)] for i in range(requests)]
    random.Random(0).shuffle(plan)
    idle = rss_mb(pid)
    peak = [idle]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_mb(pid))
            except OSError:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deadline = time.monotonic() + seconds

    def one(kind: str):
        if time.monotonic() > deadline:
            return kind, "not sent", 0.0
        t0 = time.perf_counter()
        try:
            r = httpx.post(f"{url}/v1/translate", content=payload[kind], headers={"Content-Type": "image/png"},
                           timeout=max(1.0, deadline - time.monotonic() + 30))
            status = str(r.status_code)
        except httpx.HTTPError as e:
            status = type(e).__name__
        return kind, status, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, plan))
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    health = httpx.get(f"{url}/health").json()
    return {"idle": idle, "peak": peak[0], "wall": wall, "results": results, "health": health}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--memory-budget-mb", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"`python experiments/serve_load.py --requests {args.requests} --clients {args.clients} --seconds "
          f"{args.seconds:g} --memory-budget-mb {args.memory_budget_mb}`\n")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; mix per 12 requests: "
          f"{', '.join(f'{n} {k}' for k, n in MIX.items())}\n")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for title, arch in GENERATORS.items():
            torch.manual_seed(0)
            model = Pix2Pix(**arch, fid=False, kid=False)
            path = Path(tmp) / "g.onnx"
            contract = export_generator(model.G, path, "onnx", "eval", 3, 3, model.size_multiple)
            proc, url = start_server(["--model", str(path), "--memory-budget-mb", str(args.memory_budget_mb)],
                                     Path(tmp), threads=args.threads)
            try:
                limits = httpx.get(f"{url}/health").json()["limits"]
                r = burst(url, proc.pid, args.requests, args.clients, args.seconds)
                hwm = rss_mb(proc.pid, "VmHWM")
            finally:
                stop_server(proc)
            print(f"**{title}**: {contract['memory']['bytes_per_pixel']} bytes a pixel; limits: images up to "
                  f"{limits['max_pixels']} pixels, {limits['max_batch_pixels']} a batch, {limits['max_queue']} requests "
                  f"/ {limits['max_pending_pixels']} pixels in progress. Resident memory: idle {r['idle']:.0f} MB, "
                  f"peak {r['peak']:.0f} MB sampled ({hwm:.0f} MB high-water mark), budget {args.memory_budget_mb} MB; "
                  f"{len(r['results'])} requests in {r['wall']:.1f} s; batcher alive after: "
                  f"{r['health']['batching']['alive']}\n")
            by_kind: dict[str, list[float]] = defaultdict(list)
            statuses: dict[str, Counter] = defaultdict(Counter)
            for kind, status, latency in r["results"]:
                statuses[kind][status] += 1
                if status != "not sent":
                    by_kind[kind].append(latency)
            print("| kind | requests | statuses | p50 s | p99 s |")
            print("|---|---|---|---|---|")
            for kind in MIX:
                lat = sorted(by_kind[kind])
                p50 = statistics.median(lat) if lat else float("nan")
                p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))] if lat else float("nan")
                counts = ", ".join(f"{s}: {n}" for s, n in sorted(statuses[kind].items()))
                print(f"| {kind} | {sum(statuses[kind].values())} | {counts} | {p50:.2f} | {p99:.2f} |")
            print()


if __name__ == "__main__":
    main()
