"""Training speed on one GPU in one run: the official pix2pix step against ours, every precision, compiled or not,
batch 1 and large batches, and SPADE's Cityscapes step — seconds per step, img/s, % of the chip's bf16 peak and
peak CUDA memory, written as an entry under experiments/log/.

    python experiments/gpu_bench.py                                  # on a GPU (budget: ~8 minutes)
    python experiments/gpu_bench.py --official PATH/TO/junyanz-checkout  # + the official code itself
    python experiments/gpu_bench.py --dry-run                        # every code path on the CPU, tiny, minutes

Rows:
- ``official-loop``: the official ``Pix2PixModel.optimize_parameters`` (unet_256 + basic D, GAN + 100·L1, torch's
  Adam, fp32; TF32 convolutions as cuDNN's default gives the official code) written as a plain loop with our
  networks, whose parameter counts and outputs equal the official ones (tests/nets).
- ``official-code`` (with ``--official``): the checkout's own ``create_model`` + ``optimize_parameters``.
- ``ours``: ``Pix2Pix`` under a Lightning Trainer as ``pix2pix-lit fit`` runs it, for each precision, batch size and
  ``model.compile``; ``spade``: our SPADE at Cityscapes' 512x256 (35 labels + edges, ngf/ndf 64), batch 1 and 16.
The data are random tensors already in memory (the loader is measured apart). Each row runs ``--warmup`` steps,
then ``--steps`` timed ones between two ``torch.cuda.synchronize()``; a row that fails (out of memory, a compile
error) prints its error and the run goes on; ``--budget`` seconds bound the whole run (rows left are skipped,
said so).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from measure import cpu_report, log_entry, plain_official_update


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(size: int, ngf: int) -> float:
    """FLOPs of one training step per image of the pix2pix step (G forward, D on 3 pairs, both backwards),
    counted by torch's FlopCounterMode at batch 1 on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    from pix2pix_lit.nets import define_D, define_G

    G, D = define_G(3, 3, ngf, "unet_256" if size >= 256 else "unet", num_downs=None if size >= 256 else 5), \
        define_D(6, ngf, "basic")
    a, b = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        fake = G(a)
        (D(torch.cat([a, fake.detach()], 1)).mean() + D(torch.cat([a, b], 1)).mean()).backward()
        (D(torch.cat([a, fake], 1)).mean() + F.l1_loss(fake, b)).backward()
    return float(counter.get_total_flops())


def time_steps(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def official_loop(device: torch.device, batch: int, size: int, ngf: int) -> Callable[[], None]:
    from pix2pix_lit.nets import define_D, define_G

    torch.manual_seed(0)
    G = define_G(3, 3, ngf, "unet_256" if size >= 256 else "unet", num_downs=None if size >= 256 else 5).to(device)
    D = define_D(6, ngf, "basic").to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    a, b = (torch.rand(batch, 3, size, size, device=device) * 2 - 1 for _ in range(2))

    def step() -> None:
        plain_official_update(G, D, opt_g, opt_d, a, b)

    return step


def official_code(checkout: Path, device: torch.device, batch: int, size: int, ngf: int, tmp: Path) -> Callable[[], None]:
    """The checkout's own model, built as its train.py builds it (its options parsed from a command line)."""
    sys.path.insert(0, str(checkout))
    try:
        from models import create_model
        from options.train_options import TrainOptions
    finally:
        sys.path.remove(str(checkout))
    argv = ["train.py", "--dataroot", str(tmp), "--model", "pix2pix", "--direction", "BtoA", "--name", "bench",
            "--checkpoints_dir", str(tmp), "--batch_size", str(batch), "--ngf", str(ngf), "--ndf", str(ngf),
            "--gpu_ids", "0" if device.type == "cuda" else "-1", "--load_size", str(size), "--crop_size", str(size)]
    if size < 256:  # a dry run's small images (the official unet_128 needs sides of 128 and more)
        argv += ["--netG", "unet_128"]
    saved = sys.argv
    sys.argv = argv
    try:
        opt = TrainOptions().parse()
    finally:
        sys.argv = saved
    model = create_model(opt)
    model.setup(opt)
    data = {"A": torch.rand(batch, 3, size, size) * 2 - 1, "B": torch.rand(batch, 3, size, size) * 2 - 1,
            "A_paths": ["a"] * batch, "B_paths": ["b"] * batch}

    def step() -> None:
        model.set_input(data)
        model.optimize_parameters()

    return step


def ours(device: torch.device, batch: int, size: int, ngf: int, precision: str, compile: bool, steps: int,
         warmup: int, model_kind: str = "pix2pix") -> float:
    """Seconds per step of our model under a Lightning Trainer (timed between two synchronisations)."""
    import lightning.pytorch as pl

    from pix2pix_lit.models import SPADE, Pix2Pix

    class Clock(pl.Callback):
        start = end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup:
                sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            sync(device)
            self.end = time.perf_counter()

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if model_kind == "spade":
        h, w = size // 2, size
        labels = torch.randint(0, 35, (batch, 1, h, w), generator=gen, dtype=torch.int64).to(torch.uint8)
        item = {"source": labels, "target": torch.rand(batch, 3, h, w, generator=gen) * 2 - 1,
                "edges": (torch.rand(batch, 1, h, w, generator=gen) > 0.9).to(torch.uint8), "name": ["x"] * batch}
        model = SPADE(ngf=ngf, ndf=ngf, label_nc=35, num_upsampling_layers="more" if size >= 512 else "normal",
                      norm_G="spectralspadebatch3x3", crop_size=size, aspect_ratio=2.0, fid=False, kid=False,
                      compile=compile)
    else:
        item = {"source": torch.rand(batch, 3, size, size, generator=gen) * 2 - 1,
                "target": torch.rand(batch, 3, size, size, generator=gen) * 2 - 1, "name": ["x"] * batch}
        netG = {"netG": "unet_256"} if size >= 256 else {"netG": "unet", "num_downs": 5}
        model = Pix2Pix(**netG, ngf=ngf, ndf=ngf, fid=False, kid=False, compile=compile)
    clock = Clock()
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision=precision, max_steps=warmup + steps,
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock])
    loader = torch.utils.data.DataLoader([item] * (warmup + steps), batch_size=None, pin_memory=device.type == "cuda")
    trainer.fit(model, train_dataloaders=loader)
    return (clock.end - clock.start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every code path on the CPU with tiny sizes")
    p.add_argument("--official", type=Path, help="a checkout of junyanz/pytorch-CycleGAN-and-pix2pix")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 100; dry run 2)")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing (default 20; dry run 1)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,16,64; dry run 1,2)")
    p.add_argument("--no-compile", action="store_true", help="leave out the model.compile rows")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the chip's dense bf16 peak (H200: ~790)")
    p.add_argument("--budget", type=float, default=460.0, help="seconds for the whole run; rows past it are skipped")
    p.add_argument("--no-record", action="store_true", help="do not write an entry under experiments/log/")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        p.error("no CUDA device here: run with --dry-run to rehearse on the CPU")
    device = torch.device("cpu" if dry else "cuda")
    steps = args.steps if args.steps is not None else (2 if dry else 100)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 20)
    try:
        batches = [int(b) for b in (args.batches or ("1,2" if dry else "1,16,64")).split(",")]
    except ValueError:
        p.error(f"--batches {args.batches}: give batch sizes separated by commas, e.g. 1,16,64")
    if steps < 1 or warmup < 0 or min(batches) < 1 or args.budget <= 0 or args.peak_tflops <= 0:
        p.error("--steps, every batch size, --budget and --peak-tflops must be positive, --warmup >= 0")
    if args.official is not None and not (args.official / "options" / "train_options.py").is_file():
        p.error(f"--official {args.official}: not a checkout of junyanz/pytorch-CycleGAN-and-pix2pix "
                "(no options/train_options.py)")
    size, ngf, spade_size, spade_ngf = (64, 8, 64, 4) if dry else (256, 64, 512, 64)
    precisions = ["32-true", "bf16-mixed"] if dry else ["32-true", "16-mixed", "bf16-mixed"]
    compiles = [False] if args.no_compile else [False, True]
    flops = flops_per_image(size, ngf)
    started = time.perf_counter()
    rows: list[dict] = []

    def row(name: str, batch: int, precision: str, compiled: bool, run: Callable[[], float]) -> None:
        if time.perf_counter() - started > args.budget:
            print(f"skipped (over --budget {args.budget:.0f} s): {name} batch {batch} {precision} compile={compiled}")
            return
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds = run()
        except Exception as e:  # noqa: BLE001 - one row's failure (OOM, compile) is reported, the run goes on
            print(f"FAILED {name} batch {batch} {precision} compile={compiled}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200] if str(e) else ''}")
            traceback.print_exc(limit=2)
            return
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        img_s = batch / seconds
        pct = 100 * flops * img_s / (args.peak_tflops * 1e12) if name != "spade" else float("nan")
        rows.append(dict(name=name, batch=batch, precision=precision, compiled=compiled, s=seconds, img_s=img_s,
                         pct=pct, peak=peak))
        print(f"{name:14s} batch {batch:3d} {precision:10s} compile={compiled!s:5s} {seconds:.4f} s/step "
              f"{img_s:8.1f} img/s  {pct:5.1f} % of peak  {peak:6.2f} GiB", flush=True)

    for batch in batches:
        row("official-loop", batch, "32-true", False,
            lambda: time_steps(official_loop(device, batch, size, ngf), device, steps, warmup))
        if args.official:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                row("official-code", batch, "32-true", False,
                    lambda: time_steps(official_code(args.official, device, batch, size, ngf, Path(tmp)), device, steps,
                                       warmup))
        for precision in precisions:
            for compiled in compiles:
                row("ours", batch, precision, compiled,
                    lambda: ours(device, batch, size, ngf, precision, compiled, steps, warmup))
    for batch in (1, 2) if dry else (1, 16):
        row("spade", batch, "bf16-mixed", False,
            lambda: ours(device, batch, spade_size, spade_ngf, "bf16-mixed", False, steps, warmup, "spade"))

    base = {r["batch"]: r["s"] for r in rows if r["name"] == "official-loop"}
    where = "CPU dry run (tiny sizes: not a measurement)" if dry else torch.cuda.get_device_name(device)
    lines = [f"## {datetime.datetime.now():%Y-%m-%d %H:%M} — `python experiments/gpu_bench.py "
             f"{' '.join(sys.argv[1:])}` ({where}; torch {torch.__version__}; issue 36)", "",
             f"{cpu_report()}; {flops / 1e9:.1f} GFLOP per image and step at {size}²; peak {args.peak_tflops:.0f} TFLOP/s",
             "", "| row | batch | precision | compile | s/step | img/s | vs official loop | % of bf16 peak | peak CUDA GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{base[r['batch']] / r['s']:.2f}×" if r["batch"] in base and r["name"] != "spade" else "—"
        lines.append(f"| {r['name']} | {r['batch']} | {r['precision']} | {r['compiled']} | {r['s']:.4f} | "
                     f"{r['img_s']:.1f} | {ratio} | {r['pct']:.1f} | {r['peak']:.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_record and not dry:
        print(f"written to {log_entry('`python experiments/gpu_bench.py ' + ' '.join(sys.argv[1:]) + '`', table)}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
