"""Where a maps validation's time goes: the generator and the FID Inception alone (layouts, batch sizes),
data decoding, SSIM/PSNR/L1, and a torch.profiler table of 60 cached validation batches.

    python experiments/val_profile.py            # needs ../shared/datasets/maps

Numbers are printed, not recorded: experiments/RESULTS.md quotes them with this command and the CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from pix2pix_lit import PairedDataModule, Pix2Pix
from pix2pix_lit.metrics import ImageQualityMetrics, load_inception
from pix2pix_lit.nets.norm import batch_norm_per_image

MAPS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "maps"


def rate(fn, images_per_call: int, n: int = 60) -> float:
    for _ in range(2):
        fn()
    t, done = time.perf_counter(), 0
    while done < n:
        fn()
        done += images_per_call
    return done / (time.perf_counter() - t)


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    G = Pix2Pix(fid=False, kid=False).G.train()
    x = torch.randn(1, 3, 256, 256)
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format
        g, xi = G.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        with torch.no_grad(), batch_norm_per_image(g), torch.autocast("cpu", dtype=torch.bfloat16):
            print(f"generator unet_256, bf16, paper mode, batch 1, channels_last={cl}: "
                  f"{rate(lambda: g(xi), 1):.2f} img/s")
    net = load_inception()
    for bs, cl in ((1, False), (8, False), (1, True), (8, True)):
        fmt = torch.channels_last if cl else torch.contiguous_format
        u8 = torch.randint(0, 255, (bs, 3, 256, 256), dtype=torch.uint8).contiguous(memory_format=fmt)
        n = net.to(memory_format=fmt)
        with torch.no_grad():
            print(f"FID Inception fp32, batch {bs}, channels_last={cl}: {rate(lambda: n(u8), bs):.2f} img/s")

    dm = PairedDataModule(str(MAPS), direction="BtoA", batch_size=1, num_workers=0)
    dm.setup("validate")
    t = time.perf_counter()
    batches = list(dm.val_dataloader())
    print(f"decode + resize of {len(batches)} val pairs, one process: {time.perf_counter() - t:.1f} s")
    m = ImageQualityMetrics(fid=False, kid=False)
    t = time.perf_counter()
    for b in batches:
        m.update(b["source"], b["target"])
    print(f"SSIM/PSNR/L1 updates over {len(batches)} pairs: {time.perf_counter() - t:.1f} s")

    dm = PairedDataModule(str(MAPS), direction="BtoA", batch_size=1, num_workers=2)
    model = Pix2Pix(kid_subset_size=1000)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=60)
    trainer.validate(model, dm, verbose=False)  # real features cached, kernels warm
    from torch.profiler import ProfilerActivity, profile

    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.validate(model, dm, verbose=False)
    print(f"60 cached validation batches under the profiler: {time.perf_counter() - t:.1f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
