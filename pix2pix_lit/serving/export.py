"""``pix2pix-lit export``: a checkpoint's generator as a TorchScript or ONNX file that runs without this package.

The file takes ``source`` (N, C_in, H, W) float32 in [-1, 1] and returns ``output`` (N, C_out, H, W) in
[-1, 1]; batch, height and width are dynamic (H and W multiples of the generator's size multiple). A model of
label maps takes ``source`` (N, 1, H, W) float32 class ids instead (255: don't care) and one-hot encodes them,
with the class boundaries as its edge channel, inside the file (the contract's ``labels`` lists the classes). Its
input contract (channels, value range, size multiple, direction, inference mode, a digest of the
training config, the memory a pixel costs) is written into the file: ``pix2pix_lit.json`` among TorchScript's
extra files, a ``pix2pix_lit`` metadata property in ONNX. Before the file is put in place, the command checks
that it gives the PyTorch generator's outputs (max abs difference <= 1e-4, fp32) at three input sizes, one
of them an odd multiple of the stated size multiple at the smallest side allowed; a failed check leaves no file.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from pix2pix_lit.checkpoints import EMA_SUFFIX
from pix2pix_lit.data.labels import DONTCARE_ID, instance_edges, label_classes
from pix2pix_lit.errors import ConfigError, Pix2PixLitError
from pix2pix_lit.modes import DIRECTIONS, INFERENCE_MODES, SERVING_INFERENCE_MODE, Direction, InferenceMode
from pix2pix_lit.nets.norm import has_active_dropout, replace_batch_norms

FORMATS = ("torchscript", "onnx")
METADATA_KEY = "pix2pix_lit"
TOLERANCE = 1e-4


class ExportError(Pix2PixLitError):
    """The generator cannot be exported as asked, or the exported file does not match it."""


class LabelMapInput(nn.Module):
    """(N, 1, H, W) class ids (float) as a label-map network's input: one channel per class (+ don't-care, id
    255), + the boundaries between classes as the edge channel (``edges``), as ``predict`` gives label maps
    without instance maps. Comparisons only, so it exports to TorchScript and ONNX as part of the graph."""

    def __init__(self, label_nc: int, contain_dontcare_label: bool, edges: bool) -> None:
        super().__init__()
        ids = input_ids(label_nc, contain_dontcare_label)
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.float32).view(1, -1, 1, 1))
        self.edges = edges

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        x = (source == self.ids).float()
        return torch.cat([x, instance_edges(source, torch.float32)], 1) if self.edges else x


def input_ids(label_nc: int, contain_dontcare_label: bool) -> list[int]:
    """The ids a label-map file takes, in the order of its one-hot channels: the classes, then don't-care."""
    return list(range(label_nc)) + [DONTCARE_ID] * int(contain_dontcare_label)


class ExportableGenerator(nn.Module):
    """A frozen copy of G in one inference mode, in fp32 and contiguous memory, as ``source -> output``
    (``encode``: what turns the source into G's input, e.g. :class:`LabelMapInput`)."""

    def __init__(self, G: nn.Module, inference_mode: InferenceMode, encode: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.encode = encode
        G = copy.deepcopy(G).float().to(memory_format=torch.contiguous_format).eval()
        if inference_mode == "paper":
            if has_active_dropout(G):
                raise ExportError(
                    "inference_mode=paper keeps dropout on, so the exported generator's outputs would be random "
                    "(nothing to check or serve reproducibly); export with --inference_mode eval, or train with "
                    "model.no_dropout true"
                )
            replace_batch_norms(G)  # the paper mode's per-image statistics, as modules the exporters trace
        self.G = G.requires_grad_(False)
        # the ONNX exporter reads the top module's flag: left in train mode, batch norm is exported with
        # batch statistics even though G itself is in eval mode
        self.eval()

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.G(self.encode(source) if self.encode is not None else source)


def config_digest(hparams: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(hparams, sort_keys=True, default=str).encode()).hexdigest()


def check_sizes(size_multiple: int, min_size: int = 1) -> list[tuple[int, int, int]]:
    """(batch, height, width) shapes to check the exported file at: square, wide with a batch of 2, and the
    smallest sides the contract allows that are odd multiples of the size multiple (what a wrong multiple or
    minimum in the contract would fail at)."""
    side = size_multiple * max(1, math.ceil(max(64, min_size) / size_multiple))
    odd = math.ceil(min_size / size_multiple)
    odd += 1 - odd % 2  # the smallest odd multiple not below the minimum
    return [(1, side, side), (2, side, 2 * side), (1, odd * size_multiple, (odd + 2) * size_multiple)]


def check_inputs(shapes: list[tuple[int, int, int]], input_nc: int, labels: Optional[dict[str, Any]] = None,
                 ) -> list[torch.Tensor]:
    """Seeded inputs of ``shapes``: images in [-1, 1], or for a label-map model class ids in blocks of 4x4
    pixels (regions and boundaries, as painted maps have), don't-care among them."""
    gen = torch.Generator().manual_seed(0)
    if not labels:
        return [torch.rand(n, input_nc, h, w, generator=gen) * 2 - 1 for n, h, w in shapes]
    ids = torch.tensor(labels["input_ids"], dtype=torch.float32)
    inputs = []
    for n, h, w in shapes:
        blocks = ids[torch.randint(len(ids), (n, 1, -(-h // 4), -(-w // 4)), generator=gen)]
        inputs.append(blocks.repeat_interleave(4, -2).repeat_interleave(4, -1)[..., :h, :w].contiguous())
    return inputs


def bytes_per_pixel(net: nn.Module, input_nc: int, size_multiple: int, min_size: int = 1) -> int:
    """What one input pixel costs ``net`` in memory at inference: the bytes of every layer's output (an upper
    bound of what is alive at once), plus input and output, per pixel, measured at a 64-pixel side or more.

    It scales with the area (convolutions), so the serving limits are derived from it (``serve``)."""
    side = size_multiple * max(1, math.ceil(max(64, min_size) / size_multiple))
    total = 0

    def count(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.inference_mode():
            x = torch.zeros(1, input_nc, side, side)
            total += x.numel() * x.element_size()
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return int(math.ceil(total / (side * side)))


def _write_torchscript(net: nn.Module, example: torch.Tensor, path: Path, contract: dict[str, Any]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace warnings about Python values: none depend on the input here
        traced = torch.jit.trace(net, example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(contract)})


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path, contract: dict[str, Any]) -> None:
    import onnx

    dims = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter (dynamo=False): the dynamo exporter specialises height and width to
        # the example's size for these generators, and the file must take any multiple of the size multiple.
        torch.onnx.export(
            net, (example,), str(path), input_names=["source"], output_names=["output"],
            dynamic_axes={"source": dims, "output": dims}, opset_version=17, dynamo=False,
        )
    model = onnx.load(str(path))
    prop = model.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, json.dumps(contract)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def load_exported(path: Path) -> tuple[Any, dict[str, Any]]:
    """A callable ``numpy/torch NCHW float32 -> numpy`` for an exported file, and its contract."""
    path = Path(path)
    if path.suffix == ".onnx":
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        contract = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])

        def run_onnx(x):
            x = x.numpy() if isinstance(x, torch.Tensor) else x
            return session.run(["output"], {"source": np.ascontiguousarray(x, dtype=np.float32)})[0]

        return run_onnx, contract
    files = {f"{METADATA_KEY}.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    contract = json.loads(files[f"{METADATA_KEY}.json"])

    def run_torchscript(x):
        with torch.no_grad():
            return module(torch.as_tensor(x, dtype=torch.float32)).numpy()

    return run_torchscript, contract


def export_generator(
    G: nn.Module, path: Path, fmt: str, inference_mode: InferenceMode, input_nc: int, output_nc: int,
    size_multiple: int, extra: Optional[dict[str, Any]] = None, min_size: Optional[int] = None,
) -> dict[str, Any]:
    """Export ``G`` to ``path`` (see module doc); returns the contract with the measured differences."""
    if inference_mode not in INFERENCE_MODES:
        raise ConfigError(f"--inference_mode {inference_mode!r} is not known; choose one of: {', '.join(INFERENCE_MODES)}")
    net = ExportableGenerator(G, inference_mode)
    min_size = min_size or getattr(G, "min_size", size_multiple)
    contract = make_contract(input_nc, output_nc, size_multiple, inference_mode, min_size=min_size,
                             bytes_per_pixel=bytes_per_pixel(net, input_nc, size_multiple, min_size), **(extra or {}))
    return write_checked(net, path, fmt, contract)


def write_checked(net: ExportableGenerator, path: Path, fmt: str, contract: dict[str, Any]) -> dict[str, Any]:
    """Write ``net`` as ``fmt`` to ``path`` once the written file gives its outputs at two input sizes."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not known; choose one of: {', '.join(FORMATS)}")
    contract = {"format": fmt, **contract}
    input_nc, size_multiple = contract["input"]["channels"], contract["input"]["size_multiple"]
    shapes = check_sizes(size_multiple, contract["input"].get("min_size", size_multiple))
    inputs = check_inputs(shapes, input_nc, contract.get("labels"))
    # not atomic.staged_file: the file is written, then loaded and checked, and each of the three steps (can it be
    # written there, the check, the rename) has its own one-line error
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb"):  # can the file be written there? (before the export's work)
            pass
    except OSError as e:
        raise ExportError(f"cannot write {path} ({e.strerror or e}); choose a writable place with --output") from None
    try:
        try:
            (_write_onnx if fmt == "onnx" else _write_torchscript)(net, inputs[0], tmp, contract)
        except OSError as e:  # the disk filled up while writing, ...
            raise ExportError(f"cannot write {path} ({e.strerror or e}); nothing was written") from None
        run, _ = load_exported(tmp)
        diffs = []
        with torch.no_grad():
            for x in inputs:
                ref = net(x).numpy()
                try:
                    out = run(x)
                except Exception as e:  # the exported graph cannot take a size the contract promises
                    raise ExportError(f"the exported generator fails on input {tuple(x.shape)}, a size the contract "
                                      f"allows ({type(e).__name__}); nothing was written") from None
                if out.shape != ref.shape:
                    raise ExportError(f"the exported generator gives shape {out.shape} for input {tuple(x.shape)}, "
                                      f"PyTorch {ref.shape}")
                diffs.append(float(abs(out - ref).max()))
        if max(diffs) > TOLERANCE:
            raise ExportError(
                f"the exported {fmt} generator differs from PyTorch by up to {max(diffs):.2e} (> {TOLERANCE:g}) at "
                f"input shapes {[tuple(x.shape) for x in inputs]}; nothing was written"
            )
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise ExportError(f"cannot write {path} ({e.strerror or e}); choose a writable place with --output") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return {**contract, "parity": {"shapes": [list(s) for s in shapes], "max_abs_diff": diffs}}


def generator_from_checkpoint(
    ckpt_path: str, inference_mode: InferenceMode = SERVING_INFERENCE_MODE, use_ema_for_eval: bool = True,
    direction: Direction = "AtoB",
) -> tuple[ExportableGenerator, dict[str, Any]]:
    """The frozen generator of a pix2pix-lit checkpoint in one inference mode, and its input contract.

    The EMA generator when the checkpoint has one (and ``use_ema_for_eval``, the model option of that name), else
    the generator. ``direction`` picks the generator of a two-way model (CycleGAN: AtoB = G_A, BtoA = G_B); pix2pix has one.
    """
    from pix2pix_lit.checkpoints import load_checkpoint
    from pix2pix_lit.models import DEFAULT_MODEL, ImageTranslationModel, resolve_model_class

    if direction not in DIRECTIONS:
        raise ExportError(f"--direction {direction!r} is not known; choose one of: {', '.join(DIRECTIONS)}")
    ckpt = load_checkpoint(ckpt_path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    model_class = resolve_model_class(hparams.get("_class_path", DEFAULT_MODEL))  # older checkpoints: pix2pix
    if not issubclass(model_class, ImageTranslationModel):
        raise ExportError(f"checkpoint {Path(ckpt_path).name} holds a {model_class.__name__}, which scores photos "
                          "(pix2pix-lit eval --segmenter); export and serve take generators")
    arch = {k: v for k, v in hparams.items() if k not in model_class.runtime_options and not k.startswith("_")}
    try:
        model = model_class(**arch, fid=False, kid=False, use_ema_for_eval=use_ema_for_eval)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0]
        raise ExportError(f"checkpoint {ckpt_path} is not a generator this version can build ({reason[:160]})") from None
    untrained = set((ckpt.get("pix2pix_lit") or {}).get("imported", {}).get("untrained", ()))
    if model.generator_for(direction) in untrained:
        raise ExportError(f"checkpoint {Path(ckpt_path).name}: {model.generator_for(direction)} ({direction}) was not "
                          "in the official files it was imported from; export the direction that was imported")
    extra = model.export_extra_inputs()
    if extra:
        raise ExportError(f"checkpoint {Path(ckpt_path).name}: its generator takes more than the source ("
                          + "; ".join(f"{k}: {v}" for k, v in extra.items())
                          + "); export and serve take generators of the source alone: run it with `pix2pix-lit predict`")
    data = ckpt.get("datamodule_hyper_parameters") or {}
    two_way = len(model.generator_names) > 1
    if not two_way and direction != DIRECTIONS[0]:
        raise ExportError(
            f"checkpoint {Path(ckpt_path).name} holds a one-way {model_class.__name__} generator (it translates the "
            f"data's {data.get('direction', 'AtoB')} as trained); --direction {direction} is for two-way models "
            "(CycleGAN): leave it out"
        )
    in_nc, out_nc = model.hparams.input_nc, model.hparams.output_nc
    if two_way and direction == "BtoA":
        in_nc, out_nc = out_nc, in_nc
    labels, encode = None, None
    if hparams.get("label_nc"):
        labels = label_contract(hparams, data)
        encode = LabelMapInput(hparams["label_nc"], labels["contain_dontcare_label"], labels["edges"] is not None)
        in_nc = 1
    net = ExportableGenerator(model.inference_net(direction), inference_mode, encode)
    contract = make_contract(
        in_nc, out_nc, model.size_multiple, inference_mode, min_size=model.min_size,
        bytes_per_pixel=bytes_per_pixel(net, in_nc, model.size_multiple, model.min_size),
        model=model_class.__name__, netG=hparams.get("netG"), generator=model.inference_net_name(direction),
        # one meaning for every model: the way the file translates between the training data's domains A and B
        # (a one-way model: the data's direction as trained; a two-way model: the generator chosen)
        direction=direction if two_way else data.get("direction", DIRECTIONS[0]),
        checkpoint=Path(ckpt_path).name,
        global_step=ckpt.get("global_step"), config_sha256=config_digest(hparams),
        data={k: data.get(k) for k in ("preprocess", "load_size", "crop_size", "aspect_ratio") if k in data},
    )
    if labels:
        contract["labels"] = labels
        contract["input"].update(values="class ids", value_range=[0, max(labels["input_ids"])])
    return net, contract


def label_contract(hparams: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """What a caller of a label-map generator must know: the classes (id as the dataset's maps store it, name,
    colour), the ids the file's input takes, and how the edge channel is made."""
    label_nc, dontcare = int(hparams["label_nc"]), bool(hparams.get("contain_dontcare_label"))
    layout = data.get("layout")
    return {
        "label_nc": label_nc, "contain_dontcare_label": dontcare, "layout": layout,
        # the stored maps' ids: ADE20K's are the class + 1 (0: unlabelled); the file takes class ids, 255 don't care
        "stored_ids": "ade20k" if layout == "ade20k" else "class ids",
        "input_ids": input_ids(label_nc, dontcare),
        "edges": None if hparams.get("no_instance") else "class boundaries (trained on instance boundaries)",
        "classes": label_classes(label_nc, dontcare, layout, data.get("class_names")),
    }


def make_contract(input_nc: int, output_nc: int, size_multiple: int, inference_mode: str, min_size: Optional[int] = None,
                  bytes_per_pixel: Optional[int] = None, **extra: Any) -> dict[str, Any]:
    """What a caller of the exported generator must know: tensor layout, channels, range, sizes (sides multiples
    of ``size_multiple``, at least ``min_size``), memory per pixel, provenance."""
    contract = {
        "input": {"name": "source", "layout": "NCHW", "dtype": "float32", "channels": input_nc, "value_range": [-1, 1],
                  "size_multiple": size_multiple, "min_size": min_size or size_multiple},
        "output": {"name": "output", "layout": "NCHW", "dtype": "float32", "channels": output_nc, "value_range": [-1, 1]},
        "inference_mode": inference_mode,
        **extra,
    }
    if bytes_per_pixel is not None:
        contract["memory"] = {"bytes_per_pixel": int(bytes_per_pixel)}
    return contract


def export_checkpoint(
    ckpt_path: str, fmt: str, output: Optional[str] = None, inference_mode: InferenceMode = SERVING_INFERENCE_MODE,
    use_ema_for_eval: bool = True, direction: Direction = "AtoB",
) -> tuple[Path, dict[str, Any]]:
    """Export the generator of a pix2pix-lit checkpoint; returns the file written and its contract."""
    net, contract = generator_from_checkpoint(ckpt_path, inference_mode, use_ema_for_eval, direction)
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    which = contract["generator"].removesuffix(EMA_SUFFIX)
    path = Path(output) if output else Path(ckpt_path).with_name(f"{Path(ckpt_path).stem}.{which}.{inference_mode}{suffix}")
    return path, write_checked(net, path, fmt, contract)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pix2pix-lit export",
        description="Write a checkpoint's generator as TorchScript or ONNX (input contract in the file), checked "
        "against PyTorch at two input sizes.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a pix2pix-lit checkpoint (last.ckpt, best-*.ckpt, ...)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", default=None, help="default: beside the checkpoint, <stem>.<generator>.<mode>.onnx "
                        "or .torchscript.pt (generator: G, G_A or G_B)")
    parser.add_argument("--inference_mode", default=SERVING_INFERENCE_MODE, choices=INFERENCE_MODES,
                        help="eval (default: deterministic, running statistics) or paper (per-image statistics; "
                        "only for generators without dropout)")
    parser.add_argument("--no_ema", action="store_true", help="export G even when the checkpoint has an EMA generator")
    parser.add_argument("--direction", default=DIRECTIONS[0], choices=DIRECTIONS,
                        help="for two-way models (CycleGAN): AtoB exports G_A, BtoA G_B")
    args = parser.parse_args(argv)
    try:
        path, contract = export_checkpoint(args.ckpt_path, args.format, args.output, args.inference_mode,
                                           not args.no_ema, args.direction)
    except Pix2PixLitError as e:
        print(f"pix2pix-lit export: error: {e}", file=sys.stderr)
        return e.exit_code
    diffs = ", ".join(f"{'x'.join(map(str, s))}: {d:.1e}" for s, d in
                      zip(contract["parity"]["shapes"], contract["parity"]["max_abs_diff"]))
    takes = (f"class ids of {contract['labels']['label_nc']} classes" if contract.get("labels") else
             f"{contract['input']['channels']} channels")
    print(f"wrote {path} ({args.format}, {contract['generator']}, {args.inference_mode} mode, input {takes}, "
          f"sides multiples of {contract['input']['size_multiple']}); max |exported - PyTorch| {diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
