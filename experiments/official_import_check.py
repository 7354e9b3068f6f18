"""``pix2pix-lit import-official`` against the official networks: each zoo architecture built by the official
``models/networks.py`` (random weights, batch-norm statistics moved off their start), saved as the official code
saves it (``state_dict`` of the network), imported, loaded by our model class, and run on the same input — in the
official ``--eval`` mode and in the default (train-mode) test, dropout masks drawn from the same seed. Prints the
largest |difference| per architecture and mode.

    python experiments/official_import_check.py --official /path/to/networks.py [--size 256] [--fixture PATH]
        [--official-hd /path/to/pix2pixHD/models/networks.py [--hd-size 128] [--hd-fixture PATH]]
        [--official-spade /path/to/SPADE-checkout [--spade-fixture PATH]]

``--official``: a ``networks.py`` of junyanz/pytorch-CycleGAN-and-pix2pix (or of a checkout of its
descendants with the same generators, e.g. taesungp/contrastive-unpaired-translation, whose ResnetGenerator
takes ``no_antialias``; its StyleGAN imports may be stubbed out). ``--fixture`` writes small official networks'
state dicts (one of them in the pre-0.4 format, instance norms with running statistics) and their outputs for
``tests/test_official.py``, which needs no official code. ``--official-hd``: NVIDIA/pix2pixHD's ``networks.py``:
its Cityscapes global and local generators and 3-scale D, imported with ``--model pix2pixhd`` and compared the
same way (``--hd-fixture``: small ones for the tests). ``--official-spade``: a checkout of NVlabs/SPADE: its
Cityscapes and ADE20K generators (one with the VAE, and its encoder) and D, imported with ``--model spade
--preset``, compared in its test mode (``eval``) (``--spade-fixture``: small ones for the tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import tempfile
from pathlib import Path

import torch

# name: (official builder arguments, import-official --model): the generators of the official released models
ARCHS = {
    "unet_256 (pix2pix: facades, maps, edges2shoes, ...)": ("unet", 8, 64, "batch", True, "pix2pix"),
    "resnet_9blocks (CycleGAN: horse2zebra, monet2photo, ...)": ("resnet", 9, 64, "instance", False, "cyclegan"),
    "unet_128": ("unet", 7, 64, "batch", True, "pix2pix"),
    "resnet_6blocks": ("resnet", 6, 64, "instance", False, "cyclegan"),
    "CUT resnet_9blocks, anti-aliased (horse2zebra, cat2dog, ...)": ("resnet", 9, 64, "instance", False, "cut"),
    "CUT without anti-aliasing (--no_antialias --no_antialias_up)": ("resnet", 9, 64, "instance", False,
                                                                            "cut_plain"),
}


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_networks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(official, kind: str, depth: int, ngf: int, norm: str, dropout: bool, in_nc: int = 3, out_nc: int = 3,
          antialias: bool = False):
    norm_layer = official.get_norm_layer(norm)
    if kind == "unet":
        net = official.UnetGenerator(in_nc, out_nc, depth, ngf, norm_layer=norm_layer, use_dropout=dropout)
    else:
        extra = {k: not antialias for k in ("no_antialias", "no_antialias_up")
                 if k in inspect.signature(official.ResnetGenerator).parameters}
        if antialias and not extra:
            raise SystemExit("CUT's anti-aliased generator needs CUT's networks.py (taesungp/contrastive-unpaired-translation)")
        net = official.ResnetGenerator(in_nc, out_nc, ngf, norm_layer=norm_layer, use_dropout=dropout,
                                       n_blocks=depth, **extra)
    official.init_weights(net, "normal", 0.02) if "init_weights" in dir(official) else None
    with torch.no_grad():  # running statistics away from their start, so --eval mode means something
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def outputs(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official ``--eval`` test (net.eval()) and the default test (train mode, batch 1, seed 0)."""
    with torch.no_grad():
        net.eval()
        evaluated = net(x)
        net.train()
        torch.manual_seed(0)
        paper = torch.cat([net(x[i:i + 1]) for i in range(x.shape[0])])
    return {"eval": evaluated, "paper": paper}


def ours(ckpt: Path, mode: str, x: torch.Tensor) -> torch.Tensor:
    from pix2pix_lit.checkpoints import load_checkpoint
    from pix2pix_lit.models import resolve_model_class

    c = load_checkpoint(str(ckpt))
    h = dict(c["hyper_parameters"])
    cls = resolve_model_class(h.pop("_class_path"))
    model = cls(**{k: v for k, v in h.items() if k not in ("inference_mode",)}, inference_mode=mode, fid=False,
                kid=False)
    model.load_state_dict(c["state_dict"])
    model.on_load_checkpoint(c)
    torch.manual_seed(0)
    return model.generate(x, model.predict_direction)


def pix2pixhd_rows(path: Path, size: int, tmp: Path, import_official) -> list[str]:
    """NVIDIA/pix2pixHD's Cityscapes generators (and a 3-scale D) built by its networks.py, imported, compared."""
    official = load_official(path)
    rows = []
    torch.manual_seed(0)
    x = torch.zeros(1, 36, size, 2 * size)
    x[:, :35].scatter_(1, torch.randint(0, 35, (1, 1, size, 2 * size)), 1.0)  # one-hot ids + instance edges
    x[:, 35] = (torch.rand(size, 2 * size) > 0.9).float()
    for name, args in {"pix2pixHD global (label2city_1024p: ngf 64, 4 downsamplings, 9 blocks)": ("global", 64),
                       "pix2pixHD local (label2city_2048p: ngf 32, 1 enhancer of 3 blocks)": ("local", 32)}.items():
        torch.manual_seed(1)
        net = official.define_G(36, 3, args[1], args[0], 4, 9, 1, 3, "instance")
        d = official.define_D(39, 64, 3, "instance", False, 3, True)
        src, dfile, out = tmp / f"hd_{args[0]}.pth", tmp / f"hd_{args[0]}_D.pth", tmp / f"hd_{args[0]}.ckpt"
        torch.save(net.state_dict(), src)
        torch.save(d.state_dict(), dfile)
        import_official("pix2pixhd", src, out, discriminator=dfile)
        with torch.no_grad():
            theirs = net.eval()(x)
            pair = torch.cat([x, theirs], 1)
            their_d = [scale[-1] for scale in d.eval()(pair)]
        diffs = {mode: float((ours(out, mode, x) - theirs).abs().max()) for mode in ("eval", "paper")}
        from pix2pix_lit.checkpoints import load_checkpoint
        from pix2pix_lit.models import Pix2Pix

        c = load_checkpoint(str(out))
        h = {k: v for k, v in c["hyper_parameters"].items() if k != "_class_path"}
        model = Pix2Pix(**h, fid=False, kid=False)
        model.load_state_dict(c["state_dict"])
        with torch.no_grad():
            d_diff = max(float((a - b).abs().max()) for a, b in zip(model.D.eval()(pair), their_d))
        rows.append(f"| {name} | {diffs['eval']:.2e} | {diffs['paper']:.2e} |")
        rows.append(f"| its 3-scale D (39 channels, ndf 64, feature-matching layout), each scale's output | {d_diff:.2e} | - |")
        print(*rows[-2:], sep="\n", flush=True)
    return rows


def load_spade(checkout: Path):
    """NVlabs/SPADE's ``models.networks`` from a checkout (its sync_batchnorm submodule stubbed by BatchNorm2d,
    as experiments/spade_step.py does), imported from a temporary copy."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from official_code import spade_copy

    spade_copy(checkout)
    import models.networks as networks

    return networks


def spade_opt(preset: str, **extra):
    from argparse import Namespace

    from pix2pix_lit.official import SPADE_PRESETS

    p = SPADE_PRESETS[preset]
    semantic_nc = p["label_nc"] + int(p["contain_dontcare_label"]) + int(not p["no_instance"])
    return Namespace(**{**p, "semantic_nc": semantic_nc, "ngf": 64, "ndf": 64, "norm_G": "spectralspadesyncbatch3x3",
                        "norm_D": "spectralinstance", "norm_E": "spectralinstance", "netG": "spade",
                        "netD": "multiscale", "netD_subarch": "n_layer", "num_D": 2, "n_layers_D": 4, "output_nc": 3,
                        "use_vae": False, "z_dim": 256, "gpu_ids": [], "init_type": "xavier", "init_variance": 0.02,
                        "no_ganFeat_loss": False, **extra})


def spade_rows(checkout: Path, tmp: Path, import_official) -> list[str]:
    """NVlabs/SPADE's Cityscapes and ADE20K generators (and D; ADE20K with the VAE: G with a given z, and E),
    built by its code with its dataset defaults, imported with ``--model spade --preset``, compared."""
    from pix2pix_lit.official import SPADE_PRESETS

    networks = load_spade(checkout)
    rows = []
    for name, (preset, vae) in {"SPADE Cityscapes (35 ids + edges, 512x256, more)": ("cityscapes", False),
                                "SPADE ADE20K (150 ids + don't-care, 256x256)": ("ade20k", False),
                                "SPADE ADE20K with the VAE (G with a given z; E: mu, logvar)": ("ade20k", True)}.items():
        torch.manual_seed(1)
        opt = spade_opt(preset, use_vae=vae)
        g, d = networks.define_G(opt), networks.define_D(opt)
        e = networks.define_E(opt) if vae else None
        with torch.no_grad():
            for m in g.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        files = {}
        for key, net in (("G", g), ("D", d), ("E", e)):
            if net is not None:
                files[key] = tmp / f"spade_{preset}_{vae}_{key}.pth"
                torch.save(net.state_dict(), files[key])
        out = tmp / f"spade_{preset}_{vae}.ckpt"
        import_official("spade", files["G"], out, discriminator=files["D"], encoder=files.get("E"),
                        spade_options=SPADE_PRESETS[preset])
        h, w = int(opt.crop_size / opt.aspect_ratio), opt.crop_size
        x = torch.zeros(1, opt.semantic_nc, h, w)
        x[:, :opt.label_nc + int(opt.contain_dontcare_label)].scatter_(
            1, torch.randint(0, opt.label_nc, (1, 1, h, w)), 1.0)
        if not opt.no_instance:
            x[:, -1] = (torch.rand(h, w) > 0.9).float()
        z = torch.randn(1, opt.z_dim) if vae else None
        photo = torch.rand(1, 3, h, w) * 2 - 1
        from pix2pix_lit.checkpoints import load_checkpoint
        from pix2pix_lit.models import SPADE

        c = load_checkpoint(str(out))
        model = SPADE(**{k: v for k, v in c["hyper_parameters"].items() if k != "_class_path"}, fid=False, kid=False)
        model.load_state_dict(c["state_dict"])
        with torch.no_grad():
            theirs = g.eval()(x, z=z)
            ours_g = model.generate(x, **({"z": z} if vae else {}))
            pair = torch.cat([x, theirs], 1)
            d_diff = max(float((a[-1] - b[-1]).abs().max()) for a, b in zip(d.eval()(pair), model.D.eval().features(pair)))
            rows.append(f"| {name} | {float((ours_g - theirs).abs().max()):.2e} | - |")
            rows.append(f"| its D ({opt.num_D} scales, {opt.n_layers_D} layers), each scale's output | {d_diff:.2e} | - |")
            if vae:
                e_diff = max(float((a - b).abs().max()) for a, b in zip(e.eval()(photo), model.E.eval()(photo)))
                rows.append(f"| its encoder E (mu, logvar of a photo) | {e_diff:.2e} | - |")
        print(*rows[-3 if vae else -2:], sep="\n", flush=True)
    return rows


def seeded_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Weights for a network's names and shapes drawn from ``seed`` (running variances positive, counters 0): a
    fixture stores the shapes and the official outputs, not 20 MB of SPADE weights; the test draws them again."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g) * 0.05
        if name.endswith("running_var"):
            t = t.abs() + 0.5
        out[name] = torch.zeros(shape, dtype=torch.long) if name.endswith("num_batches_tracked") else t
    return out


def seeded_inputs(h: int, w: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """A one-hot map of 5 ids + instance edges, a z and a photo, drawn from ``seed`` (for the SPADE fixture)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 6, h, w)
    x[:, :5].scatter_(1, torch.randint(0, 5, (1, 1, h, w), generator=g), 1.0)
    x[:, 5] = (torch.rand(h, w, generator=g) > 0.9).float()
    return {"input": x, "z": torch.randn(1, 256, generator=g), "photo": torch.rand(1, 3, h, w, generator=g) * 2 - 1}


SPADE_FIXTURE = {"label_nc": 5, "contain_dontcare_label": False, "no_instance": False, "crop_size": 128,
                 "aspect_ratio": 2.0, "num_upsampling_layers": "normal"}


def write_spade_fixture(checkout: Path, path: Path) -> None:
    """Small SPADE networks by the official code (5 ids + edges, 64x128; with the VAE 128x256, E too: the official
    encoder needs a crop of 256 or more), their weights drawn by :func:`seeded_state_dict` (seeds 0, 1, 2 for G, D,
    E), with outputs."""
    from argparse import Namespace

    networks = load_spade(checkout)
    cases = {}
    for vae in (False, True):
        torch.manual_seed(3)
        opt = Namespace(**{**vars(spade_opt("cityscapes", use_vae=vae)), **SPADE_FIXTURE, "semantic_nc": 6,
                           "ngf": 4, "ndf": 4, "n_layers_D": 2, "crop_size": 256 if vae else 128})
        g, d = networks.define_G(opt), networks.define_D(opt)
        e = networks.define_E(opt) if vae else None
        shapes = {k: {n: list(t.shape) for n, t in net.state_dict().items()} for k, net in (("G", g), ("D", d), ("E", e))
                  if net is not None}
        for i, (k, net) in enumerate((("G", g), ("D", d), ("E", e))):
            if net is not None:
                net.load_state_dict(seeded_state_dict(shapes[k], i))
        inputs = seeded_inputs(opt.crop_size // 2, opt.crop_size)
        x, z, photo = inputs["input"], inputs["z"], inputs["photo"]
        with torch.no_grad():
            y = g.eval()(x, z=z if vae else None)
            case = {"shapes": shapes, "output": y,
                    "D_outputs": [scale[-1] for scale in d.eval()(torch.cat([x, y], 1))]}
            if vae:
                case.update(E_outputs=list(e.eval()(photo)))
        cases["vae" if vae else "labels"] = {**case, "options": {**SPADE_FIXTURE, "crop_size": opt.crop_size}}
    torch.save(cases, path)
    print(f"fixture written: {path} ({path.stat().st_size // 1024} KiB)")


def write_hd_fixture(path_networks: Path, path: Path) -> None:
    """Small pix2pixHD generators (global, local) and a 2-scale D by the official networks.py, with outputs."""
    official = load_official(path_networks)
    torch.manual_seed(2)
    x = torch.zeros(1, 6, 64, 128)  # 5 label ids + instance edges
    x[:, :5].scatter_(1, torch.randint(0, 5, (1, 1, 64, 128)), 1.0)
    x[:, 5] = (torch.rand(64, 128) > 0.9).float()
    cases = {}
    for key, netG in {"global": "global", "local": "local"}.items():
        torch.manual_seed(3)
        net = official.define_G(6, 3, 4, netG, 2, 1, 1, 1, "instance")
        d = official.define_D(9, 4, 2, "instance", False, 2, True)
        with torch.no_grad():
            y = net.eval()(x)
            dy = [scale[-1] for scale in d.eval()(torch.cat([x, y], 1))]
        cases[key] = {"state_dict": net.state_dict(), "D": d.state_dict(), "input": x, "output": y, "D_outputs": dy}
    torch.save(cases, path)
    print(f"fixture written: {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="the official models/networks.py")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--fixture", type=Path)
    p.add_argument("--official-hd", type=Path, help="NVIDIA/pix2pixHD's models/networks.py: its generators and D too")
    p.add_argument("--hd-size", type=int, default=128, help="the pix2pixHD input's height (width twice it)")
    p.add_argument("--hd-fixture", type=Path, help="write small pix2pixHD networks for tests/test_official.py")
    p.add_argument("--official-spade", type=Path, help="a checkout of NVlabs/SPADE: its generators, D and E too")
    p.add_argument("--spade-fixture", type=Path, help="write small SPADE networks for tests/test_official.py")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from measure import cpu_report, log_entry

    from pix2pix_lit.official import import_official

    official = load_official(args.official)
    torch.manual_seed(0)
    x = torch.rand(2, 3, args.size, args.size) * 2 - 1
    rows = [f"{cpu_report()}; fp32, {args.size}x{args.size}, batch 2", "",
            "| architecture | max abs diff, --eval | max abs diff, default test (train mode, dropout seed 0) |",
            "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, depth, ngf, norm, dropout, model) in ARCHS.items():
            torch.manual_seed(1)
            net = build(official, kind, depth, ngf, norm, dropout, antialias=model == "cut")
            src, out = Path(tmp) / f"{model}{kind}{depth}.pth", Path(tmp) / f"{model}{kind}{depth}.ckpt"
            torch.save(net.state_dict(), src)
            import_official(model.removesuffix("_plain"), src, out, dropout=dropout if kind == "unet" else None)
            theirs = outputs(net, x)
            diffs = {mode: float((ours(out, mode, x) - theirs[mode]).abs().max()) for mode in ("eval", "paper")}
            rows.append(f"| {name} | {diffs['eval']:.2e} | {diffs['paper']:.2e} |")
            print(rows[-1], flush=True)
        if args.official_hd:
            rows += pix2pixhd_rows(args.official_hd, args.hd_size, Path(tmp), import_official)
        if args.official_spade:
            rows += spade_rows(args.official_spade, Path(tmp), import_official)
    cmd = f"python experiments/official_import_check.py --official {args.official.name} --size {args.size}"
    if args.official_hd:
        cmd += f" --official-hd {args.official_hd.name} --hd-size {args.hd_size}"
    if args.official_spade:
        cmd += " --official-spade <NVlabs/SPADE checkout>"
    print(f"written to {log_entry(f'`{cmd}`', chr(10).join(rows))}")
    if args.fixture:
        write_fixture(official, args.fixture)
    if args.hd_fixture:
        write_hd_fixture(args.official_hd, args.hd_fixture)
    if args.spade_fixture:
        write_spade_fixture(args.official_spade, args.spade_fixture)


def write_fixture(official, path: Path) -> None:
    """Small official generators, their state dicts as the official code saves them, and their outputs."""
    torch.manual_seed(2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    cases = {}
    for key, (kind, depth, norm, dropout, in_nc, out_nc) in {
        "unet5_batch_dropout": ("unet", 5, "batch", True, 3, 3),
        "resnet2_instance": ("resnet", 2, "instance", False, 3, 3),
        "resnet2_instance_dropout_1to3": ("resnet", 2, "instance", True, 1, 3),
        "cut_resnet6_antialiased": ("resnet", 6, "instance", False, 3, 3),
    }.items():
        torch.manual_seed(3)
        net = build(official, kind, depth, 4, norm, dropout, in_nc, out_nc, antialias=key.startswith("cut"))
        inp = x[:, :in_nc]
        cases[key] = {"state_dict": {k: v.clone() for k, v in net.state_dict().items()}, "input": inp,
                      **outputs(net, inp)}
    # the pre-0.4 files (most released CycleGAN models): instance norms saved with running statistics
    old = dict(cases["resnet2_instance"]["state_dict"])
    for name, m in build(official, "resnet", 2, 4, "instance", False).named_modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            old[f"{name}.running_mean"], old[f"{name}.running_var"] = torch.rand(m.num_features), torch.rand(m.num_features)
    cases["resnet2_instance_pre04"] = {**cases["resnet2_instance"], "state_dict": old}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cases, path)
    print(f"fixture written: {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
