"""CUT and FastCUT here against the official taesungp/contrastive-unpaired-translation code, on this CPU: parameter
counts, state-dict names, outputs of G, D and F on the same weights, and N training steps (the official
``data_dependent_initialize`` then ``optimize_parameters``; ours through a Lightning Trainer) from the same weights,
batch and patch locations: every loss and every weight after the steps.

    python experiments/cut_check.py --official /path/to/contrastive-unpaired-translation [--steps 2] [--size 64]
        [--fixture tests/fixtures/official/cut_steps.pt]

On torch 2.14 on the CPU, ``nn.InstanceNorm2d``'s backward at batch 1 is wrong when the gradient reaching it is
laid out channels-last, which is what ``PatchSampleF``'s ``permute(0, 2, 3, 1)`` sends back to the residual blocks'
last norms: the official code's G gradient then differs from the derivative of its loss (``gradient_check``) and
from ours (our ``InstanceNorm2d`` runs one image as batch norm, whose backward is right; tested by gradcheck).
``--norm-fix`` builds the official networks with ours to show that this is the whole difference.

The official code is not part of this repository: bring a checkout (its ``.py`` files are enough). Its patch
locations come from ``np.random.permutation``, ours from ``torch.randperm``: both are fed the same pre-drawn
permutations here. ``--fixture`` (with ``--norm-fix``) writes small networks' weights, the batch, the permutations and the official
losses of every step for the tests (``tests/models/test_cut.py``), which need no checkout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

from pix2pix_lit.precision import cpu_kernels

MODES = {  # the official CUT_mode defaults
    "CUT": dict(nce_idt=True, lambda_NCE=1.0, flip_equivariance=False),
    "FastCUT": dict(nce_idt=False, lambda_NCE=10.0, flip_equivariance=True),
}


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class Permutations:
    """Pre-drawn permutations handed out in order to both codes (rewound for each)."""

    def __init__(self, sizes: list[int], rounds: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.perms = [torch.randperm(n, generator=g) for _ in range(rounds) for n in sizes]
        self.i = 0

    def next(self, n: int) -> torch.Tensor:
        p = self.perms[self.i]
        assert p.numel() == n, (p.numel(), n)
        self.i += 1
        return p


def official_model(checkout: Path, mode: str, small: dict):
    sys.path.insert(0, str(checkout))
    from models.cut_model import CUTModel

    opt = Namespace(gpu_ids=[], isTrain=True, checkpoints_dir=tempfile.mkdtemp(), name="x", preprocess="resize_and_crop",
                    model="cut", input_nc=3, output_nc=3, ngf=small["ngf"], ndf=small["ndf"], netD="basic",
                    netG="resnet_9blocks", n_layers_D=3, normG="instance", normD="instance", init_type="xavier",
                    init_gain=0.02, no_dropout=True, no_antialias=False, no_antialias_up=False, direction="AtoB",
                    batch_size=1, lambda_GAN=1.0, nce_layers="0,4,8,12,16", nce_includes_all_negatives_from_minibatch=False,
                    netF="mlp_sample", netF_nc=small["netF_nc"], nce_T=0.07, num_patches=small["num_patches"],
                    gan_mode="lsgan", lr=0.0002, beta1=0.5, beta2=0.999, CUT_mode=mode, **MODES[mode])
    return CUTModel(opt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fixture", type=Path)
    parser.add_argument("--norm-fix", action="store_true",
                        help="build the official networks with our InstanceNorm2d (see the module docstring)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.official))
    from models import networks as official

    if args.norm_fix:  # the official instance norm with a correct backward at batch 1 (ours), for this process only
        from pix2pix_lit.nets.norm import InstanceNorm2d

        torch.nn.InstanceNorm2d = InstanceNorm2d  # what the official get_norm_layer and its use_bias test read

    from pix2pix_lit.models.cut import CUT

    # 1. the networks at the official sizes: counts, names, outputs on the same weights
    torch.manual_seed(0)
    ours = CUT(fid=False, kid=False)
    g = official.define_G(3, 3, 64, "resnet_9blocks", "instance", False, "xavier", 0.02, False, False, [])
    d = official.define_D(3, 64, "basic", 3, "instance", "xavier", 0.02, False, [])
    f = official.define_F(3, "mlp_sample", "instance", False, "xavier", 0.02, False, [], Namespace(netF_nc=256))
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    with torch.no_grad():
        f(g(x, [0, 4, 8, 12, 16], encode_only=True), 256)  # the official F builds its heads at the first batch
    print("| network | official parameters | ours | names and shapes equal | max abs output difference |")
    print("|---|---|---|---|---|")
    for name, theirs, mine in (("G resnet_9blocks (anti-aliased)", g, ours.G), ("D basic (anti-aliased)", d, ours.D),
                               ("F mlp_sample (256)", f, ours.F)):
        a, b = theirs.state_dict(), mine.state_dict()
        same = list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
        mine.load_state_dict(a)
        with torch.no_grad():
            if name.startswith("F"):
                feats = ours.G.encode(x, [0, 4, 8, 12, 16])
                ids = [torch.randperm(t.shape[2] * t.shape[3])[:256] for t in feats]
                diff = max((p - q).abs().max().item() for p, q in zip(theirs(feats, 256, ids)[0], mine(feats, 256, ids)[0]))
            else:
                diff = (theirs(x) - mine(x)).abs().max().item()
        print(f"| {name} | {count(theirs):,} | {count(mine):,} | {same} | {diff:.3g} |")

    # 2. training steps of small networks from the same start
    small = dict(ngf=8, ndf=8, netF_nc=32, num_patches=16)
    # the CPU kernels the numbers came from (tests/conftest.py, same_kernels)
    record = {"small": small, "steps": args.steps, "modes": {}, "kernels": cpu_kernels()}
    for mode in MODES:
        torch.manual_seed(1)
        batch = {"A": torch.rand(1, 3, args.size, args.size) * 2 - 1, "B": torch.rand(1, 3, args.size, args.size) * 2 - 1}
        mine = CUT(ngf=small["ngf"], ndf=small["ndf"], netF_nc=small["netF_nc"], num_patches=small["num_patches"],
                   fid=False, kid=False, **MODES[mode])
        start = {k: v.clone() for k, v in mine.state_dict().items()}
        with torch.no_grad():
            sizes = [t.shape[2] * t.shape[3] for t in mine.G.encode(batch["A"], mine.hparams.nce_layers)]
        per_step = len(sizes) * (2 if MODES[mode]["nce_idt"] else 1)
        perms = Permutations(sizes, per_step * (args.steps + 1))

        # the official: F's heads made by data_dependent_initialize, then our weights in every network
        model = official_model(args.official, mode, small)
        official.np.random.permutation = lambda n: perms.next(n).numpy()
        official_np_random = np.random.random
        np.random.random = lambda: 0.0  # FastCUT's coin: always flipped, on both sides
        try:
            model.data_dependent_initialize({**batch, "A_paths": ["a"], "B_paths": ["b"]})
            for net in ("G", "D", "F"):
                getattr(model, f"net{net}").load_state_dict({k[2:]: v for k, v in start.items() if k.startswith(f"{net}.")})
            perms.i = 0
            losses = []
            for _ in range(args.steps):
                model.set_input({**batch, "A_paths": ["a"], "B_paths": ["b"]})
                model.optimize_parameters()
                losses.append({"loss_D_real": model.loss_D_real.item(), "loss_D_fake": model.loss_D_fake.item(),
                               "loss_G_GAN": float(model.loss_G_GAN), "loss_NCE": float(model.loss_NCE),
                               **({"loss_NCE_Y": float(model.loss_NCE_Y)} if MODES[mode]["nce_idt"] else {})})
        finally:
            np.random.random = official_np_random
        theirs_after = {f"{n}.{k}": v.clone() for n in ("G", "D", "F")
                        for k, v in getattr(model, f"net{n}").state_dict().items()}
        if mode == "CUT":
            gradient_check(model, mine, start, batch, perms)

        # ours: the same permutations, the same coin
        perms.i = 0
        seen = replay(mine, batch, args.steps, perms)
        print(f"\n### {mode}: {args.steps} steps ({args.size}x{args.size}, ngf {small['ngf']}, {small['num_patches']} patches)")
        print("| step | loss | official | ours | abs diff |\n|---|---|---|---|---|")
        for i, (a, b) in enumerate(zip(losses, seen)):
            for k in a:
                print(f"| {i + 1} | {k} | {a[k]:.6f} | {b[k]:.6f} | {abs(a[k] - b[k]):.2g} |")
        for net in ("D", "G", "F"):
            diff = max((theirs_after[k] - v).abs().max().item() for k, v in mine.state_dict().items()
                       if k.startswith(f"{net}.") and k in theirs_after)
            print(f"{net}: max |weight difference| after {args.steps} steps {diff:.2g}")
        # for the tests: every step with --norm-fix, else the first (the official G's later gradients are off)
        kept = args.steps if args.norm_fix else 1
        if "start" not in record:  # the same weights for both modes (built from the same seed): stored once
            record["start"] = start
        assert all(torch.equal(record["start"][k], v) for k, v in start.items())
        record["modes"][mode] = {"batch": batch, "losses": losses[:kept],
                                 "perms": [p[: small["num_patches"]].clone() for p in perms.perms[:per_step * kept]]}
    if args.fixture:
        args.fixture.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, args.fixture)
        print(f"wrote {args.fixture} ({args.fixture.stat().st_size // 1024} KB)")


def gradient_check(model, mine, start: dict, batch: dict, perms: Permutations, eps: float = 1e-3) -> None:
    """Both codes' PatchNCE loss of G's output against its source, as a function of that output (a leaf here), at
    the starting weights: each code's autograd gradient against central finite differences of the loss (which the
    two codes compute alike) along that gradient's direction."""
    for net in ("G", "F"):
        getattr(model, f"net{net}").load_state_dict({k[2:]: v for k, v in start.items() if k.startswith(f"{net}.")})
    probe = mine.__class__(**{k: v for k, v in mine.hparams.items() if k in ("ngf", "ndf", "netF_nc", "num_patches",
                                                                            "nce_idt", "lambda_NCE", "flip_equivariance",
                                                                            "fid", "kid")})
    probe.load_state_dict(start)
    real_A = batch["A"]
    with torch.no_grad():
        fake_B = probe.G(real_A)

    def official_loss(x):
        perms.i = 0
        return model.calculate_NCE_loss(real_A, x)

    def our_loss(x):
        perms.i = 0
        return probe.patch_nce(real_A, x)

    forward = probe.F.forward
    probe.F.forward = lambda feats, n, ids=None: forward(feats, n, ids if ids is not None else
                                                        [perms.next(f.shape[2] * f.shape[3])[:n] for f in feats])
    print("\nPatchNCE(G(a), a) as a function of G(a): directional derivative along each code's gradient")
    print("| gradient of | autograd | central differences of the official loss | of ours |\n|---|---|---|---|")
    for name, fn in (("official", official_loss), ("ours", our_loss)):
        leaf = fake_B.clone().requires_grad_(True)
        g = torch.autograd.grad(fn(leaf), leaf)[0]
        d = g / g.norm()
        with torch.no_grad():
            fd = [(float(f(fake_B + eps * d)) - float(f(fake_B - eps * d))) / (2 * eps) for f in (official_loss, our_loss)]
        print(f"| {name} | {float((g * d).sum()):.4f} | {fd[0]:.4f} | {fd[1]:.4f} |")


def replay(model, batch: dict, steps: int, perms: Permutations) -> list[dict]:
    """``steps`` training steps of our ``model`` on ``batch`` through a Lightning Trainer, its patch locations from
    ``perms`` and FastCUT's coin always flipped (as the official side got); the losses of each step."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    forward = model.F.forward
    model.F.forward = lambda feats, n, ids=None: forward(feats, n, ids if ids is not None else
                                                        [perms.next(f.shape[2] * f.shape[3])[:n] for f in feats])
    model.flip_this_batch = lambda: True
    seen: list[dict] = []
    d_loss, g_loss = model.discriminator_loss, model.generator_loss

    def record_d(*a):
        loss, logs = d_loss(*a)
        seen.append({k: float(v) for k, v in logs.items() if k != "loss_D"})
        return loss, logs

    def record_g(*a):
        loss, logs = g_loss(*a)
        seen[-1].update({k: float(v) for k, v in logs.items() if k != "loss_G"})
        return loss, logs

    model.discriminator_loss, model.generator_loss = record_d, record_g
    item = {"A": batch["A"][0], "B": batch["B"][0], "name": "x"}
    pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(
        model, DataLoader([item] * steps, batch_size=1))
    return seen


if __name__ == "__main__":
    main()
