"""Does a trained pix2pix D overfit its training pairs? ADA's overfitting heuristic on a checkpoint (issue 40).

ADA (Karras et al. 2020) raises the augmentation probability p while r_t = E[sign(D(real train) - m)] stays above
0.6 and lowers it below; m is the midpoint between D's real and fake targets (0 for logits, 0.5 for LSGAN). The
paper's picture of overfitting is D's outputs on training reals drifting away from those on held-out reals towards
"real" while fakes and held-out reals move together. This script prints, for a trained checkpoint, r_t and D's mean
output on training reals, held-out (val) reals and fakes, so whether ADA would switch augmentation on at that
point of training can be read before screening it.

    python experiments/d_overfit.py --ckpt runs/recipe_search/<recipe>-seed1/checkpoints/last.ckpt [--pairs 300]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))

from measure import cpu_model, log_entry  # noqa: E402

from pix2pix_lit.data.paired import PairedDataModule  # noqa: E402
from pix2pix_lit.models.pix2pix import Pix2Pix  # noqa: E402

MAPS = REPO.parent / "shared" / "datasets" / "maps"


@torch.no_grad()
def judge(model: Pix2Pix, dataset, count: int, fake: bool) -> tuple[float, float]:
    """(r_t, mean output) of D over ``count`` pairs of ``dataset``, every scale's map averaged per image; the
    pair's image is the target or, with ``fake``, the inference generator's translation."""
    middle = 0.5 if model.hparams.gan_mode == "lsgan" else 0.0
    signs, outputs = [], []
    for i in range(min(count, len(dataset))):
        item = dataset[i]
        batch = {k: v[None] for k, v in item.items() if torch.is_tensor(v)}
        source = model.network_input(batch)
        image = model.generate(source) if fake else batch["target"]
        maps = model.D(model.pair(source, image))
        maps = maps if isinstance(maps, list) else [maps]
        signs.append(torch.stack([torch.sign(m.float() - middle).mean() for m in maps]).mean())
        outputs.append(torch.stack([m.float().mean() for m in maps]).mean())
    return float(torch.stack(signs).mean()), float(torch.stack(outputs).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--data", type=Path, default=MAPS)
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--log", action="store_true", help="also write the table as an entry under experiments/log/")
    args = p.parse_args()
    torch.manual_seed(0)
    model = Pix2Pix.load_from_checkpoint(str(args.ckpt), map_location="cpu", fid=False, kid=False)
    model.eval()
    dm = PairedDataModule(str(args.data), direction="BtoA", load_size=286, crop_size=256, batch_size=1,
                          num_workers=0, test_split="val")
    dm.setup("fit")
    rows = []
    for name, dataset, fake in (("training reals (jittered as in training)", dm.train_dataset, False),
                                ("held-out reals (val)", dm.val_dataset, False),
                                ("fakes of val sources (inference G)", dm.val_dataset, True)):
        r_t, mean = judge(model, dataset, args.pairs, fake)
        rows.append(f"| {name} | {r_t:.3f} | {mean:.3f} |")
        print(rows[-1], flush=True)
    ckpt = args.ckpt.relative_to(REPO) if args.ckpt.is_relative_to(REPO) else args.ckpt
    step = model.loaded_from.get("global_step")
    text = (f"`python experiments/d_overfit.py --ckpt {ckpt} --pairs {args.pairs}` ({cpu_model()}; gan_mode "
            f"{model.hparams.gan_mode}, step {step})\n\n| pairs D judges | r_t = E[sign(D − m)] | mean D output |\n"
            "|---|---|---|\n" + "\n".join(rows) + "\n")
    print(text)
    if args.log:
        print(log_entry("experiments/d_overfit.py: ADA's overfitting heuristic on a maps checkpoint", text))


if __name__ == "__main__":
    main()
