"""The framework's own cost per training step, on any machine: pix2pix with tiny networks (where the network work
is ~0, so what remains is everything *around* it: Lightning's loop, logging, optimizer toggling, finiteness
checks, the step count) against the same step as a plain PyTorch loop with the same networks, losses and Adam.

    python experiments/overhead.py                # 300 timed steps each after 50, fp32 on the CPU
    python experiments/overhead.py --steps 100 --warmup 20

Both read the same in-memory batches (no data loading). ``ours / plain`` is the number issue 36 moves: at the
paper's batch 1 a GPU step is bound by launches and host work like this.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
from measure import cpu_report, plain_official_update

TINY = dict(netG="unet", num_downs=5, ngf=2, ndf=2, n_layers_D=1, fid=False, kid=False, n_epochs=1000,
            n_epochs_decay=0)
SIZE = 32


def batches(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [{"source": torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1,
             "target": torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1, "name": [f"{i}"]} for i in range(n)]


def plain(data: list[dict], warmup: int) -> float:
    """The official optimize_parameters with our networks and Adam, as a bare loop: seconds per step."""
    from pix2pix_lit.models import Pix2Pix
    from pix2pix_lit.optim import Adam

    torch.manual_seed(0)
    model = Pix2Pix(**TINY)
    G, D = model.G, model.D
    opt_g, opt_d = Adam(G.parameters(), 2e-4, (0.5, 0.999)), Adam(D.parameters(), 2e-4, (0.5, 0.999))
    for i, batch in enumerate(data):
        if i == warmup:
            start = time.perf_counter()
        plain_official_update(G, D, opt_g, opt_d, batch["source"], batch["target"])
    return (time.perf_counter() - start) / (len(data) - warmup)


def ours(data: list[dict], warmup: int) -> float:
    """``Pix2Pix`` under a Lightning Trainer as the CLI runs it (logging every 50 steps): seconds per step."""
    import lightning.pytorch as pl

    from pix2pix_lit.models import Pix2Pix

    class Clock(pl.Callback):
        start = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup:
                self.start = time.perf_counter()

    torch.manual_seed(0)
    clock = Clock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=len(data), logger=pl.loggers.CSVLogger("/tmp/overhead"),
                         log_every_n_steps=50, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock])
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer.fit(Pix2Pix(**TINY), train_dataloaders=loader)
    return (time.perf_counter() - clock.start) / (len(data) - warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3, help="alternate the two this many times; the best of each")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        p.error("--steps, --warmup and --rounds must be >= 1")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    data = batches(args.steps + args.warmup)
    best = {"plain": float("inf"), "ours": float("inf")}
    for _ in range(args.rounds):
        best["plain"] = min(best["plain"], plain(data, args.warmup))
        best["ours"] = min(best["ours"], ours(data, args.warmup))
    print(cpu_report())
    print(f"plain loop: {1000 * best['plain']:.3f} ms/step   ours: {1000 * best['ours']:.3f} ms/step   "
          f"ours / plain: {best['ours'] / best['plain']:.2f}   (our overhead {1000 * (best['ours'] - best['plain']):.3f} "
          f"ms/step; tiny networks, {SIZE}x{SIZE}, batch 1, fp32, 1 thread, best of {args.rounds})")


if __name__ == "__main__":
    main()
