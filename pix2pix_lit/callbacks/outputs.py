"""Files written by ``predict`` (output images) and ``test`` (metrics.json, per-image CSV)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from pix2pix_lit.callbacks.pages import link, write_page
from pix2pix_lit.clean_fid import PROTOCOL as CLEAN_FID_PROTOCOL
from pix2pix_lit.clean_fid import find_clean_fid_weights
from pix2pix_lit.data.io import save_image_atomic, to_pil, write_text_atomic
from pix2pix_lit.inception import weights_sha256
from pix2pix_lit.metrics import FID_FEATURES, find_inception_weights

log = logging.getLogger(__name__)


def _gather_objects(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


class PredictionWriter(BasePredictionWriter):
    """Write each prediction as an image with the input's name (and size) under ``output_dir``, and
    ``index.html`` listing them (``callbacks/pages.py``); with ``sources``, each input too (under ``sources/``,
    shown beside its output).

    Default folder: ``<run folder>/predictions``. Each file is written atomically.
    """

    def __init__(self, output_dir: Optional[str] = None, sources: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.sources = sources
        self.count = 0
        self.names: list[str] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.count, self.names = 0, []

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        out = self._dir(trainer)
        shown = pl_module.shown_source(batch) if self.sources and "source" in batch else None
        for i, (fake, name) in enumerate(zip(prediction["fake"], prediction["name"])):
            save_image_atomic(to_pil(fake.cpu()), out / name)
            if shown is not None:
                save_image_atomic(to_pil(shown[i].float().cpu()), out / "sources" / name)
            self.names.append(name)
            self.count += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = sorted(n for part in _gather_objects(self.names) for n in part)
        if trainer.is_global_zero:
            out = self._dir(trainer)
            images = ["source", "output"] if self.sources else ["output"]
            rows = [{"name": n, "output": link(out / n, out),
                     **({"source": link(out / "sources" / n, out)} if self.sources else {})} for n in names]
            write_page(out, f"predict: {len(rows)} images", rows, images, [],
                       {"checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None})
            log.info("wrote %d predicted image(s) to %s (index.html lists them)", self.count, out)


def evaluation_protocol(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """How the test numbers were made: split, preprocessing, inference mode, FID implementation."""
    h = pl_module.hparams
    out: dict[str, Any] = {}
    if "inference_mode" in h:  # a generator (a Segmenter is scored in eval mode)
        out.update({
            "inference_mode": h.get("inference_mode"),
            "inference_mode_means": {
                "paper": "official test.py default (no --eval): dropout on, per-image batch-norm statistics",
                "eval": "official --eval: dropout off, running batch-norm statistics",
            }.get(h.get("inference_mode")),
            "generator": getattr(pl_module, "inference_G_name", "G"),
        })
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "eval_transform"):
        t = dm.eval_transform
        out.update(split=getattr(dm, "test_split_used", None), preprocess=t.preprocess, load_size=t.load_size,
                   crop_size=t.crop_size, official_test_preprocessing=t.load_size == t.crop_size)
        val_split = dm.hparams.get("val_split")
        # the val split chose best-*.ckpt (and whatever was tuned on it): scores there are optimistic
        out["split_selected_checkpoint"] = out["split"] is not None and out["split"] == val_split
    evaluator = getattr(pl_module, "evaluator", None)  # the GANs' (the Segmenter scores no FID)
    if evaluator is not None and evaluator.needs_inception("test"):
        weights = find_inception_weights(h.get("inception_weights"))
        out["fid_implementation"] = FID_FEATURES
        out["fid_weights"] = {"file": weights.name, "sha256": weights_sha256(weights)}
        out["fid_resize"] = ("each image as 8-bit RGB, resized to 299x299 inside the network (torch-fidelity's "
                             "TF-1.x-compatible bilinear), as the official TF FID and torch-fidelity")
        out["fid_real_side"] = (f"stored statistics {Path(h['fid_real_stats']).name}" if h.get("fid_real_stats")
                                else "the real images of the same split")
    if evaluator is not None and evaluator.needs_clean_fid("test"):
        weights = find_clean_fid_weights(h.get("clean_fid_weights"))
        out["clean_fid"] = {"protocol": CLEAN_FID_PROTOCOL, "weights": weights.name, "weights_sha256": weights_sha256(weights),
                            "real_side": "the real images of the same split"}
    out["checkpoint_selection"] = checkpoint_selection(trainer, pl_module)
    from pix2pix_lit.models.segmenter import Segmenter

    scorer = evaluator.scorer if evaluator is not None else None  # a generator scored with model.segmenter
    if scorer is not None or isinstance(pl_module, Segmenter):
        about = scorer.about if scorer is not None else {"segmenter": type(pl_module).__name__, "arch": h.get("arch")}
        mapping = scorer.class_mapping if scorer is not None else h.get("class_mapping")
        out["segmentation"] = {**about, "class_mapping": mapping or "label ids as stored", "ignore_index": 255,
                               "resolution": "the evaluated label maps' (the data's crop_size)"}
    return out


def checkpoint_selection(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Which weights were scored: the best on a monitored score (and on which split it was chosen), the last,
    a periodic one, imported official weights, or the model in memory — papers differ on this and their numbers
    with them."""
    if not trainer.ckpt_path:
        if getattr(trainer, "global_step", 0) == 0:  # no checkpoint and no training in this process
            return {"kind": "untrained: no checkpoint given (--ckpt_path), the networks' initial weights"}
        return {"kind": "in memory: the model as the run left it, no checkpoint file"}
    name = Path(trainer.ckpt_path).name
    meta = dict(getattr(pl_module, "loaded_from", {}) or {})
    info: dict[str, Any] = {"file": name, "epoch": meta.get("epoch"), "global_step": meta.get("global_step")}
    if meta.get("imported"):
        return {**info, "kind": "imported: official weights (pix2pix-lit import-official), not trained here"}
    if name.startswith("best-"):
        monitor = getattr(trainer.checkpoint_callback, "monitor", None) or "val/fid"
        dm = trainer.datamodule
        split = dm.hparams.get("val_split") if dm is not None and hasattr(dm, "hparams") else None
        return {**info, "kind": "best", "chosen_by": monitor, "chosen_on_split": split}
    if name == "last.ckpt":
        return {**info, "kind": "last: the state at the end of training (or when the run stopped)"}
    return {**info, "kind": "periodic or renamed: a state during training"}


class TestReport(pl.Callback):
    """After ``test``: ``metrics.json`` (FID, KID, SSIM, PSNR over the split), ``per_image.csv`` and, with
    ``images`` (default), each image's source | output | target under ``images/`` and ``index.html`` showing them
    with their scores, sortable (``callbacks/pages.py``; what the official test writes).

    Written next to the tested checkpoint, or in ``output_dir`` if given (else the run folder).
    """

    def __init__(self, output_dir: Optional[str] = None, images: bool = True) -> None:
        self.output_dir = output_dir
        self.images = images
        self.rows: list[dict[str, Any]] = []
        self.written: list[Path] = []

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows, self.written = [], []

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        direction = outputs.get("direction")  # two-way models: which generator made the image
        rows = [{"name": name, "direction": direction} for name in outputs["name"]]
        if "target" in outputs:  # paired data: the true counterpart to compare with
            fake = (outputs["fake"].float().clamp(-1, 1) + 1) / 2
            target = (outputs["target"].float().clamp(-1, 1) + 1) / 2
            ssim = structural_similarity_index_measure(fake, target, data_range=1.0, reduction="none")
            psnr = peak_signal_noise_ratio(fake, target, data_range=1.0, dim=(1, 2, 3), reduction="none")
            l1 = (fake - target).abs().mean(dim=(1, 2, 3)) * 2  # on the [-1, 1] scale, as the L1 loss and val/l1
            for row, s, p, d in zip(rows, ssim.tolist(), psnr.tolist(), l1.tolist()):
                row.update(ssim=s, psnr=p, l1=d)
        if self.images and torch.is_tensor(outputs.get("fake")) and outputs["fake"].dim() == 4:
            self._save_images(trainer, pl_module, outputs, batch, rows)
        self.rows += rows

    def _save_images(self, trainer, pl_module, outputs, batch, rows) -> None:
        """source | output | target of each image under ``images/`` (``images/<direction>/`` for two-way models)."""
        out = self._dir(trainer)
        folder = out / "images" / (rows[0]["direction"] or "") if rows else out / "images"
        source = pl_module.shown_source(batch) if "source" in batch else batch.get("image")
        for i, row in enumerate(rows):
            stem = Path(row["name"]).with_suffix("").as_posix()
            shown = {"source": source[i] if source is not None else None, "output": outputs["fake"][i],
                     "target": outputs["target"][i] if "target" in outputs else None}
            for kind, image in shown.items():
                if image is not None:
                    path = folder / f"{stem}_{kind}.png"
                    save_image_atomic(to_pil(image.float().cpu()), path)
                    row[kind] = link(path, out)

    def _dir(self, trainer: pl.Trainer) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        if trainer.ckpt_path:
            return Path(trainer.ckpt_path).parent
        return Path(trainer.default_root_dir)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = [r for part in _gather_objects(self.rows) for r in part]
        if not trainer.is_global_zero:
            return
        out = self._dir(trainer)
        results = dict(getattr(pl_module, "test_results", {}))
        report = {
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "num_images": len(rows),
            "metrics": {k.split("/", 1)[-1]: v for k, v in results.items()},
            "protocol": evaluation_protocol(trainer, pl_module),
        }
        directions = sorted({r["direction"] for r in rows if r.get("direction")})
        if directions:  # a two-way model's numbers are per direction: each over its own images
            report["num_images_by_direction"] = {d: sum(r.get("direction") == d for r in rows) for d in directions}
        if getattr(pl_module, "test_per_class_iou", None):
            report["per_class_iou"] = pl_module.test_per_class_iou
        for logger in trainer.loggers:  # the W&B run's summary says the same of its test numbers
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update({"test/protocol": report["protocol"], "test/num_images": len(rows)})
        write_text_atomic(out / "metrics.json", json.dumps(report, indent=2) + "\n")
        if self.images and rows:
            kinds = [k for k in ("source", "output", "target") if any(k in r for r in rows)]
            scores = [k for k in ("l1", "ssim", "psnr") if any(r.get(k) is not None for r in rows)]
            shown = sorted(rows, key=lambda r: (r.get("direction") or "", r["name"]))
            summary = {"checkpoint": report["checkpoint"], "images": len(rows), **report["metrics"],
                       **{k: report["protocol"].get(k) for k in ("split", "inference_mode", "generator")
                          if report["protocol"].get(k) is not None}}
            write_page(out, f"test: {len(rows)} images", [{**r, "name": f"{r['direction']}/{r['name']}"
                       if r.get("direction") else r["name"]} for r in shown], kinds, scores, summary)
            self.written.append(out / "index.html")
        buf = io.StringIO()
        fields = [f for f in ("name", "direction", "ssim", "psnr", "l1") if any(r.get(f) is not None for r in rows)]
        writer = csv.DictWriter(buf, fieldnames=fields or ["name"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r.get("direction") or "", r["name"])))
        write_text_atomic(out / "per_image.csv", buf.getvalue())
        self.written = [out / "metrics.json", out / "per_image.csv", *self.written]
        log.info("test metrics written to %s", out / "metrics.json")
