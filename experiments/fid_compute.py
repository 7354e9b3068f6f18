"""What the last step of an FID costs: torchmetrics' tr sqrt(S1 S2) (the general eigenproblem of the 2048 x 2048
product) against ``pix2pix_lit.metrics.frechet_distance`` (two symmetric ones), on features of a few set sizes,
with the exact value from the features themselves (the nuclear norm of A B^T) beside both. One compute thread
(what a test worker or a data-parallel process on a CPU core has); the two take turns, so a busy CPU slows each
alike.

    python experiments/fid_compute.py [--sizes 8,60,500,3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from measure import cpu_report, log_entry, table
from torchmetrics.image.fid import _compute_fid

from pix2pix_lit.metrics import frechet_distance


def stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return features.mean(0), torch.cov(features.T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,60,500,3000", help="images per set (both sets the same size)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        a = torch.randn(n, 2048, generator=g, dtype=torch.float64).abs()  # Inception pool features are >= 0
        b = torch.randn(n, 2048, generator=g, dtype=torch.float64).abs() * 1.1 + 0.05
        s = (*stats(a), *stats(b))
        ca, cb = (a - a.mean(0)) / (n - 1) ** 0.5, (b - b.mean(0)) / (n - 1) ** 0.5
        exact = float((s[0] - s[2]).square().sum() + s[1].trace() + s[3].trace()
                      - 2 * torch.linalg.svdvals(ca @ cb.T).sum())
        times = {"torchmetrics": [], "ours": []}
        for _ in range(args.rounds):
            for name, fn in (("torchmetrics", _compute_fid), ("ours", frechet_distance)):
                t0 = time.perf_counter()
                value = float(fn(*s))
                times[name].append(time.perf_counter() - t0)
                if name == "torchmetrics":
                    tm_value = value
                else:
                    ours_value = value
        tm, ours = min(times["torchmetrics"]), min(times["ours"])
        rows.append({"images": n, "torchmetrics s": f"{tm:.2f}", "ours s": f"{ours:.2f}", "ratio": f"{tm / ours:.2f}x",
                     "torchmetrics rel. err": f"{abs(tm_value / exact - 1):.1e}",
                     "ours rel. err": f"{abs(ours_value / exact - 1):.1e}"})
    cols = list(rows[0])
    text = (f"{cpu_report()}, 1 thread, best of {args.rounds}\n\n`python experiments/fid_compute.py --sizes "
            f"{args.sizes} --rounds {args.rounds}`\n\n{table(rows, cols)}")
    print(text)
    print("wrote", log_entry("experiments/fid_compute.py: the last step of an FID", text))


if __name__ == "__main__":
    main()
