"""Peak memory of one training step and of inference, per resolution, generator, precision and activation
checkpointing (the shipped configs' networks), as RESULTS.md's "memory at high resolution" tables.

    python experiments/memory.py tensors            # tensor bytes, every combination (fake tensors: no compute)
    python experiments/memory.py measured           # real steps on this CPU: seconds, process peak RSS, tensor bytes
    python experiments/memory.py check              # the byte counter against torch's MemTracker
    python experiments/memory.py predict [--workdir D]  # `pix2pix-lit predict` of a 2048x1024 label map, whole and tiled
    python experiments/memory.py one KIND WxH PRECISION CKPT MODE [--tile N]   # one real run, a JSON line
    python experiments/memory.py spade              # SPADE's Cityscapes step (512x256) at batch 1, 2 and 16

Two measures, and why:
- **tensor bytes** (the peak of live tensor storage during the step, each allocation rounded up to 512 bytes as
  CUDA's caching allocator does): what ``torch.cuda.max_memory_allocated`` reports for the same step on a GPU,
  without CUDA's context (~0.3-0.5 GB) and cuDNN's workspaces. Counted on fake tensors (``FakeTensorMode``: the
  shapes and dtypes of every operation, no arithmetic), so 2048x1024 in bf16 costs seconds even on a CPU without
  bf16 kernels. Training is measured on a second step (Adam's moments made by the first), at batch 1 and 2:
  ``fixed`` (parameters, buffers, Adam's moments), ``peak`` at batch 1, and what each further image adds
  (``extra_image``: activations grow with the batch, gradients and moments do not), so batch B needs about
  ``peak + (B - 1) x extra_image``.
- **process peak RSS** (a fresh process's peak resident memory during the step minus what it held before it):
  what this CPU's allocator really held, measured on real tensors where the step finishes in reasonable time here.

The step is the model's own: ``Pix2Pix.network_input``, ``G``, ``discriminator_loss`` (D's update first), then
``generator_loss`` with D frozen, as ``training_step`` runs them (Lightning's manual optimisation around them
adds no tensors). Inference is ``Pix2Pix.generate`` (or its tiled ``predict_step`` with ``--tile``).

torch's own ``torch.distributed._tools.mem_tracker.MemTracker`` measures the same peak but refuses a module called
twice in one step (our D sees real and fake pairs), so the counter here is a small dispatch mode; ``check``
compares the two on a step MemTracker accepts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import weakref
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import yaml
from measure import cpu_report, table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

REPO = Path(__file__).resolve().parents[1]
SIZES = ["256x256", "512x256", "1024x512", "2048x1024"]
PRECISIONS = ["32", "bf16-mixed"]
MiB = 2**20


def _model_args(config: str, **changes) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / config).read_text())
    args = dict(cfg["model"]["init_args"])
    data = cfg["data"]["init_args"]
    if data.get("label_nc"):
        args.update(label_nc=data["label_nc"], no_instance=data.get("no_instance", True))
    for key in ("init_global_from", "niter_fix_global"):  # a whole G trained, from random weights
        args.pop(key, None)
    args.update(fid=False, kid=False, **changes)
    return args


# the shipped configs' networks: pix2pix's U-Net and ResNet (RGB maps), pix2pixHD's global and local generators on
# Cityscapes label maps (35 labels + instance edges = 36 input channels) with their multi-scale discriminators
KINDS = {
    "unet": lambda: _model_args("maps.yaml"),
    "resnet": lambda: _model_args("maps.yaml", netG="resnet_9blocks", norm="instance", no_dropout=True),
    "global": lambda: _model_args("pix2pixhd/cityscapes_1024x512.yaml"),
    "local": lambda: _model_args("pix2pixhd/cityscapes_2048x1024.yaml"),
}


class PeakTensorBytes(TorchDispatchMode):
    """Live tensor storage while active (plus the tensors given), and its peak; each storage counted once, rounded
    up to 512 bytes, and subtracted when Python frees it."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__()
        self._seen = WeakIdKeyDictionary()
        self.live = self.peak = 0
        for t in tensors:
            self.add(t)

    def add(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        n = -(-storage.nbytes() // 512) * 512
        self._seen[storage] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, n)

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.add(t)
        return out


def build(kind: str, checkpointing: bool):
    """The model of ``kind`` without its evaluation metrics (not part of a step; their Inception would be built
    on fake tensors too)."""
    from pix2pix_lit.models import SPADE, Pix2Pix

    if kind == "spade":  # configs/spade/cityscapes.yaml; one process: its synchronised batch norms are plain ones
        from pix2pix_lit.nets.norm import plain_batch_norms

        with mock.patch("pix2pix_lit.models.evaluator.ImageQualityMetrics", lambda *a, **k: nn.Module()):
            model = SPADE(**_model_args("spade/cityscapes.yaml", no_vgg_loss=True))
        plain_batch_norms(model.G)
        return model
    args = KINDS[kind]()
    if checkpointing:
        args["checkpoint_activations"] = True
    with mock.patch("pix2pix_lit.models.evaluator.ImageQualityMetrics", lambda *a, **k: nn.Module()):
        return Pix2Pix(**args)


def batch_for(model, w: int, h: int, n: int = 1) -> dict:
    hp = model.hparams
    if hp.get("label_nc"):
        return {"source": torch.randint(0, hp.label_nc, (n, 1, h, w)), "edges": torch.zeros(n, 1, h, w),
                "target": torch.rand(n, 3, h, w) * 2 - 1}
    return {"source": torch.rand(n, hp.input_nc, h, w) * 2 - 1, "target": torch.rand(n, 3, h, w) * 2 - 1}


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()


def _trainable(module: nn.Module, on: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(on)


def train_step(model, batch, opt_g, opt_d, precision: str) -> None:
    """One step as ``Pix2Pix.training_step`` runs it (Lightning's toggling = the other network frozen)."""
    with autocast(precision):
        source, target = model.network_input(batch), batch["target"]
        fake = model.G(source)
        _trainable(model.G, False)
        loss_D, _ = model.discriminator_loss(source, target, fake)
    loss_D.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    _trainable(model.G, True)
    _trainable(model.D, False)
    with autocast(precision):
        loss_G, _ = model.generator_loss(source, target, fake)
    loss_G.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    _trainable(model.D, True)


def spade_train_step(model, batch, opt_g, opt_d, precision: str) -> None:
    """One step as ``SPADE.training_step`` runs it: G's update (D frozen), then D's on a fake of the updated G."""
    with autocast(precision):
        labels, real = model.network_input(batch), batch["target"]
        _trainable(model.D, False)
        loss_G, _ = model.generator_loss(labels, real, model.G(labels))
    loss_G.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    _trainable(model.D, True)
    _trainable(model.G, False)
    with autocast(precision):
        with torch.no_grad():
            fake = model.G(labels)
        loss_D, _ = model.discriminator_loss(labels, real, fake)
    loss_D.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    _trainable(model.G, True)


def infer(model, batch, precision: str, tile: int = 0) -> torch.Tensor:
    with autocast(precision):
        if tile:
            model.runner.tile = tile
            return model.predict_step({**batch, "name": ["x"]}, 0)["fake"]
        return model.generate(model.network_input(batch))


def tensor_bytes(kind: str, size: str, precision: str, checkpointing: bool, mode: str, tile: int = 0,
                 fake: bool = True) -> dict:
    """Peak tensor bytes of a steady-state step (training: after a first step has made Adam's moments, whose
    allocation next to the gradients would otherwise be the peak of small models) at batch 1 and batch 2."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    w, h = map(int, size.split("x"))
    with FakeTensorMode() if fake else nullcontext():
        model = build(kind, checkpointing)
        opts = (model.adam(model.G.parameters()), model.adam(model.D.parameters())) if mode == "train" else ()
        counter = PeakTensorBytes(*model.parameters(), *model.buffers())

        def step(batch_size: int) -> int:
            batch = batch_for(model, w, h, batch_size)
            counter.peak = counter.live
            if mode == "train":
                (spade_train_step if kind == "spade" else train_step)(model, batch, *opts, precision)
            else:
                with torch.no_grad():
                    infer(model, batch, precision, tile)
            return counter.peak

        with counter:
            if mode == "train":
                step(1)
            fixed = counter.live  # parameters, buffers (and Adam's moments)
            peak = step(1)
            extra = step(2) - peak
    return {"kind": kind, "size": size, "precision": precision, "checkpointing": checkpointing, "mode": mode,
            "tile": tile, "params_M": round(sum(p.numel() for p in model.G.parameters()) / 1e6, 1),
            "fixed_MiB": round(fixed / MiB), "peak_MiB": round(peak / MiB), "extra_image_MiB": round(extra / MiB)}


def combinations(modes=("train", "infer")):
    for mode in modes:
        for kind in KINDS:
            for size in SIZES:
                for precision in PRECISIONS:
                    for ckpt in ((False, True) if kind != "unet" and mode == "train" else (False,)):
                        yield kind, size, precision, ckpt, mode


def _proc_status(field: str) -> int:
    """A memory line of /proc/self/status, in bytes."""
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def one(kind: str, size: str, precision: str, checkpointing: bool, mode: str, tile: int = 0) -> dict:
    """A real run in this process: seconds and the process's peak RSS during the (second, for training) step above
    what it held before it (Linux: ``/proc/self/clear_refs`` resets the peak, ``VmHWM`` reads it)."""
    w, h = map(int, size.split("x"))
    torch.manual_seed(0)
    model = build(kind, checkpointing)
    opts = (model.adam(model.G.parameters()), model.adam(model.D.parameters())) if mode == "train" else ()
    batch = batch_for(model, w, h)
    if mode == "train":
        train_step(model, batch, *opts, precision)  # makes Adam's moments
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_before = _proc_status("VmRSS")
    moments = [t for opt in opts for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]
    counter = PeakTensorBytes(*model.parameters(), *model.buffers(), *batch.values(), *moments)
    t = time.perf_counter()
    with counter:
        if mode == "train":
            train_step(model, batch, *opts, precision)
        else:
            with torch.no_grad():
                infer(model, batch, precision, tile)
    seconds = time.perf_counter() - t
    rss_peak = _proc_status("VmHWM")
    return {"kind": kind, "size": size, "precision": precision, "checkpointing": checkpointing, "mode": mode,
            "tile": tile, "seconds": round(seconds, 1), "rss_before_MiB": round(rss_before / MiB),
            "rss_peak_MiB": round(rss_peak / MiB), "rss_step_MiB": round((rss_peak - rss_before) / MiB),
            "tensor_peak_MiB": round(counter.peak / MiB)}


# real runs that finish here in minutes (fp32: ~0.1 TFLOPS on 2 AVX2 cores; bf16 without kernels is ~50x slower)
MEASURED = [
    ("unet", "256x256", "32", False, "train"), ("resnet", "256x256", "32", False, "train"),
    ("resnet", "256x256", "32", True, "train"), ("global", "1024x512", "32", False, "train"),
    ("global", "1024x512", "32", True, "train"), ("local", "2048x1024", "32", False, "infer"),
    ("global", "1024x512", "32", False, "infer"), ("local", "2048x1024", "32", False, "infer", 512),
    ("unet", "256x256", "bf16-mixed", False, "infer"),
]


def check() -> None:
    """The counter against torch's MemTracker where MemTracker works (each module called once: G's forward and
    backward on real tensors)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    for kind, size in (("resnet", "256x256"), ("global", "512x256")):
        w, h = map(int, size.split("x"))
        model = build(kind, False)
        x = model.network_input(batch_for(model, w, h))
        tracker = MemTracker()
        tracker.track_external(model.G, x)
        with tracker:
            model.G(x).mean().backward()
        theirs = sum(v for k, v in tracker.get_tracker_snapshot("peak")[torch.device("cpu")].items() if k == "Total")
        model.G.zero_grad(set_to_none=True)
        counter = PeakTensorBytes(*model.G.parameters(), *model.G.buffers(), x)
        with counter:
            model.G(x).mean().backward()
        print(f"{kind} {size}: G forward+backward peak, MemTracker {theirs / MiB:.1f} MiB, "
              f"this counter {counter.peak / MiB:.1f} MiB")


def predict_full_resolution(work: Path) -> None:
    """The command line as a user runs it: a checkpoint of configs/pix2pixhd/cityscapes_2048x1024.yaml's networks
    (local generator, ngf 32, 3-scale D; one training step on the built-in label maps at 128, 5 classes instead of
    Cityscapes' 35: the first layer is smaller, the rest the same), then ``predict`` of one 2048x1024 label map,
    whole and in 512 tiles; wall time and the process's peak RSS (``/usr/bin/time -v``)."""
    import numpy as np
    from PIL import Image

    common = ["-c", str(REPO / "configs" / "pix2pixhd" / "quickstart.yaml"), "--data.root", str(work / "labels128"),
              "--data.image_size", "128", "--data.load_size", "128", "--data.crop_size", "128", "--data.num_train", "4",
              "--data.num_val", "1", "--data.num_test", "1", "--trainer.default_root_dir", str(work / "run"),
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.precision", "32",
              "--model.ngf", "32", "--model.ndf", "64", "--model.num_D", "3", "--model.init_global_from", "null",
              "--model.niter_fix_global", "0", "--model.fid", "false", "--model.kid", "false",
              "--image_grid.every_n_epochs", "0"]
    cli = [sys.executable, "-m", "pix2pix_lit"]
    subprocess.run([*cli, "fit", *common, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                    "--trainer.num_sanity_val_steps", "0"], check=True, capture_output=True)
    big = work / "big"
    big.mkdir(parents=True, exist_ok=True)
    ids = Image.open(work / "labels128" / "test" / "labels" / "00000.png")
    ids.resize((2048, 1024), Image.Resampling.NEAREST).save(big / "scene.png")
    print("| predict | input | seconds | peak RSS (MiB) | output |\n|---|---|---|---|---|")
    for tile in (0, 512):
        out = work / f"pred-tile{tile}"
        cmd = ["/usr/bin/time", "-v", *cli, "predict", *common, "--ckpt_path", str(work / "run/checkpoints/last.ckpt"),
               "--data.predict_dir", str(big), "--model.predict_tile", str(tile), "--predict_writer.output_dir", str(out)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        rss = int(next(ln.split(":")[1] for ln in proc.stderr.splitlines() if "Maximum resident set size" in ln))
        size = Image.open(out / "scene.png").size
        assert size == (2048, 1024), size
        np.asarray(Image.open(out / "scene.png"))  # decodes
        how = "whole image" if not tile else f"model.predict_tile {tile} (overlap {tile // 4})"
        print(f"| {how} | 2048x1024 label map | {seconds:.0f} (with start-up) | {rss / 1024:.0f} | {size[0]}x{size[1]} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["tensors", "measured", "check", "predict", "one", "spade"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--tile", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/pix2pix-lit-memory")
    a = parser.parse_args()
    if a.part == "one":
        kind, size, precision, ckpt, mode = a.args
        print(json.dumps(one(kind, size, precision, ckpt == "ckpt", mode, a.tile)))
        return
    print(f"CPU: {cpu_report()}; {torch.get_num_threads()} threads")
    if a.part == "check":
        check()
    elif a.part == "spade":
        rows = [tensor_bytes("spade", "512x256", p, False, "train") for p in PRECISIONS]
        for r in rows:
            r["batch16_MiB"] = r["peak_MiB"] + 15 * r["extra_image_MiB"]
        print(table(rows, ["kind", "params_M", "size", "precision", "fixed_MiB", "peak_MiB", "extra_image_MiB",
                           "batch16_MiB"]))
    elif a.part == "predict":
        predict_full_resolution(Path(a.workdir))
    elif a.part == "tensors":
        rows = [tensor_bytes(*c) for c in combinations()]
        for mode in ("train", "infer"):
            print(f"\n{mode}:")
            print(table([r for r in rows if r["mode"] == mode],
                        ["kind", "params_M", "size", "precision", "checkpointing", "fixed_MiB", "peak_MiB",
                         "extra_image_MiB"]))
        print("\npredict of one 2048x1024 label map with model.predict_tile (local generator):")
        print(table([tensor_bytes("local", "2048x1024", p, False, "infer", tile) for p in PRECISIONS
                     for tile in (0, 1024, 512)], ["kind", "size", "precision", "tile", "peak_MiB"]))
    else:
        rows = []
        for c in MEASURED:
            cmd = [sys.executable, __file__, "one", c[0], c[1], c[2], "ckpt" if c[3] else "-", c[4]]
            if len(c) > 5:
                cmd += ["--tile", str(c[5])]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        print(table(rows, ["kind", "size", "precision", "checkpointing", "mode", "tile", "seconds", "rss_step_MiB",
                           "rss_peak_MiB", "tensor_peak_MiB"]))


if __name__ == "__main__":
    main()
