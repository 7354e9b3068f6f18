"""Which maps recipe gives the best pictures for the same compute? Each recipe (an overlay of options on
``configs/maps.yaml``) trains for ``--steps`` steps on the first ``--train-pairs`` maps train pairs (map -> aerial,
batch 1, 256x256), then ``pix2pix-lit test`` scores the val split under the official test protocol (whole images
at 256) — FID, KID, SSIM, PSNR, L1 — with the seconds per training step measured in the same run (steps 50 to
the end, so start-up and warm-up are left out).

    python experiments/recipe_search.py --recipes official,ema,resnet_hinge --seed 0
    python experiments/recipe_search.py --list

Recipes with batch norm or dropout are scored in the official ``paper`` mode (``test.py`` without ``--eval``);
the others in ``eval`` (the two are the same for them). Each row prints as soon as its recipe is scored.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]
MAPS = REPO.parent / "shared" / "datasets" / "maps"

# name: (options over configs/maps.yaml, what it changes and why)
_RESNET_HINGE = ["--model.netG", "resnet_9blocks", "--model.norm", "instance", "--model.no_dropout", "true",
                 "--model.gan_mode", "hinge", "--model.lambda_L1", "10"]

_UNET_IN_MS_FM = ["--model.norm", "instance", "--model.no_dropout", "true", "--model.netD", "multiscale",
                  "--model.num_D", "2", "--model.gan_mode", "lsgan", "--model.lambda_feat", "10"]

# name: (options over configs/maps.yaml, what it changes and why). G's cost at 256x256 (torch's FlopCounterMode,
# forward): unet_256 ngf 64 12.1 GFLOP; resnet_9blocks ngf 64 99.1, ngf 32 25.4, ngf 24 ~14.3 (ngf squared)
RECIPES: dict[str, tuple[list[str], str]] = {
    "official": ([], "configs/maps.yaml: the official recipe (U-Net 256, batch norm, dropout, vanilla GAN, L1 x100)"),
    "ema": (["--model.ema_decay", "0.99"], "+ an EMA generator (what configs/maps_better.yaml was)"),
    "resnet_hinge": ([*_RESNET_HINGE, "--model.ngf", "24"],
                     "GAN Compression's pix2pix teacher (ResNet-9, instance norm, hinge, L1 x10) at ngf 24 "
                     "(G ~14 GFLOP, the U-Net's 12)"),
    "resnet32_hinge": ([*_RESNET_HINGE, "--model.ngf", "32"], "the same at ngf 32 (G 25 GFLOP: ~2x the U-Net's)"),
    "resnet_hinge_ema": ([*_RESNET_HINGE, "--model.ngf", "24", "--model.ema_decay", "0.99"], "resnet_hinge + EMA 0.99"),
    "resnet_hinge_sn_ttur": (
        [*_RESNET_HINGE, "--model.ngf", "24", "--model.spectral_norm_D", "true", "--model.lr", "0.0001",
         "--model.lr_D", "0.0004"],
        "resnet_hinge + spectral norm in D + two time-scale learning rates (G 1e-4, D 4e-4)"),
    "unet_in_ms_fm": (_UNET_IN_MS_FM, "pix2pixHD's losses on the U-Net: instance norm, 2-scale D, LSGAN, feature matching x10"),
    "unet_in_ms_fm_ema": ([*_UNET_IN_MS_FM, "--model.ema_decay", "0.99"], "unet_in_ms_fm + EMA 0.99"),
    "unet_in_ms_fm_ema_l1_30": ([*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "30"],
                                "unet_in_ms_fm_ema with L1 x30: less pull to the pixel average, more to D's textures"),
    "unet_in_ms_fm_ema_l1_30_lr4": (
        [*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "30", "--model.lr", "0.0004"],
        "unet_in_ms_fm_ema_l1_30 at twice the learning rate (G and D 4e-4): 2000 steps are the first 2% of the "
        "official schedule, where the step size rather than stability limits progress"),
    "unet_in_ms_fm_ema_l1_10": ([*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "10"],
                                "unet_in_ms_fm_ema with L1 x10 (GAN Compression's weight)"),
    "unet_in_ms_fm_ema_l1_10_da": (
        [*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "10", "--model.diff_augment",
         "color,translation,cutout"],
        "maps_best.yaml (L1 x10) + DiffAugment of D's pairs (color, translation, cutout; one draw per step for the "
        "real and fake pairs): the small-data GAN lever, 1,096 training pairs"),
    "unet_in_ms3_fm_ema_l1_10": (
        [*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "10", "--model.num_D", "3"],
        "maps_best.yaml with a third D scale (64x64 input): coarser structure judged by D, as pix2pixHD's "
        "three scales do at 2048x1024"),
    "unet_in_ms_fm_ema_l1_10_r1": (
        [*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "10", "--model.r1_gamma", "1",
         "--model.r1_every", "16"],
        "maps_best.yaml + a lazy R1 penalty on the real pairs' images (gamma 1, every 16 batches; StyleGAN2's at "
        "256x256): keeps D smooth around the 1,096 real maps instead of memorising them"),
    "resnet24_in_ms_fm_ema_l1_10": (
        [*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "10", "--model.netG", "resnet_9blocks",
         "--model.ngf", "24"],
        "maps_best.yaml's losses and D on GAN Compression's generator, ResNet-9 at ngf 24 (G ~14 GFLOP, the "
        "U-Net's 12: equal FLOPs)"),
    "unet_in_ms_fm_ema_l1_3": ([*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "3"],
                               "unet_in_ms_fm_ema with L1 x3: nearly pix2pixHD's losses (GAN + feature matching)"),
    "unet_in_ms_fm_ema_l1_10_sn_ttur": (
        [*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "10", "--model.spectral_norm_D", "true",
         "--model.lr_D", "0.0008"],
        "maps_best.yaml + spectral norm in D + two time-scale learning rates (G 2e-4, D 8e-4)"),
    "unet_in_ms_fm_ema_l1_30_sn_ttur": (
        [*_UNET_IN_MS_FM, "--model.ema_decay", "0.99", "--model.lambda_L1", "30", "--model.spectral_norm_D", "true",
         "--model.lr_D", "0.0008"],
        "unet_in_ms_fm_ema_l1_30 + spectral norm in D + two time-scale learning rates (G 2e-4, D 8e-4)"),
}


class StepTimer(pl.Callback):
    """Seconds per training step from step ``start`` to the end of fit, written to ``out`` (JSON)."""

    def __init__(self, out: str, start: int = 50) -> None:
        self.out, self.start = out, start
        self.t0 = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and self.t0 is None:
            self.t0 = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.t0 is not None:
            steps = trainer.global_step - self.start
            Path(self.out).write_text(json.dumps({"steps": steps, "s_per_step": (time.perf_counter() - self.t0) / steps}))


def torch_threads() -> int:
    """The threads each run's torch uses (OMP_NUM_THREADS if set, else torch's default: the cores)."""
    import torch

    return int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())


def cli(args: list[str]) -> None:
    from measure import pix2pix_lit  # here: the CLI imports this file as experiments.recipe_search (StepTimer)

    pix2pix_lit(args, cwd=REPO)


def scored_mode(options: list[str]) -> str:
    """``paper`` where the generator has batch norm or dropout (the official default), else ``eval``."""
    given = dict(zip(options[::2], options[1::2]))
    batch_norm = given.get("--model.norm", "batch") == "batch"
    dropout = given.get("--model.no_dropout", "false") == "false" and given.get("--model.netG", "unet_256").startswith("unet")
    return "paper" if batch_norm or dropout else "eval"


def run_recipe(name: str, args) -> dict:
    options, _ = RECIPES[name]
    run = args.out / f"{name}-seed{args.seed}"
    run.mkdir(parents=True, exist_ok=True)
    timer = run / "step_time.json"
    (run / "timer.yaml").write_text("trainer:\n  callbacks:\n    - class_path: experiments.recipe_search.StepTimer\n"
                                    f"      init_args:\n        out: {timer}\n        start: {min(50, args.steps // 2)}\n")
    common = ["-c", "configs/maps.yaml", "--data.root", str(args.data), "--data.test_split", "val",
              "--trainer.default_root_dir", str(run), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--seed_everything", str(args.seed), *options]
    if args.val_pairs:
        common += ["--trainer.limit_test_batches", str(args.val_pairs)]
    cli(["fit", *common, "-c", str(run / "timer.yaml"), "--trainer.max_steps", str(args.steps),
         "--data.max_dataset_size", str(args.train_pairs), "--trainer.limit_val_batches", "0",
         "--periodic_checkpoint.every_n_train_steps", str(args.steps), "--model.fid", "false", "--model.kid", "false"])
    mode = scored_mode(options)
    out = run / f"test-{mode}"
    cli(["test", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--model.inference_mode", mode,
         "--test_report.output_dir", str(out)])
    report = json.loads((out / "metrics.json").read_text())
    return {"recipe": name, "seed": args.seed, "mode": mode, "images": report["num_images"], **report["metrics"],
            **json.loads(timer.read_text())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="official,ema,resnet_hinge")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--train-pairs", type=int, default=1000)
    p.add_argument("--val-pairs", type=int, default=0, help="score only this many val pairs (0: all; for trials)")
    p.add_argument("--data", type=Path, default=MAPS)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "recipe_search")
    args = p.parse_args()
    if args.list:
        for name, (options, what) in RECIPES.items():
            print(f"{name}: {what}\n    {' '.join(options) or '(no change)'}")
        return
    from measure import cpu_model  # here: the CLI imports this file as experiments.recipe_search for StepTimer

    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    extra = f" --val-pairs {args.val_pairs}" if args.val_pairs else ""
    print(f"`python experiments/recipe_search.py --recipes {args.recipes} --seed {args.seed} --steps {args.steps} "
          f"--train-pairs {args.train_pairs}{extra}` ({cpu_model()}, {torch_threads()} thread(s))\n")
    print("| recipe | seed | scored mode | images | FID | KID | SSIM | PSNR | L1 | s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in names:
        r = run_recipe(name, args)
        print(f"| {name} | {r['seed']} | {r['mode']} | {r['images']} | {r.get('fid', float('nan')):.2f} | "
              f"{r.get('kid_mean', float('nan')):.4f} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['l1']:.4f} | "
              f"{r['s_per_step']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
