"""A SPADE training step here against the official NVlabs/SPADE code's, on this CPU in one run: the Cityscapes
configuration (35 label ids + instance edges, 512x256, ``num_upsampling_layers more``, ngf/ndf 64, hinge + feature
matching, no VGG: no ImageNet weights here), batch 1, fp32, the same random label map, instance map and photo.

    python experiments/spade_step.py --official /path/to/NVlabs-SPADE-checkout [--steps 3] [--width 512]

The official code is not part of this repository: bring a checkout (e.g. the search tool's ``fetch`` of
github:NVlabs/SPADE). It imports two things its repository lacks: the ``sync_batchnorm`` submodule (plain
BatchNorm has the same parameters on one process) and ``dill`` (only for its pickling helpers); this script puts
stand-ins for both in a temporary folder, never into the checkout. Ours runs through a Lightning Trainer, as
``pix2pix-lit fit`` does (manual optimization, G then D, the official order).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch
from measure import cpu_report

LABEL_NC = 35


def batch(width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = width // 2
    blocks = torch.randint(0, LABEL_NC, (1, 1, h // 16, width // 16), generator=g)
    labels = blocks.repeat_interleave(16, 2).repeat_interleave(16, 3)
    instances = labels * 1000 + (torch.arange(width)[None, None, None, :] // 64)
    return {"label": labels, "instance": instances, "image": torch.rand(1, 3, h, width, generator=g) * 2 - 1}


def official_steps(checkout: Path, width: int, steps: int, warmup: int) -> float:
    """Seconds per step of the official ``Pix2PixTrainer`` (run_generator_one_step, run_discriminator_one_step)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from official_code import spade_copy

    work = spade_copy(checkout, ("models", "util", "trainers", "data", "options"))
    try:
        from trainers.pix2pix_trainer import Pix2PixTrainer

        opt = Namespace(
            isTrain=True, gpu_ids=[], netG="spade", netD="multiscale", netE="conv", netD_subarch="n_layer",
            ngf=64, ndf=64, norm_G="spectralspadesyncbatch3x3", norm_D="spectralinstance", norm_E="spectralinstance",
            num_upsampling_layers="more", crop_size=width, aspect_ratio=2.0, label_nc=LABEL_NC,
            contain_dontcare_label=False, no_instance=False, semantic_nc=LABEL_NC + 1, output_nc=3, n_layers_D=4,
            num_D=2, use_vae=False, z_dim=256, gan_mode="hinge", lambda_feat=10.0, no_ganFeat_loss=False,
            no_vgg_loss=True, lambda_vgg=10.0, lambda_kld=0.05, no_TTUR=False, lr=0.0002, beta1=0.0, beta2=0.9,
            init_type="xavier", init_variance=0.02, continue_train=False, which_epoch="latest",
            checkpoints_dir=str(work), name="bench",
        )
        torch.manual_seed(0)
        trainer = Pix2PixTrainer(opt)
        data = batch(width)
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            trainer.run_generator_one_step(data)
            trainer.run_discriminator_one_step(data)
            times.append(time.perf_counter() - start)
        return sum(times[warmup:]) / steps
    finally:
        sys.path.remove(str(work)) if str(work) in sys.path else None
        shutil.rmtree(work, ignore_errors=True)


def our_steps(width: int, steps: int, warmup: int) -> float:
    """Seconds per step of ``SPADE.training_step`` through a Lightning Trainer (fp32)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from pix2pix_lit.models import SPADE

    torch.manual_seed(0)
    model = SPADE(ngf=64, ndf=64, num_upsampling_layers="more", label_nc=LABEL_NC, no_instance=False, fid=False,
                  kid=False, no_vgg_loss=True)
    data = batch(width)
    from pix2pix_lit.data.labels import instance_edges

    item = {"source": data["label"][0].to(torch.uint8), "edges": instance_edges(data["instance"][0]),
            "target": data["image"][0], "name": "x"}
    loader = DataLoader([item] * (warmup + steps), batch_size=1)
    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            times.append(time.perf_counter() - self.start)

    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=warmup + steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[Timer()])
    trainer.fit(model, loader)
    return sum(times[warmup:]) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, required=True, help="a checkout of github.com/NVlabs/SPADE")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--width", type=int, default=512, help="the crop size (height = width / 2)")
    args = p.parse_args()
    if not (args.official / "models" / "pix2pix_model.py").is_file():
        sys.exit(f"{args.official} is not a checkout of NVlabs/SPADE (no models/pix2pix_model.py)")
    print(cpu_report())
    ours = our_steps(args.width, args.steps, args.warmup)
    official = official_steps(args.official, args.width, args.steps, args.warmup)
    print(f"SPADE Cityscapes step ({args.width}x{args.width // 2}, batch 1, fp32, {args.steps} timed after "
          f"{args.warmup}): ours {ours:.2f} s, official {official:.2f} s, official/ours {official / ours:.2f}x")


if __name__ == "__main__":
    main()
