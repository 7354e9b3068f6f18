"""Official pretrained networks as pix2pix-lit checkpoints: ``pix2pix-lit import-official``.

junyanz's pix2pix and CycleGAN code saves each network's ``state_dict`` on its own (``latest_net_G.pth``,
``latest_net_G_A.pth``, ...; the released pretrained models are such files). Its generators and PatchGANs have the
same layers here, under the same names, so a file loads as it is; what the file does not say is read from its keys
and shapes (U-Net or ResNet, depth, ngf, norm, channels) and the rest is taken as options (``--dropout``: a
U-Net's dropout has no weights). The result is an ordinary checkpoint: ``test``, ``predict``, ``export``, ``serve``
take it, and ``fit --ckpt_path`` fine-tunes from it (from step 0, fresh optimizers).

    pix2pix-lit import-official latest_net_G.pth facades.ckpt --model pix2pix
    pix2pix-lit import-official horse2zebra.pth h2z.ckpt --model cyclegan --direction AtoB
    pix2pix-lit import-official latest_net_G_A.pth pair.ckpt --model cyclegan --other latest_net_G_B.pth
    pix2pix-lit import-official latest_net_G.pth h2z_cut.ckpt --model cut [--discriminator D.pth --sampler F.pth]

CUT (taesungp/contrastive-unpaired-translation) saves its generator, discriminator and PatchNCE heads the same
way, with the same layer names as here; whether its down/upsampling is anti-aliased is read from the blur
filters the file holds.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from pix2pix_lit.atomic import staged_file
from pix2pix_lit.errors import CheckpointError, ConfigError, Pix2PixLitError

KEY = "imported"  # checkpoint["pix2pix_lit"][KEY]: where each network came from, and which were not given
_RESNET_BLOCK = re.compile(r"^model\.(\d+)\.conv_block\.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an official ``.pth`` (a DataParallel ``module.`` prefix removed), or a one-line error."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; give the official .pth file (e.g. latest_net_G.pth)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be read ({reason[:120]}): the file is truncated or not a .pth") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        raise CheckpointError(f"{path} is a Lightning checkpoint, not an official network file; use it as it is")
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{path} holds no network weights (a state dict of tensors); give the official .pth")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def without_instance_norm_stats(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official code before PyTorch 0.4 saved running statistics for its (affine-free) instance norms; today's
    official code drops them when it loads such a file (``__patch_instance_norm_state_dict``), and so does this."""
    stats = (".running_mean", ".running_var", ".num_batches_tracked")
    layers = {k.rsplit(".", 1)[0] for k in sd if k.endswith(stats)}
    instance = {p for p in layers if f"{p}.weight" not in sd}
    return {k: v for k, v in sd.items() if k.rsplit(".", 1)[0] not in instance}


def infer_generator(sd: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """netG, ngf, num_downs/n_blocks, norm, input_nc, output_nc of an official generator's state dict."""
    if "model.model.0.weight" in sd:  # UnetGenerator: nested UnetSkipConnectionBlocks
        first = sd["model.model.0.weight"]
        depth = max(k.count("model.") for k in sd) - 1  # model.model.1.model.3 ... one "model." per level
        last = sd.get("model.model.3.weight")
        if last is None or first.dim() != 4:
            raise CheckpointError(f"{path}: model.model.3.weight is missing; not a complete official U-Net generator")
        norm = "batch" if "model.model.1.model.2.weight" in sd else "instance"
        netG = {8: "unet_256", 7: "unet_128"}.get(depth, "unet")
        return {"netG": netG, "num_downs": None if netG != "unet" else depth, "ngf": first.shape[0],
                "input_nc": first.shape[1], "output_nc": last.shape[1], "norm": norm, "dropout_known": False}
    blocks = sorted({int(m.group(1)) for k in sd if (m := _RESNET_BLOCK.match(k))})
    if "model.1.weight" in sd and blocks:  # ResnetGenerator
        first = sd["model.1.weight"]
        convs = [k for k in sd if re.fullmatch(r"model\.\d+\.weight", k) and sd[k].dim() == 4]
        last = sd[max(convs, key=lambda k: int(k.split(".")[1]))]
        n = len(blocks)
        netG = {9: "resnet_9blocks", 6: "resnet_6blocks"}.get(n, "resnet")
        return {"netG": netG, "n_blocks": None if netG != "resnet" else n, "ngf": first.shape[0],
                "input_nc": first.shape[1], "output_nc": last.shape[0],
                "norm": "batch" if "model.2.weight" in sd else "instance",
                "dropout": f"model.{blocks[0]}.conv_block.6.weight" in sd, "dropout_known": True}
    first_key = next(iter(sd))
    raise CheckpointError(f"{path}: {first_key} {tuple(sd[first_key].shape)} fits no official pix2pix/CycleGAN "
                          "generator (a U-Net's keys start model.model.0, a ResNet's model.1 and model.N.conv_block)")


def _blocks(sd: dict[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.conv_block\.")
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _convs(sd: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """The indices of ``prefix``'s layers with 4-D weights (convolutions), in order."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.weight$")
    return sorted(int(m.group(1)) for k, v in sd.items() if (m := pattern.match(k)) and v.dim() == 4)


def infer_pix2pixhd(sd: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """NVIDIA/pix2pixHD's GlobalGenerator or LocalEnhancer in a state dict: netG, ngf, n_downsample_global,
    n_blocks_global, n_local_enhancers, n_blocks_local, norm, input_nc, output_nc (its layer names are ours)."""
    blocks, convs = _blocks(sd, "model"), _convs(sd, "model")
    if "model.1.weight" not in sd or not blocks:
        first_key = next(iter(sd))
        raise CheckpointError(f"{path}: {first_key} {tuple(sd[first_key].shape)} fits no pix2pixHD generator (a "
                              "global generator's keys start model.1 and hold model.N.conv_block)")
    enhancers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^model(\d+)_1\.", k))})
    downs = sum(1 for i in convs if i < blocks[0]) - 1  # the first 7x7 convolution, then one per downsampling
    arch: dict[str, Any] = {"n_downsample_global": downs, "n_blocks_global": len(blocks), "input_nc":
                            sd["model.1.weight"].shape[1], "norm": "batch" if "model.2.weight" in sd else "instance",
                            "dropout": f"model.{blocks[0]}.conv_block.6.weight" in sd, "dropout_known": True}
    if not enhancers:
        last = sd[f"model.{convs[-1]}.weight"]
        return {**arch, "netG": "global", "ngf": sd["model.1.weight"].shape[0], "output_nc": last.shape[0]}
    n = enhancers[-1]
    outer = _convs(sd, f"model{n}_2")
    if enhancers != list(range(1, n + 1)) or not outer or f"model{n}_1.1.weight" not in sd:
        raise CheckpointError(f"{path}: enhancers {enhancers} are not a complete pix2pixHD local generator "
                              "(model1_1 ... modelN_1 and modelN_2)")
    return {**arch, "netG": "local", "ngf": sd[f"model{n}_1.1.weight"].shape[0], "n_local_enhancers": n,
            "n_blocks_local": len(_blocks(sd, "model1_2")), "output_nc": sd[f"model{n}_2.{outer[-1]}.weight"].shape[0]}


def pix2pixhd_discriminator(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor],
                            path: Path) -> dict[str, torch.Tensor]:
    """NVIDIA/pix2pixHD's multi-scale D (with feature matching's per-layer names, its default) in our names: its
    ``scale{s}_layer{j}.0`` is our scale ``num_D-1-s`` (ours counts from the full resolution), j-th convolution."""
    if not any(k.startswith("scale0_layer0.") for k in theirs):
        raise CheckpointError(f"{path}: not a pix2pixHD multi-scale D with per-layer names (scale0_layer0...; a D "
                              "trained with --no_ganFeat_loss is not read)")
    num_D = 1 + max(int(re.match(r"^scale(\d+)_", k).group(1)) for k in theirs if k.startswith("scale"))
    out = {}
    for i in range(num_D):
        convs = sorted({int(k.split(".")[3]) for k in ours if k.startswith(f"discriminators.{i}.")
                        and k.endswith(".weight") and ours[k].dim() == 4})
        for j, idx in enumerate(convs):
            for p in ("weight", "bias"):
                key = f"scale{num_D - 1 - i}_layer{j}.0.{p}"
                if key in theirs:
                    out[f"discriminators.{i}.model.{idx}.{p}"] = theirs[key]
    if len(out) != len(theirs):
        left = sorted(set(theirs) - {f"scale{s}_layer{j}.0.{p}" for s in range(num_D) for j in range(32)
                                     for p in ("weight", "bias")})
        raise CheckpointError(f"{path}: {left[0] if left else 'a layer'} has no place in a {num_D}-scale D of this "
                              "layout; the file is not a pix2pixHD discriminator")
    return out


def _generator_options(arch: dict[str, Any], dropout: Optional[bool], default: bool) -> dict[str, Any]:
    """The model options of the file's generator; ``dropout`` None: the file's (ResNet), else ``default``."""
    if arch["dropout_known"]:
        if dropout is not None and dropout != arch["dropout"]:
            raise ConfigError(f"--dropout {str(dropout).lower()}: the file's ResNet blocks are "
                              f"{'with' if arch['dropout'] else 'without'} dropout; leave the option out")
        dropout = arch["dropout"]
    elif dropout is None:
        dropout = default
    options = {k: arch[k] for k in ("netG", "ngf", "norm") if arch.get(k) is not None}
    options.update({k: arch[k] for k in ("num_downs", "n_blocks") if arch.get(k) is not None})
    options["no_dropout"] = not dropout
    return options


def _load(net: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str) -> None:
    ours = net.state_dict()
    for k, v in ours.items():
        if k not in sd:
            raise CheckpointError(f"{path}: {k} is missing for {what} (this file has {len(sd)} tensors, "
                                  f"{what} {len(ours)})")
        if sd[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k} is {tuple(sd[k].shape)} but {what} built from the file's keys has "
                                  f"{tuple(v.shape)}; the file is not one network of a known layout")
    unknown = sorted(sd.keys() - ours.keys())
    if unknown:
        raise CheckpointError(f"{path}: {unknown[0]} does not belong to {what}; the file is not one network of a "
                              "known layout")
    net.load_state_dict(sd)


MODELS = ("pix2pix", "cyclegan", "cut", "pix2pixhd", "spade")
# NVlabs/SPADE's dataset defaults (data/<name>_dataset.py): what its generator's input and latent size were
SPADE_PRESETS = {
    "cityscapes": {"label_nc": 35, "contain_dontcare_label": False, "no_instance": False, "crop_size": 512,
                   "aspect_ratio": 2.0, "num_upsampling_layers": "more"},
    "ade20k": {"label_nc": 150, "contain_dontcare_label": True, "no_instance": True, "crop_size": 256,
               "aspect_ratio": 1.0, "num_upsampling_layers": "normal"},
    "coco": {"label_nc": 182, "contain_dontcare_label": True, "no_instance": False, "crop_size": 256,
             "aspect_ratio": 1.0, "num_upsampling_layers": "normal"},
}
# NVIDIA/pix2pixHD's training options (train_options.py, base_options.py defaults and its Cityscapes commands), the
# recipe an imported generator is fine-tuned with; configs/pix2pixhd/cityscapes_*.yaml hold the same (a test checks)
PIX2PIXHD_RECIPE = {
    "netD": "multiscale", "n_layers_D": 3, "gan_mode": "lsgan", "gan_scales": "sum", "padding_D": 2,
    "step_order": "pix2pixhd", "init_type": "pix2pixhd", "lambda_feat": 10.0, "lambda_L1": 0.0,
    "lr_policy": "linear_nvidia",
}


def _cut(sd: dict[str, torch.Tensor], src: Path, arch: dict[str, Any], options: dict[str, Any], netD: str,
         n_layers_D: int) -> Any:
    """The CUT model of an official CUT generator's state dict (``netG``, ``ngf``, ``norm``, anti-aliasing)."""
    from pix2pix_lit.models.cut import CUT, CUT_GENERATORS

    if options["netG"] not in CUT_GENERATORS:
        raise CheckpointError(f"{src}: a ResNet of {arch.get('n_blocks')} blocks; CUT's generators are "
                              f"{' and '.join(CUT_GENERATORS)}")
    if netD not in ("basic", "n_layers"):
        raise ConfigError(f"--netD {netD}: CUT's discriminators are basic and n_layers")
    # anti-aliased downsampling holds a 3x3 blur filter, anti-aliased upsampling a 4x4 one (``.filt`` buffers)
    blurs = {tuple(v.shape[-2:]) for k, v in sd.items() if k.endswith(".filt")}
    kept = {k: v for k, v in options.items() if k not in ("num_downs", "n_blocks")}
    return CUT(input_nc=arch["input_nc"], output_nc=arch["output_nc"], **kept, netD=netD, n_layers_D=n_layers_D,
               antialias=(3, 3) in blurs, antialias_up=(4, 4) in blurs, fid=False, kid=False,
               nce_idt=arch["input_nc"] == arch["output_nc"])  # identity NCE compares G(b) with b


def _pix2pixhd(sd: dict[str, torch.Tensor], src: Path, sd_D: Optional[dict[str, torch.Tensor]], ndf: int,
               label_nc: Optional[int], no_instance: bool, contain_dontcare_label: bool) -> tuple[Any, dict[str, Any]]:
    """The Pix2Pix model of a pix2pixHD generator file (and its D's layout, where given), with pix2pixHD's recipe."""
    from pix2pix_lit.data.labels import semantic_channels
    from pix2pix_lit.models import Pix2Pix

    arch = infer_pix2pixhd(sd, src)
    label_nc = 35 if label_nc is None else label_nc  # the official default (Cityscapes' ids)
    channels = semantic_channels(label_nc, contain_dontcare_label, not no_instance) if label_nc else None
    if channels is not None and channels != arch["input_nc"]:
        raise ConfigError(f"{src}: the generator takes {arch['input_nc']} channels but --label_nc {label_nc}"
                          f"{' --contain_dontcare_label' if contain_dontcare_label else ''}"
                          f"{' --no_instance' if no_instance else ''} gives {channels}; give the options it was "
                          "trained with (label_nc + don't-care + instance edges), or --label_nc 0 for images")
    num_D = 3 if arch["netG"] == "local" else 2  # the official commands: 2 scales at 1024x512, 3 at 2048x1024
    n_layers_D = 3
    if sd_D is not None:
        scales = {int(m.group(1)) for k in sd_D if (m := re.match(r"^scale(\d+)_layer", k))}
        num_D = len(scales) or num_D
        n_layers_D = max(len({k.split(".")[0] for k in sd_D if k.startswith("scale0_layer")}) - 2, 1)
    size_keys = ("netG", "ngf", "n_downsample_global", "n_blocks_global", "n_local_enhancers", "n_blocks_local", "norm")
    net = Pix2Pix(**{k: arch[k] for k in size_keys if k in arch}, no_dropout=not arch["dropout"],
                  input_nc=arch["input_nc"] if not label_nc else 1, output_nc=arch["output_nc"], label_nc=label_nc,
                  no_instance=no_instance, contain_dontcare_label=contain_dontcare_label,
                  **{**PIX2PIXHD_RECIPE, "n_layers_D": n_layers_D}, num_D=num_D, ndf=ndf, fid=False, kid=False)
    return net, arch


def infer_spade(sd: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """NVlabs/SPADE's SPADEGenerator in a state dict: ngf, norm_G, the label channels, VAE or not, 'most'."""
    conv = "head_0.conv_0.weight_orig" if "head_0.conv_0.weight_orig" in sd else "head_0.conv_0.weight"
    mlp = sd.get("head_0.norm_0.mlp_shared.0.weight")
    if "fc.weight" not in sd or conv not in sd or mlp is None or "conv_img.weight" not in sd:
        first_key = next(iter(sd))
        raise CheckpointError(f"{path}: {first_key} {tuple(sd[first_key].shape)} fits no SPADE generator (its keys "
                              "are fc, head_0 ... up_3 with SPADE norms, conv_img)")
    norm = "syncbatch" if "head_0.norm_0.param_free_norm.running_mean" in sd else "instance"
    arch = {"ngf": sd[conv].shape[0] // 16, "semantic_nc": mlp.shape[1], "output_nc": sd["conv_img.weight"].shape[0],
            "norm_G": f"{'spectral' if conv.endswith('_orig') else ''}spade{norm}{mlp.shape[-1]}x{mlp.shape[-1]}",
            "use_vae": sd["fc.weight"].dim() == 2, "most": any(k.startswith("up_4.") for k in sd)}
    if arch["use_vae"]:
        arch["z_dim"] = sd["fc.weight"].shape[1]
        arch["latent_cells"] = sd["fc.weight"].shape[0] // (16 * arch["ngf"])  # sw * sh of the trained crop
    return arch


def _renamed(sd: dict[str, torch.Tensor], pattern: str, repl) -> dict[str, torch.Tensor]:
    return {re.sub(pattern, repl, k): v for k, v in sd.items()}


def _spade(sd: dict[str, torch.Tensor], src: Path, sd_D: Optional[dict[str, torch.Tensor]], ndf: int,
           given: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The SPADE model of an official generator file: what the weights say, and the rest from ``given`` (a
    dataset preset and explicit options)."""
    from pix2pix_lit.data.labels import semantic_channels
    from pix2pix_lit.models import SPADE

    arch = infer_spade(sd, src)
    missing = [k for k in ("label_nc", "crop_size", "aspect_ratio") if given.get(k) is None]
    if missing or (given.get("num_upsampling_layers") is None and not arch["most"]):
        raise ConfigError(f"{src}: a SPADE generator's weights do not say its data: give --preset cityscapes|ade20k|"
                          "coco (NVlabs/SPADE's dataset defaults) or --label_nc, --crop_size, --aspect_ratio and "
                          "--num_upsampling_layers normal|more as it was trained")
    options = {k: bool(given.get(k)) for k in ("contain_dontcare_label", "no_instance")}
    channels = semantic_channels(given["label_nc"], options["contain_dontcare_label"], not options["no_instance"])
    if channels != arch["semantic_nc"]:
        raise ConfigError(f"{src}: the generator takes {arch['semantic_nc']} label channels but --label_nc "
                          f"{given['label_nc']} with{'' if options['contain_dontcare_label'] else 'out'} don't-care and "
                          f"with{'out' if options['no_instance'] else ''} instance edges gives {channels}; give the "
                          "options (or --preset) it was trained with")
    layers = "most" if arch["most"] else given["num_upsampling_layers"]
    num_D, n_layers_D = 2, 4  # the official defaults
    if sd_D is not None:
        num_D = len({k.split(".")[1] for k in sd_D})  # discriminators.<scale>.model<layer>. ...
        n_layers_D = len({k.split(".")[2] for k in sd_D if k.startswith("discriminators.0.")}) - 1
    net = SPADE(label_nc=given["label_nc"], **options, output_nc=arch["output_nc"], ngf=arch["ngf"], ndf=ndf,
                num_upsampling_layers=layers, norm_G=arch["norm_G"], use_vae=arch["use_vae"],
                z_dim=arch.get("z_dim", 256), crop_size=given["crop_size"], aspect_ratio=given["aspect_ratio"],
                num_D=num_D, n_layers_D=n_layers_D, fid=False, kid=False)
    return net, arch


def import_official(model: str, src: Path, out: Path, direction: str = "AtoB", other: Optional[Path] = None,
                    discriminator: Optional[Path] = None, dropout: Optional[bool] = None,
                    netD: str = "basic", n_layers_D: int = 3, sampler: Optional[Path] = None,
                    label_nc: Optional[int] = None, no_instance: bool = False,
                    contain_dontcare_label: bool = False, encoder: Optional[Path] = None,
                    spade_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write ``out``: a checkpoint of ``model`` (pix2pix | cyclegan | cut | pix2pixhd) whose generator(s) are the
    official files' (``discriminator``: pix2pix's, CUT's or pix2pixHD's D too; ``sampler``: CUT's PatchNCE heads F;
    ``label_nc``, ``no_instance``, ``contain_dontcare_label``: what a pix2pixHD generator's input channels were).
    ``spade_options``: a SPADE generator's data (a :data:`SPADE_PRESETS` entry, with any of its keys given);
    ``encoder``: SPADE's VAE encoder E. Returns what was imported (also saved in the checkpoint)."""
    from pix2pix_lit.models import CycleGAN, Pix2Pix

    if model not in MODELS:
        raise ConfigError(f"--model {model}: import-official reads junyanz's pix2pix and cyclegan and taesungp's cut "
                          "files")
    if sampler is not None and model != "cut":
        raise ConfigError("--sampler is CUT's PatchNCE heads (latest_net_F.pth); only --model cut has them")
    if direction not in ("AtoB", "BtoA"):
        raise ConfigError(f"--direction {direction}: AtoB or BtoA")
    if model == "cyclegan" and discriminator is not None:
        raise ConfigError("--discriminator takes pix2pix's or CUT's D; a CycleGAN's D_A and D_B start fresh here "
                          "(fine-tuning trains them)")
    if model != "cyclegan" and other is not None:
        raise ConfigError(f"--other is a CycleGAN's second generator; a {model} model has one")
    if out.suffix != ".ckpt" or out.exists() or not out.parent.is_dir():
        raise ConfigError(f"{out}: give a new .ckpt file in an existing folder (nothing is overwritten)")
    if encoder is not None and model != "spade":
        raise ConfigError("--encoder is SPADE's VAE encoder (latest_net_E.pth); only --model spade has one")
    if model == "spade":
        sd = read_state_dict(src)
        sd_D = None if discriminator is None else _renamed(read_state_dict(discriminator), r"^discriminator_(\d+)\.",
                                                            r"discriminators.\1.")
        ndf = 64 if sd_D is None else next(v for v in sd_D.values() if v.dim() == 4).shape[0]
        given = {**(spade_options or {}), **({} if label_nc is None else {"label_nc": label_nc})}
        given.setdefault("no_instance", no_instance)
        given.setdefault("contain_dontcare_label", contain_dontcare_label)
        net, arch = _spade(sd, src, sd_D, ndf, given)
        _load(net.G, sd, src, f"the SPADE generator ({arch['norm_G']})")
        sources, untrained = {"G": str(src)}, []
        for name, part, path in (("D", sd_D, discriminator),
                                 ("E", None, encoder if arch["use_vae"] else None)):
            if path is None:
                untrained += [name] if name == "D" or arch["use_vae"] else []
                continue
            part = part if part is not None else _renamed(read_state_dict(path), r"^layer(\d+)\.",
                                                          lambda m: f"layers.{int(m.group(1)) - 1}.")
            _load(getattr(net, name), part, path, f"SPADE's {name}")
            sources[name] = str(path)
        if encoder is not None and not arch["use_vae"]:
            raise ConfigError(f"--encoder: {src} is a generator without a VAE (its fc is a convolution); leave it out")
        inferred = {k: v for k, v in arch.items() if k not in ("most", "latent_cells")}
        return _write(net, out, {"from": sources, "untrained": untrained, "ndf": ndf, "dropout": False,
                                 "inferred": {**inferred, "netG": "spade", "input_nc": arch["semantic_nc"],
                                              "norm": arch["norm_G"]}})
    if label_nc is not None and model != "pix2pixhd":
        raise ConfigError(f"--label_nc is for pix2pixHD's and SPADE's label-map generators; a {model} file translates images")
    sd = without_instance_norm_stats(read_state_dict(src))
    sd_D = None if discriminator is None else without_instance_norm_stats(read_state_dict(discriminator))
    # D's filters: its first convolution's outputs (the official default 64 where no D file is given)
    ndf = 64 if sd_D is None else next(v for v in sd_D.values() if v.dim() == 4).shape[0]
    if model == "pix2pixhd":
        if dropout is not None:
            raise ConfigError("--dropout: a pix2pixHD generator's dropout is read from its file; leave it out")
        net, arch = _pix2pixhd(sd, src, sd_D, ndf, label_nc, no_instance, contain_dontcare_label)
        _load(net.G, sd, src, f"the pix2pixHD {arch['netG']} generator")
        sources, untrained = {"G": str(src)}, ["D"]
        if sd_D is not None:
            _load(net.D, pix2pixhd_discriminator(sd_D, net.D.state_dict(), discriminator), discriminator,
                  f"the {net.hparams.num_D}-scale pix2pixHD discriminator")
            sources["D"], untrained = str(discriminator), []
        return _write(net, out, {"from": sources, "untrained": untrained, "ndf": ndf, "dropout": arch["dropout"],
                                 "inferred": {k: v for k, v in arch.items() if k not in ("dropout_known", "dropout")}})
    arch = infer_generator(sd, src)
    options = _generator_options(arch, dropout, default=model == "pix2pix")  # the official defaults
    common = dict(input_nc=arch["input_nc"], output_nc=arch["output_nc"], fid=False, kid=False, ndf=ndf, **options)
    sources: dict[str, str] = {}
    if model == "cut":
        net = _cut(sd, src, arch, {**options, "ndf": ndf}, netD, n_layers_D)
        _load(net.G, sd, src, f"the CUT {options['netG']} generator")
        sources["G"], untrained = str(src), []
        for name, part, path in (("D", sd_D, discriminator), ("F", None, sampler)):
            if path is None:
                untrained.append(name)
            else:
                _load(getattr(net, name), part if part is not None else read_state_dict(path), path,
                      f"the {netD} discriminator" if name == "D" else "CUT's PatchNCE heads F")
                sources[name] = str(path)
    elif model == "pix2pix":
        net = Pix2Pix(**common, netD=netD, n_layers_D=n_layers_D)
        _load(net.G, sd, src, f"the {options['netG']} generator")
        sources["G"] = str(src)
        untrained = ["D"]
        if sd_D is not None:
            _load(net.D, sd_D, discriminator, f"the {netD} discriminator")
            sources["D"], untrained = str(discriminator), []
    else:
        # the file translates one way: the data's A has its input channels (AtoB) or its output channels (BtoA)
        net = CycleGAN(**{**common, "input_nc": arch["input_nc"] if direction == "AtoB" else arch["output_nc"],
                          "output_nc": arch["output_nc"] if direction == "AtoB" else arch["input_nc"]},
                       netD=netD, n_layers_D=n_layers_D, predict_direction=direction,
                       # the identity loss compares G_A(b) with b: only where A and B have the same channels
                       **({} if arch["input_nc"] == arch["output_nc"] else {"lambda_identity": 0.0}))
        first, second = ("G_A", "G_B") if direction == "AtoB" else ("G_B", "G_A")
        _load(getattr(net, first), sd, src, f"the {options['netG']} generator {first}")
        sources[first] = str(src)
        untrained = [second, "D_A", "D_B"]
        if other is not None:
            sd2 = without_instance_norm_stats(read_state_dict(other))
            _load(getattr(net, second), sd2, other, f"the {options['netG']} generator {second} (as {first}'s file)")
            sources[second] = str(other)
            untrained = ["D_A", "D_B"]
    info = {"from": sources, "untrained": untrained, "ndf": ndf, "dropout": not options["no_dropout"],
            "inferred": {k: v for k, v in arch.items() if k != "dropout_known"}}
    return _write(net, out, info)


def _write(net: Any, out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """``net`` as a checkpoint at ``out`` (written whole or not at all) that records ``info``."""
    import lightning

    hparams = {**dict(net.hparams), "_class_path": f"{type(net).__module__}.{type(net).__qualname__}"}
    hparams.pop("fid"), hparams.pop("kid")  # how it is scored is the run's choice (runtime options)
    ckpt = {"state_dict": net.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
            "pytorch-lightning_version": lightning.__version__, "pix2pix_lit": {KEY: info}}
    with staged_file(out) as tmp:
        torch.save(ckpt, tmp)
    return info


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pix2pix-lit import-official",
                                description="An official pix2pix/CycleGAN/CUT/pix2pixHD/SPADE network file (.pth) as a pix2pix-lit "
                                            "checkpoint for test, predict, export, serve and fine-tuning.")
    p.add_argument("src", type=Path, help="the official generator file (latest_net_G.pth, a pretrained model)")
    p.add_argument("out", type=Path, help="the checkpoint to write (.ckpt); never replaces a file")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"),
                   help="cyclegan: which way SRC translates (G_A: AtoB, G_B: BtoA)")
    p.add_argument("--other", type=Path, help="cyclegan: the other direction's generator file (latest_net_G_B.pth)")
    p.add_argument("--discriminator", type=Path, help="pix2pix, cut, pix2pixhd: latest_net_D.pth, to fine-tune with its D")
    p.add_argument("--sampler", type=Path, help="cut: latest_net_F.pth (PatchNCE's heads), to fine-tune with them")
    p.add_argument("--netD", default="basic", choices=("basic", "n_layers", "pixel"))
    p.add_argument("--n_layers_D", type=int, default=3)
    p.add_argument("--label_nc", type=int, help="pix2pixhd, spade: the label map's classes (pix2pixhd's default 35)")
    p.add_argument("--no_instance", action="store_true", help="pix2pixhd, spade: trained without instance edges")
    p.add_argument("--contain_dontcare_label", action="store_true",
                   help="pix2pixhd, spade: trained with a don't-care class")
    p.add_argument("--preset", choices=tuple(SPADE_PRESETS), help="spade: the dataset it was trained on (NVlabs/SPADE's "
                   "defaults for label_nc, don't-care, instance edges, crop_size, aspect_ratio, num_upsampling_layers)")
    p.add_argument("--crop_size", type=int, help="spade: the training crop's width")
    p.add_argument("--aspect_ratio", type=float, help="spade: width / height of the training crop")
    p.add_argument("--num_upsampling_layers", choices=("normal", "more", "most"), help="spade: as trained")
    p.add_argument("--encoder", type=Path, help="spade with a VAE: latest_net_E.pth")
    p.add_argument("--dropout", choices=("true", "false"),
                   help="a U-Net's dropout (no weights say it): the official pix2pix models have it (default true "
                        "for pix2pix, false for cyclegan, as the official options)")
    args = p.parse_args(argv)
    dropout = {"true": True, "false": False, None: None}[args.dropout]
    spade_options = dict(SPADE_PRESETS.get(args.preset, {}))
    spade_options.update({k: getattr(args, k) for k in ("crop_size", "aspect_ratio", "num_upsampling_layers")
                          if getattr(args, k) is not None})
    spade_options.update({k: True for k in ("no_instance", "contain_dontcare_label") if getattr(args, k)})
    if args.model != "spade" and (args.preset or args.crop_size or args.aspect_ratio or args.num_upsampling_layers):
        p.error("--preset, --crop_size, --aspect_ratio and --num_upsampling_layers are for --model spade")
    try:
        info = import_official(args.model, args.src, args.out, args.direction, args.other, args.discriminator,
                               dropout, args.netD, args.n_layers_D, args.sampler, args.label_nc, args.no_instance,
                               args.contain_dontcare_label, args.encoder, spade_options)
    except Pix2PixLitError as e:
        print(f"pix2pix-lit import-official: error: {e}", file=sys.stderr)
        return 2
    arch = info["inferred"]
    print(f"wrote {args.out}: {args.model} from {', '.join(f'{k} <- {v}' for k, v in info['from'].items())} "
          f"({arch['netG']}, ngf {arch['ngf']}, norm {arch['norm']}, {arch['input_nc']} -> {arch['output_nc']} "
          f"channels, dropout {'on' if info['dropout'] else 'off'})")
    if info["untrained"]:
        print(f"not in the files, freshly initialised: {', '.join(info['untrained'])} (fine-tuning trains them; "
              "test, predict and export use the imported generator)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
