"""How many 256x256 training pairs a second the data path delivers (issue 36: a GPU step at batch 16-64 must never
wait for the loader; the target is >= 2,500 img/s on 16 CPU cores): the maps training split read as ``fit`` reads
it (JPEG decode, resize to 286, random 256 crop and flip, tensors, batches), through the DataModule's own
DataLoader, for each number of worker processes.

    python experiments/data_path.py [--root ../shared/datasets/maps] [--batches 40] [--batch-size 16]
        [--workers 0,1,2] [--no-record]

Prints pairs/s per setting and per worker; with ``--workers`` up to the machine's cores it shows how the rate
scales. A rate measured on N cores is not one on 16: the entry says which was measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from measure import cpu_report, log_entry


def rate(root: str, workers: int, batches: int, batch_size: int) -> float:
    """Steady pairs/s of the training loader (its first batch, which starts the workers, not counted)."""
    from pix2pix_lit.data import PairedDataModule

    dm = PairedDataModule(root, direction="BtoA", batch_size=batch_size, num_workers=workers,
                          persistent_workers=False)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "maps"))
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    if args.batches < 1 or args.batch_size < 1:
        p.error("--batches and --batch-size must be >= 1")
    if not Path(args.root, "train").is_dir():
        sys.exit(f"{args.root} has no train/ folder: give --root the maps dataset (see ../shared/datasets/README.md)")
    lines = [f"CPU: {cpu_report()}; os.cpu_count() = {os.cpu_count()}", "",
             "| workers | pairs/s | per worker |", "|---|---|---|"]
    for w in (int(x) for x in args.workers.split(",")):
        r = rate(args.root, w, args.batches, args.batch_size)
        lines.append(f"| {w} | {r:.0f} | {r / max(w, 1):.0f} |")
        print(lines[-1], flush=True)
    report = "\n".join(lines)
    print(report)
    if not args.no_record:
        cmd = "python experiments/data_path.py " + " ".join(sys.argv[1:])
        print(f"written to {log_entry(f'`{cmd.strip()}`', report)}")


if __name__ == "__main__":
    main()
