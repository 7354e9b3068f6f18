"""Load on the HTTP service over loopback: latency percentiles, requests/s and errors, batched vs unbatched.

    python experiments/serve_bench.py [--requests 200] [--clients 8] [--size 256] [--threads 2]

Exports a freshly initialised unet_256 generator (the maps recipe's size; the weights do not change the
cost) to ONNX, starts `pix2pix-lit serve` on 127.0.0.1 twice — with batching (--max-batch 8) and
without (--max-batch 1) — and sends the same bounded load to each: REQUESTS 256x256 PNGs from CLIENTS
concurrent clients. Prints a Markdown table (the command and the CPU above it).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_serve import start_server, stop_server  # noqa: E402  (the tests' server start/stop)

from pix2pix_lit import Pix2Pix  # noqa: E402
from pix2pix_lit.serving.export import export_generator  # noqa: E402


def cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load(url: str, body: bytes, requests: int, clients: int) -> dict:
    def one(_):
        t0 = time.perf_counter()
        try:
            r = httpx.post(f"{url}/v1/translate", content=body, headers={"Content-Type": "image/png"}, timeout=120)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - t0, ok

    httpx.post(f"{url}/v1/translate", content=body, headers={"Content-Type": "image/png"}, timeout=120)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = sorted(t for t, _ in results)
    q = statistics.quantiles(lat, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98], "rps": requests / wall,
            "errors": sum(not ok for _, ok in results), "batching": httpx.get(f"{url}/health").json()["batching"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    print(f"`python experiments/serve_bench.py --requests {args.requests} --clients {args.clients} --size {args.size} "
          f"--threads {args.threads}`\n")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; unet_256 (ngf 64) as ONNX, "
          f"{args.size}x{args.size} PNG, {args.requests} requests from {args.clients} clients\n")
    print("| server | p50 s | p95 s | p99 s | requests/s | errors | batches | largest batch |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        model = Pix2Pix(netG="unet_256", fid=False, kid=False)
        path = Path(tmp) / "g.onnx"
        export_generator(model.G, path, "onnx", "eval", 3, 3, model.size_multiple)
        for name, batch in (("batched (--max-batch 8, --max-wait-ms 10)", 8), ("unbatched (--max-batch 1)", 1)):
            proc, url = start_server(["--model", str(path), "--max-batch", str(batch), "--max-wait-ms", "10"], Path(tmp),
                                     threads=args.threads)
            try:
                r = load(url, buf.getvalue(), args.requests, args.clients)
            finally:
                stop_server(proc)
            b = r["batching"]
            print(f"| {name} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | {r['rps']:.2f} | {r['errors']} | "
                  f"{b['batches']} | {b['largest_batch']} |")


if __name__ == "__main__":
    main()
