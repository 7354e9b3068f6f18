"""pix2pixHD's generators here against the official NVIDIA/pix2pixHD code: parameter counts on Cityscapes' 36 input
channels (35 label ids + instance edges), layer names, and the outputs of the same weights on one random input; with
``--steps N``, N training steps of stage 1 (global G, 2-scale D) and of stage 2 (local enhancer whose global part and
D's coarser scales start from stage 1, global part fixed) against the official ``train.py`` step from the same
weights and batch: every loss and every parameter after the steps.

    python experiments/pix2pixhd_check.py --official /path/to/NVIDIA-pix2pixHD-checkout [--steps 3]
        [--fixture tests/fixtures/official/pix2pixhd_steps.pt]

``--fixture`` writes the small networks' initial weights, the batch and the official code's losses and final weights
to a file the tests read (``tests/models/test_pix2pixhd.py``), so they need no checkout.

The official code is not part of this repository: bring a checkout (e.g. the search tool's ``fetch`` of
github:NVIDIA/pix2pixHD); only its ``models/networks.py`` is imported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import torch

from pix2pix_lit.nets import define_D, define_G
from pix2pix_lit.precision import cpu_kernels

# small networks (the recipe's structure; sizes a CPU steps in seconds): n_layers_D 2 so that pix2pixHD's feature-
# matching layer weight 4/(n_layers_D+1) is not 1; the stage-2 G has ngf 4 around the stage-1 G's 8
STAGES = {
    1: dict(netG="global", ngf=8, num_D=2, width=64),
    2: dict(netG="local", ngf=4, num_D=3, width=128, niter_fix_global=10),
}
SMALL = dict(n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1, ndf=4, n_layers_D=2)


def our_model(stage: int, init_global_from: str | None = None):
    """Our Pix2Pix with a shipped pix2pixHD config's recipe options, at the small sizes."""
    from pix2pix_lit.models import Pix2Pix

    s = STAGES[stage]
    return Pix2Pix(input_nc=3, output_nc=3, netG=s["netG"], ngf=s["ngf"], norm="instance", no_dropout=True,
                   netD="multiscale", num_D=s["num_D"], gan_mode="lsgan", gan_scales="sum", padding_D=2,
                   step_order="pix2pixhd", init_type="pix2pixhd", lambda_feat=10.0, lambda_L1=0.0, fid=False, kid=False,
                   init_global_from=init_global_from, niter_fix_global=s.get("niter_fix_global", 0),
                   lr_policy="linear_nvidia", **SMALL)


def official_d_names(ours: dict[str, torch.Tensor], num_D: int) -> dict[str, torch.Tensor]:
    """Our multiscale D's state dict in the official names: our scale i (input downsampled i times) is the
    official ``scale{num_D-1-i}``; its k-th convolution is ``layer{k}.0``."""
    out = {}
    for i in range(num_D):
        convs = sorted({int(k.split(".")[3]) for k in ours if k.startswith(f"discriminators.{i}.")})
        for j, idx in enumerate(convs):
            for p in ("weight", "bias"):
                out[f"scale{num_D - 1 - i}_layer{j}.0.{p}"] = ours[f"discriminators.{i}.model.{idx}.{p}"]
    return out


def run_official(checkout: Path, stage: int, G: dict, D: dict, batch: tuple, steps: int, pretrain: str = "") -> dict:
    """``steps`` iterations of the official train.py loop body on the CPU (its ``.cuda()`` calls made no-ops)."""
    sys.path.insert(0, str(checkout))
    from models.pix2pixHD_model import Pix2PixHDModel

    s = STAGES[stage]
    opt = Namespace(isTrain=True, gpu_ids=[], checkpoints_dir=tempfile.mkdtemp(), name="x", resize_or_crop="none",
                    instance_feat=False, label_feat=False, load_features=False, label_nc=0, input_nc=3, output_nc=3,
                    no_instance=True, feat_num=3, netG=s["netG"], ngf=s["ngf"], norm="instance", no_lsgan=False,
                    num_D=s["num_D"], no_ganFeat_loss=False, no_vgg_loss=True, lambda_feat=10.0, pool_size=0,
                    lr=0.0002, beta1=0.5, niter_fix_global=s.get("niter_fix_global", 0), continue_train=False,
                    load_pretrain=pretrain, which_epoch="latest", verbose=False, data_type=32, fp16=False, **SMALL)
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official encode_input moves everything to the GPU
    try:
        model = Pix2PixHDModel()
        model.initialize(opt)
        loaded = {"G": {k: v.clone() for k, v in model.netG.state_dict().items()},
                  "D": {k: v.clone() for k, v in model.netD.state_dict().items()}}
        model.netG.load_state_dict(G)
        model.netD.load_state_dict(official_d_names(D, s["num_D"]))
        label, image = batch
        losses = []
        for _ in range(steps):
            out, _ = model(label, torch.zeros_like(label[:, :1]), image, torch.zeros(1), infer=False)
            d = dict(zip(model.loss_names, out))
            loss_D = (d["D_fake"] + d["D_real"]) * 0.5
            loss_G = d["G_GAN"] + d["G_GAN_Feat"]
            model.optimizer_G.zero_grad()
            loss_G.backward()
            model.optimizer_G.step()
            model.optimizer_D.zero_grad()
            loss_D.backward()
            model.optimizer_D.step()
            losses.append({"loss_G_GAN": d["G_GAN"].item(), "loss_G_feat": float(d["G_GAN_Feat"]),
                           "loss_D_real": d["D_real"].item(), "loss_D_fake": d["D_fake"].item()})
        return {"losses": losses, "G": model.netG.state_dict(), "D": model.netD.state_dict(), "loaded": loaded}
    finally:
        torch.Tensor.cuda = cuda
        sys.path.remove(str(checkout))
        for name in [m for m in sys.modules if m == "models" or m.startswith(("models.", "util"))]:
            del sys.modules[name]


def cancelled_biases(state: dict, net: str, model) -> set[str]:
    """The biases of the convolutions an affine-free instance norm follows (their gradient is exactly 0 in exact
    arithmetic), in the official names."""
    module = model.G if net == "G" else model.D
    layers = dict(module.named_modules())
    found = set()
    for name, m in layers.items():
        if isinstance(m, torch.nn.Sequential):
            kids = list(m.named_children())
            for (a, conv), (_, norm) in zip(kids, kids[1:]):
                is_conv = isinstance(conv, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
                if is_conv and isinstance(norm, torch.nn.InstanceNorm2d) and conv.bias is not None:
                    found.add(f"{name}.{a}.bias")
    if net == "D":  # into the official names, as official_d_names does
        mapped = official_d_names({k: torch.zeros(1) for k in module.state_dict()}, len(module.discriminators))
        ours_of = {}
        for i, d in enumerate(module.discriminators):
            convs = [n for n, m in d.model.named_children() if isinstance(m, torch.nn.Conv2d)]
            for j, n in enumerate(convs):
                ours_of[f"discriminators.{i}.model.{n}.bias"] = f"scale{len(module.discriminators) - 1 - i}_layer{j}.0.bias"
        return {ours_of[k] for k in found if k in ours_of and ours_of[k] in mapped}
    return found


def run_ours(model, batch: tuple, steps: int) -> list[dict]:
    """``steps`` training steps of ``model`` through a Lightning Trainer on ``batch``; the losses of each."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    label, image = batch
    item = {"source": label[0], "target": image[0], "name": "x"}
    losses: list[dict] = []
    g_loss, d_loss = model.generator_loss, model.discriminator_loss

    def record(fn, *args):
        loss, logs = fn(*args)
        if fn is g_loss:
            losses.append({})
        losses[-1].update({k: float(v) for k, v in logs.items() if k in ("loss_G_GAN", "loss_G_feat", "loss_D_real",
                                                                         "loss_D_fake")})
        return loss, logs

    model.generator_loss = lambda *a: record(g_loss, *a)
    model.discriminator_loss = lambda *a: record(d_loss, *a)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    trainer.fit(model, DataLoader([item] * steps, batch_size=1))
    return losses


def compare_steps(checkout: Path, steps: int, fixture: Path | None) -> None:
    torch.manual_seed(0)
    # the CPU kernels the numbers came from: 3 Adam steps turn rounding into ~lr-sized weight differences where a
    # gradient is near 0, so the tests compare exactly only on the same kernels (tests/conftest.py, same_kernels)
    record: dict = {"steps": steps, "stages": {}, "kernels": cpu_kernels()}
    stage1_ckpt = Path(tempfile.mkdtemp()) / "stage1.ckpt"
    pretrain_dir = stage1_ckpt.parent
    for stage in (1, 2):
        w = STAGES[stage]["width"]
        batch = (torch.rand(1, 3, w // 2, w) * 2 - 1, torch.rand(1, 3, w // 2, w) * 2 - 1)
        ours = our_model(stage, str(stage1_ckpt) if stage == 2 else None)
        if stage == 2:
            ours.load_global_generator(str(stage1_ckpt))  # what fit does at its start: then the same weights go in
        G0 = {k: v.clone() for k, v in ours.G.state_dict().items()}
        D0 = {k: v.clone() for k, v in ours.D.state_dict().items()}
        theirs = run_official(checkout, stage, G0, D0, batch, steps, str(pretrain_dir) if stage == 2 else "")
        if stage == 2:  # what the official --load_pretrain loaded, against what init_global_from loaded
            for net, ours0, names in (("G", G0, lambda d: d), ("D", D0, lambda d: official_d_names(d, 3))):
                mine, stage1 = names(ours0), torch.load(pretrain_dir / f"latest_net_{net}.pth")
                moved = {"G": lambda k: k, "D": lambda k: k}[net]  # the official loads by name
                expected = [k for k in mine if moved(k) in stage1 and stage1[moved(k)].shape == mine[k].shape]
                same = [k for k in expected if torch.equal(mine[k], theirs["loaded"][net][k])]
                print(f"stage 2: of the {len(expected)} {net} tensors the official --load_pretrain takes from stage 1 "
                      f"(of {len(mine)}), our init_global_from loaded {len(same)} alike")
        losses = run_ours(ours, batch, steps)
        print(f"\n### stage {stage} ({STAGES[stage]['netG']} G, {STAGES[stage]['num_D']}-scale D), {steps} steps")
        print("| step | loss | official | ours | abs diff |\n|---|---|---|---|---|")
        for i, (a, b) in enumerate(zip(theirs["losses"], losses)):
            for k in a:
                print(f"| {i + 1} | {k} | {a[k]:.6f} | {b[k]:.6f} | {abs(a[k] - b[k]):.2g} |")
        ours_d = official_d_names(ours.D.state_dict(), STAGES[stage]["num_D"])
        for net, mine in (("G", ours.G.state_dict()), ("D", ours_d)):
            diffs = {k: (theirs[net][k] - v).abs().max().item() for k, v in mine.items()}
            cancelled = cancelled_biases(mine if net == "G" else ours.D.state_dict(), net, ours)
            rest = max(d for k, d in diffs.items() if k not in cancelled)
            print(f"{net}: max |parameter difference| after {steps} steps {rest:.2g}; the {len(cancelled)} biases an "
                  f"instance norm cancels (gradient 0 up to rounding, which Adam scales to +-lr a step) "
                  f"{max((diffs[k] for k in cancelled), default=0):.2g}")
        record["stages"][stage] = {"batch": batch, "G0": G0, "D0": D0, "losses": theirs["losses"],
                                   "G": {k: v.clone() for k, v in theirs["G"].items()},
                                   "D": {k: v.clone() for k, v in theirs["D"].items()}}
        if stage == 1:  # stage 2 starts from these weights, ours as a checkpoint and the official's as its files
            # what init_global_from reads of a checkpoint: its hyper-parameters and weights
            torch.save({"hyper_parameters": dict(ours.hparams), "state_dict": ours.state_dict()}, stage1_ckpt)
            torch.save(ours.G.state_dict(), pretrain_dir / "latest_net_G.pth")  # the same tensors in its names
            torch.save(official_d_names(ours.D.state_dict(), 2), pretrain_dir / "latest_net_D.pth")
            record["stage1_hparams"] = dict(ours.hparams)
    if fixture is not None:
        fixture.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, fixture)
        print(f"wrote {fixture} ({fixture.stat().st_size // 1024} KB)")


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of NVIDIA/pix2pixHD")
    parser.add_argument("--size", default="256x128", help="WxH of the compared forward pass")
    parser.add_argument("--steps", type=int, default=0, help="also compare this many training steps of each stage")
    parser.add_argument("--fixture", type=Path, help="with --steps: write the official results here for the tests")
    args = parser.parse_args()
    sys.path.insert(0, str(args.official))
    from models import networks as official  # noqa: E402 - the checkout's

    w, h = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    x = torch.randn(1, 36, h, w)
    print("| network | official parameters | ours | state-dict names and shapes equal | max abs output difference |")
    print("|---|---|---|---|---|")
    for name, ngf in (("global", 64), ("local", 32)):
        theirs = official.define_G(36, 3, ngf, name, 4, 9, 1, 3, "instance")
        ours = define_G(36, 3, ngf, name, "instance", use_dropout=False)
        a, b = theirs.state_dict(), ours.state_dict()
        same = list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
        ours.load_state_dict(a)
        with torch.no_grad():
            diff = (theirs(x) - ours(x)).abs().max().item()
        print(f"| G {name} (ngf {ngf}) | {count(theirs):,} | {count(ours):,} | {same} | {diff:.3g} |")
    theirs_d = official.define_D(39, 64, 3, "instance", False, 2, True)
    ours_d = define_D(39, 64, "multiscale", 3, "instance", num_D=2)
    print(f"| D multiscale (num_D 2, n_layers_D 3) | {count(theirs_d):,} | {count(ours_d):,} | | |")
    sys.path.remove(str(args.official))
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]
    if args.steps:
        compare_steps(args.official, args.steps, args.fixture)


if __name__ == "__main__":
    main()
