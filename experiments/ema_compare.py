"""Does the EMA generator help at equal steps? G against G_ema of the same run, under the official test protocol.

    python experiments/ema_compare.py maps --steps 2000        # map -> aerial, the official maps recipe
    python experiments/ema_compare.py quickstart              # the built-in data, as `make train`

The EMA only follows G (training is unchanged by it), so one run with ``model.ema_decay`` gives both
generators from the same seed and the same training trajectory. The run trains through the CLI, then
``pix2pix-lit test`` scores each generator (``use_ema_for_eval`` true/false) in both inference modes
(``paper``: the official default, ``eval``: ``--eval``) on the val split (whole images at 256, the
official test preprocessing) and prints a Markdown table with the commands.

``--extra-decays 0.99,0.995`` screens other decays in the same run: a callback (``ExtraEMAs``) keeps one more
EMA per decay, built and updated exactly as ``model.ema_decay`` would (``pix2pix_lit.ema.make_ema`` after
every generator step), and each is scored in the ``paper`` mode from a copy of the checkpoint holding it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

REPO = Path(__file__).resolve().parents[1]
MAPS = REPO.parent / "shared" / "datasets" / "maps"


def cli(args: list[str]) -> None:
    from measure import pix2pix_lit  # here: the CLI imports this file as experiments.ema_compare (ExtraEMAs)

    pix2pix_lit(args, cwd=REPO)


class ExtraEMAs(pl.Callback):
    """More EMA generators than the model's one, for screening decays in one training run (saved at the end)."""

    def __init__(self, decays: list[float], out: str, warmup: bool = True) -> None:
        self.decays, self.out, self.warmup = decays, out, warmup

    def on_fit_start(self, trainer, pl_module) -> None:
        from pix2pix_lit.ema import make_ema

        self.emas = {d: make_ema(pl_module.G, d, self.warmup) for d in self.decays}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for ema in self.emas.values():  # after the model's own update_ema, from the same G
            ema.update_parameters(pl_module.G)

    def on_fit_end(self, trainer, pl_module) -> None:
        torch.save({d: ema.state_dict() for d, ema in self.emas.items()}, self.out)


def checkpoint_with_ema(ckpt: Path, ema_state: dict, out: Path) -> None:
    """A copy of ``ckpt`` whose ``G_ema`` holds ``ema_state`` (an ``AveragedModel`` state dict)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    for key, value in ema_state.items():
        assert f"G_ema.{key}" in state["state_dict"], key
        state["state_dict"][f"G_ema.{key}"] = value
    torch.save(state, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", choices=["maps", "quickstart"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-decays", default="", help="more EMA decays to screen in the same run, e.g. 0.99,0.995")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "ema_compare")
    args = p.parse_args()
    run = args.out / f"{args.recipe}-seed{args.seed}"
    if args.recipe == "maps":
        base = ["-c", "configs/maps.yaml", "--data.root", str(MAPS), "--data.test_split", "val"]
        fit = ["--trainer.max_steps", str(args.steps), "--trainer.limit_val_batches", "0",
               "--periodic_checkpoint.every_n_train_steps", str(args.steps)]
    else:
        base = ["-c", "configs/quickstart.yaml"]
        fit = []
    common = [*base, "--trainer.default_root_dir", str(run), "--trainer.logger", "false", "--trainer.enable_progress_bar",
              "false", "--seed_everything", str(args.seed)]
    extra = [float(d) for d in args.extra_decays.split(",") if d]
    extra_file = run / "extra_emas.pt"
    if extra:
        run.mkdir(parents=True, exist_ok=True)
        (run / "extra_emas.yaml").write_text(
            "trainer:\n  callbacks:\n    - class_path: experiments.ema_compare.ExtraEMAs\n"
            f"      init_args:\n        decays: {extra}\n        out: {extra_file}\n")
        fit += ["-c", str(run / "extra_emas.yaml")]
    t0 = time.time()
    cli(["fit", *common, *fit, "--model.ema_decay", str(args.ema_decay), "--model.fid", "false", "--model.kid", "false"])
    train_s = time.time() - t0
    ckpt = run / "checkpoints" / "last.ckpt"
    rows = []
    for use_ema in ("false", "true"):
        for mode in ("paper", "eval"):
            out = run / f"test-{'G_ema' if use_ema == 'true' else 'G'}-{mode}"
            cli(["test", *common, "--ckpt_path", str(ckpt), "--model.use_ema_for_eval", use_ema,
                 "--model.inference_mode", mode, "--test_report.output_dir", str(out)])
            report = json.loads((out / "metrics.json").read_text())
            name = report["protocol"]["generator"]
            rows.append((f"{name} ({args.ema_decay})" if use_ema == "true" else name, mode, report["num_images"],
                         report["metrics"]))
    for decay, ema_state in (torch.load(extra_file, weights_only=False) if extra else {}).items():
        screened = run / f"ema{decay}.ckpt"
        checkpoint_with_ema(ckpt, ema_state, screened)
        out = run / f"test-G_ema{decay}-paper"
        cli(["test", *common, "--ckpt_path", str(screened), "--model.use_ema_for_eval", "true",
             "--model.inference_mode", "paper", "--test_report.output_dir", str(out)])
        screened.unlink()
        report = json.loads((out / "metrics.json").read_text())
        rows.append((f"G_ema ({decay})", "paper", report["num_images"], report["metrics"]))
    from measure import cpu_model

    cpu = cpu_model()
    steps = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    command = f"python experiments/ema_compare.py {args.recipe}" + (f" --steps {args.steps}" if args.recipe == "maps" else "")
    screened = f" --extra-decays {args.extra_decays}" if extra else ""
    print(f"`{command} --ema-decay {args.ema_decay}{screened} --seed {args.seed}` ({cpu}; {steps} steps, training "
          f"{train_s / 60:.1f} min)\n")
    print("| generator | inference mode | images | FID | KID | SSIM | PSNR | L1 |")
    print("|---|---|---|---|---|---|---|---|")
    for gen, mode, n, m in rows:
        print(f"| {gen} | {mode} | {n} | {m.get('fid', float('nan')):.2f} | {m.get('kid_mean', float('nan')):.4f} | "
              f"{m['ssim']:.4f} | {m['psnr']:.2f} | {m['l1']:.4f} |")


if __name__ == "__main__":
    main()
