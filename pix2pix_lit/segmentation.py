"""Segmentation scores of generated photos, as the label -> photo papers report them (the pix2pix paper's "FCN
score", the mIoU of pix2pixHD, SPADE, OASIS): a segmentation network runs on each generated photo and its
prediction is compared with the label map the photo was generated from.

The pieces: the network (:class:`SegmentationNet`: a torchvision segmentation model built with no downloaded
weights, taking our images in [-1, 1]), the class ids it is scored on (:func:`class_targets`: the don't-care id
and Cityscapes' 19 train ids), the scores (:class:`SegmentationScores`), what a scorer is (:class:`Scorer`,
:func:`check_scorer_spec`, ``torchvision:NAME`` with a local state dict: :func:`torchvision_scorer`; a Segmenter
checkpoint is read by ``pix2pix_lit.models.segmenter.load_scorer``, which builds the Segmenter: this module never
imports the models) and the folder scoring behind ``pix2pix-lit eval --labels`` (:func:`score_folder`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex

from pix2pix_lit.data.io import to_uint8
from pix2pix_lit.data.labels import (
    CITYSCAPES_TRAIN_CLASSES,
    CITYSCAPES_TRAIN_IDS,
    DONTCARE_ID,
    label_classes,
    read_ids,
    remembered_ids,
    to_class_ids,
)
from pix2pix_lit.errors import ConfigError, DataError, check_choice
from pix2pix_lit.precision import autocast_off

IGNORE_INDEX = DONTCARE_ID  # pixels with this id are left out of every score (and of the segmenter's loss)
# how a dataset's label ids become the classes a segmenter predicts: as they are, or Cityscapes' 34 label ids as its
# 19 train ids (the classes every Cityscapes score is over; the rest ignored)
ClassMapping = Literal["cityscapes_train_ids"]
CLASS_MAPPINGS: tuple[str, ...] = get_args(ClassMapping)
# the torchvision models a Segmenter trains (any torchvision segmentation model can score with its own weights)
TRAINED_ARCHS = ("deeplabv3_resnet50", "fcn_resnet50", "lraspp_mobilenet_v3_large")
# what torchvision's segmentation weights were trained on: images in [0, 1] normalised with these
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def num_classes_for(label_nc: int, mapping: Optional[str]) -> int:
    """The classes a segmenter predicts for label maps of ``label_nc`` classes under ``mapping``."""
    if mapping is None:
        return label_nc
    check_choice("class_mapping", mapping, CLASS_MAPPINGS)
    if label_nc < len(CITYSCAPES_TRAIN_IDS):
        raise ConfigError(f"class_mapping {mapping} maps Cityscapes' {len(CITYSCAPES_TRAIN_IDS)} label ids, but the "
                          f"data has label_nc={label_nc} classes; use it with Cityscapes label ids (label_nc 35)")
    return len(CITYSCAPES_TRAIN_CLASSES)


def class_names_for(num_classes: int, mapping: Optional[str], data: Optional[dict[str, Any]] = None) -> list[str]:
    """The names of a segmenter's classes: Cityscapes' train classes, or the data's (``data``: a data module's
    hyper-parameters: ``class_names``, or Cityscapes' for its layout), else ``class N``."""
    if mapping == "cityscapes_train_ids":
        return list(CITYSCAPES_TRAIN_CLASSES)
    data = data or {}
    return [c["name"] for c in label_classes(num_classes, False, data.get("layout"), data.get("class_names"))]


def map_classes(ids: torch.Tensor, mapping: Optional[str]) -> torch.Tensor:
    """Class ids (any integer tensor; 255 don't care) as the classes of ``mapping`` (long; 255 ignored)."""
    ids = ids.long()
    if mapping is None:
        return ids
    table = torch.full((max(int(ids.max()) + 1 if ids.numel() else 0, DONTCARE_ID + 1),), IGNORE_INDEX,
                       dtype=torch.long, device=ids.device)
    table[:len(CITYSCAPES_TRAIN_IDS)] = torch.tensor(CITYSCAPES_TRAIN_IDS, device=ids.device)
    return table[ids]


def class_targets(source: torch.Tensor, mapping: Optional[str]) -> torch.Tensor:
    """The (N, H, W) classes a segmenter is scored on of a batch's (N, 1, H, W) label ``source`` (ids as stored:
    don't care is 255, the ignored index)."""
    return map_classes(source[:, 0], mapping)


# -- the network ------------------------------------------------------------------------------------------------
def build_torchvision(arch: str, num_classes: int, aux_loss: bool = False, option: str = "model.arch") -> nn.Module:
    """torchvision's segmentation model ``arch`` with ``num_classes`` outputs and no downloaded weights."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models.segmentation)
    check_choice(option, arch, known)
    if aux_loss and arch.startswith("lraspp"):
        raise ConfigError(f"{option}={arch} has no auxiliary classifier; set aux_loss false")
    kwargs = {"aux_loss": True} if aux_loss else {}  # LRASPP refuses the argument even when false
    return torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


class SegmentationNet(nn.Module):
    """A torchvision segmentation model on our images: (N, C, H, W) in [-1, 1] (C 1, 3 or 4: grey repeated, alpha
    dropped) normalised as torchvision's weights expect; ``forward`` gives torchvision's ``{"out", "aux"}``
    logits at the input's size."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images[:, :3] if images.shape[1] >= 3 else images[:, :1].expand(-1, 3, -1, -1)
        x = ((x.float() + 1) / 2 - self.mean) / self.std
        return self.model(x)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) predicted classes of the images as they would be saved: rounded to 8 bits (what ``eval
        --segmenter`` reads back from the PNGs; a no-op for images read from files) and scored in fp32 outside any
        autocast, so the in-training ``val/miou`` is the number ``eval`` gives for the same outputs."""
        with autocast_off(images.device):
            return self(to_uint8(images).float() / 127.5 - 1)["out"].argmax(1)


# -- the scores -------------------------------------------------------------------------------------------------
class SegmentationScores(MulticlassJaccardIndex):
    """mIoU, pixel accuracy and mean class accuracy of predicted classes against label classes (255 ignored),
    with the per-class IoU; distributed as any torchmetrics metric.

    torchmetrics accumulates the confusion matrix (``confmat``: rows the labels, columns the predictions); the
    scores are read from it as FCN's ``score.py`` and the Cityscapes evaluation define them, which the papers'
    numbers come from: a class's IoU is TP / (TP + FP + FN), its accuracy TP / (TP + FN); the means are over the
    classes the labels or predictions hold (IoU) and over the classes the labels hold (accuracy) — torchmetrics'
    own macro accuracy counts a class only predicted as 0 instead, so it is not used."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, ignore_index=IGNORE_INDEX, average="none", validate_args=False)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return scores_from_confmat(self.confmat)


def scores_from_confmat(confmat: torch.Tensor, absent: str = "left_out") -> dict[str, torch.Tensor]:
    """mIoU, pixel accuracy, class accuracy and per-class IoU of a confusion matrix (rows labels, columns
    predictions). ``absent="zero"`` counts a class the images lack as 0 in the means instead of leaving it out
    (pix2pix's FCN-score scripts divide by ``... + 1e-12``: such a class scores 0 and the means are over all)."""
    confmat = confmat.double()
    tp, labelled, predicted = confmat.diag(), confmat.sum(1), confmat.sum(0)
    iou = tp / (labelled + predicted - tp)  # NaN: a class neither labelled nor predicted
    accuracy = tp / labelled  # NaN: a class no label holds
    mean = (lambda v: v.nan_to_num(0.0).mean()) if absent == "zero" else (lambda v: v.nanmean())
    return {"miou": mean(iou).float(), "pixel_acc": (tp.sum() / confmat.sum()).float(),
            "class_acc": mean(accuracy).float(), "iou": iou.float()}


# How generated photos are scored against label maps (``eval --seg_protocol``): where the segmenter runs, how the
# photos are resized to it, and what a class the scored images lack counts in the means.
SegProtocol = Literal["cityscapes", "pix2pix-fcn", "generated-size"]
SEG_PROTOCOLS: dict[str, dict[str, str]] = {
    "cityscapes": {"resolution": "label", "photo_resize": "bicubic", "absent": "left_out",
                   "about": "each label map's full resolution, photos resized bicubic; classes the images lack are "
                            "left out of the means (cityscapesScripts, SPADE/pix2pixHD's evaluations)"},
    "pix2pix-fcn": {"resolution": "label", "photo_resize": "bilinear", "absent": "zero",
                    "about": "each label map's full resolution, photos upsampled bilinear (scipy.misc.imresize, as "
                             "pix2pix's scripts/eval_cityscapes); classes the images lack count as 0 in the means"},
    "generated-size": {"resolution": "photo", "photo_resize": "none", "absent": "left_out",
                       "about": "each generated photo's own size, label maps resized nearest to it; classes the "
                                "images lack are left out of the means"},
}


SCALAR_SCORES = ("miou", "pixel_acc", "class_acc")


def per_class_table(iou: torch.Tensor, names: list[str]) -> dict[str, Optional[float]]:
    """{class name: IoU} (None for a class neither labelled nor predicted)."""
    return {name: None if math.isnan(v) else v for name, v in zip(names, iou.tolist())}


class StageScores(nn.Module):
    """A :class:`SegmentationScores` per stage (``val``, ``test``), read and reset at the stage's end: the scores
    of a Segmenter and of a GAN's ``model.segmenter`` alike."""

    def __init__(self, num_classes: int, stages: tuple[str, ...] = ("val", "test")) -> None:
        super().__init__()
        self.stages = nn.ModuleDict({stage: SegmentationScores(num_classes) for stage in stages})

    def update(self, stage: str, predicted: torch.Tensor, truth: torch.Tensor) -> None:
        self.stages[stage].update(predicted, truth)

    def take(self, stage: str, class_names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Optional[float]]]:
        """``{stage/miou, stage/pixel_acc, stage/class_acc}`` and the per-class IoU table; the stage reset."""
        values = self.stages[stage].compute()
        self.stages[stage].reset()
        return {f"{stage}/{k}": values[k] for k in SCALAR_SCORES}, per_class_table(values["iou"], class_names)

    def reset(self, stage: str) -> None:
        self.stages[stage].reset()


# -- the scorer a file names ------------------------------------------------------------------------------------
@dataclass
class Scorer:
    """A segmentation network in eval mode with the classes it predicts and how label ids map to them."""

    net: SegmentationNet
    num_classes: int
    class_mapping: Optional[str]
    class_names: list[str]
    about: dict[str, Any] = field(default_factory=dict)  # for the protocol: what network, from which file


TORCHVISION_PREFIX = "torchvision:"


def check_scorer_spec(spec: str, weights: Optional[str], option: str = "--segmenter") -> None:
    """A one-line error now (before any work) if ``spec`` cannot name a scorer."""
    if spec.startswith(TORCHVISION_PREFIX):
        import torchvision

        check_choice(option, spec, [TORCHVISION_PREFIX + name for name in
                                    torchvision.models.list_models(module=torchvision.models.segmentation)])
        if not weights:
            raise ConfigError(f"{option} {spec} needs its weights: pass {option}_weights FILE, a local state dict of "
                              f"torchvision.models.segmentation.{spec[len(TORCHVISION_PREFIX):]} (nothing is "
                              "downloaded here), or train one: pix2pix-lit fit -c configs/segmenter/...")
        if not Path(weights).is_file():
            raise ConfigError(f"{option}_weights {weights} does not exist; pass a torch.save'd state dict of the model")
    elif not Path(spec).is_file():
        raise ConfigError(f"{option} {spec} does not exist; pass a Segmenter checkpoint (pix2pix-lit fit -c "
                          "configs/segmenter/...: runs/NAME/checkpoints/best-*.ckpt) or torchvision:NAME")
    elif weights:  # a Segmenter checkpoint holds its own weights: a second file would be silently ignored
        raise ConfigError(f"{option}_weights {weights}: {option} {spec} is a Segmenter checkpoint with its own weights; "
                          f"leave {option}_weights out (it goes with torchvision:NAME)")


def torchvision_scorer(arch: str, weights: str, option: str) -> tuple[SegmentationNet, int, str]:
    data = Path(weights).read_bytes()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise ConfigError(f"{option} {weights} is not a PyTorch state dict ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{option} {weights} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("model."): v for k, v in state.items()}
    aux = any(k.startswith("aux_classifier.") for k in state)
    # the number of classes is the first dimension of the classifier's last layer: build with one class and read
    # the classes from the tensors that differ
    probe = build_torchvision(arch, 1, aux, "--segmenter torchvision:NAME").state_dict()
    differing = [k for k in probe if k in state and state[k].shape != probe[k].shape]
    classes = {int(state[k].shape[0]) for k in differing if probe[k].shape[:1] == (1,)}
    num_classes = classes.pop() if len(classes) == 1 else 1
    model = build_torchvision(arch, num_classes, aux, "--segmenter torchvision:NAME")
    missing, unexpected = (sorted(model.state_dict().keys() - state.keys()), sorted(state.keys() - model.state_dict().keys()))
    wrong = [k for k in model.state_dict() if k in state and state[k].shape != model.state_dict()[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise ConfigError(f"{option} {weights} is not a torchvision {arch} state dict ({len(missing)} tensor(s) "
                          f"missing, {len(unexpected)} unknown, {len(wrong)} of another shape; e.g. {first})")
    model.load_state_dict(state)
    return SegmentationNet(model), num_classes, hashlib.sha256(data).hexdigest()


# -- scoring a folder of photos against label maps ----------------------------------------------------------------
LabelFormat = Literal["ids", "ade20k"]


def read_label_classes(path: Path, scorer: Scorer, label_format: str, size: Optional[tuple[int, int]]) -> torch.Tensor:
    """A stored label map as the (H, W) classes ``scorer`` is scored on; resized (``size`` = (W, H)) only nearest."""
    with read_ids(path) as img:
        if size is not None and img.size != size:
            img = img.resize(size, Image.Resampling.NEAREST)  # an id in is an id out: never interpolated
        ids = to_class_ids(np.asarray(img), label_format == "ade20k")
    classes = map_classes(torch.from_numpy(ids), scorer.class_mapping)
    bad = (classes >= scorer.num_classes) & (classes != IGNORE_INDEX)
    if bool(bad.any()):
        y, x = (int(v[0]) for v in torch.nonzero(bad, as_tuple=True))
        raise DataError(f"{path}: class {int(classes[y, x])} at pixel (x={x}, y={y}) is not one of the segmenter's "
                        f"{scorer.num_classes} classes; check --class_mapping / --label_format (Cityscapes label ids "
                        "need --class_mapping cityscapes_train_ids with a torchvision model)")
    return classes


def check_ade20k_format(paths: list[Path], num_classes: Optional[int], where: Path) -> None:
    """Label maps read as ADE20K's (0 unlabelled, the classes stored as 1..N) must look like it: maps of plain
    class ids (0..N-1) read so would score every class as its neighbour, so the ids the whole folder holds decide:
    an id above N cannot be ADE20K's; 0 present while N is nowhere is what plain ids of N classes look like."""
    found: set[int] = set()
    for ids in remembered_ids(paths).values():
        found.update(ids)
    if not found or num_classes is None:
        return
    top = max(found)
    if top > num_classes:
        raise DataError(f"--label_format ade20k: the label maps in {where} hold id {top}, but ADE20K-style maps of "
                        f"this segmenter's {num_classes} classes store 0..{num_classes}; check --label_format and the "
                        "segmenter")
    if 0 in found and num_classes not in found:
        raise DataError(f"--label_format ade20k: the label maps in {where} hold ids {min(found)}..{top} and never "
                        f"{num_classes}: they look like plain class ids (0..{num_classes - 1}; use --label_format ids), "
                        f"where ADE20K stores the classes as 1..{num_classes} with 0 unlabelled")


def read_photo(path: Path, size: Optional[tuple[int, int]], resample: str = "bicubic") -> torch.Tensor:
    """A photo as read for scoring: as saved (8-bit), resized (``resample``) to ``size`` (W, H) if it is not that
    size (``None``: as it is)."""
    from pix2pix_lit.data.io import load_image, to_tensor

    with load_image(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR if resample == "bilinear" else Image.Resampling.BICUBIC)
        return to_tensor(img)


def _image_size(path: Path) -> tuple[int, int]:
    from pix2pix_lit.data.io import load_image

    with load_image(path) as img:
        return img.size


def score_folder(photo_dir: Path, label_dir: Path, scorer: Scorer, label_format: str = "ids",
                 size: Optional[tuple[int, int]] = None, photo_suffix: str = "", label_suffix: str = "",
                 batch_size: int = 8, protocol: str = "cityscapes") -> dict[str, Any]:
    """The segmentation scores of the photos in ``photo_dir`` against their namesakes in ``label_dir`` under
    ``protocol`` (:data:`SEG_PROTOCOLS`): each photo resized to its label map's size, or each label map to its
    photo's (the labels only ever nearest), or both to ``size`` = (W, H); then segmented."""
    from pix2pix_lit.data.datasets import match_pairs
    from pix2pix_lit.data.io import check_decodable

    check_choice("--label_format", label_format, get_args(LabelFormat))
    check_choice("--seg_protocol", protocol, get_args(SegProtocol))
    rule = SEG_PROTOCOLS[protocol]
    if size is not None and rule["resolution"] == "photo":
        raise ConfigError("--seg_size and --seg_protocol generated-size both say where to score; give one")
    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    pairs = match_pairs(Path(photo_dir), Path(label_dir), photo_suffix, label_suffix,
                        ("--fake-suffix", "--label-suffix"))
    check_decodable([photo for _, photo, _ in pairs])
    if label_format == "ade20k":
        check_ade20k_format([label for *_, label in pairs], scorer.num_classes if scorer.class_mapping is None
                            else None, label_dir)
    scores = SegmentationScores(scorer.num_classes)
    batch: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        if batch:
            photos, labels = torch.stack([p for p, _ in batch]), torch.stack([t for _, t in batch])
            scores.update(scorer.net.predict(photos), labels)
            batch.clear()

    for _, photo_path, label_path in pairs:
        at = _image_size(photo_path) if rule["resolution"] == "photo" else size
        labels = read_label_classes(label_path, scorer, label_format, at)
        photo = read_photo(photo_path, (labels.shape[1], labels.shape[0]), rule["photo_resize"])
        if batch and batch[0][1].shape != labels.shape:
            flush()  # a batch holds one size
        batch.append((photo, labels))
        if len(batch) == batch_size:
            flush()
    flush()
    values = scores_from_confmat(scores.confmat, rule["absent"])
    return {
        "num_images": len(pairs),
        "metrics": {k: float(values[k]) for k in SCALAR_SCORES},
        "per_class_iou": per_class_table(values["iou"], scorer.class_names),
        "protocol": {
            "name": protocol,
            "description": rule["about"],
            "absent_classes": "count as 0 in mIoU and class accuracy" if rule["absent"] == "zero"
            else "left out of mIoU (neither labelled nor predicted) and class accuracy (not labelled)",
            **scorer.about,
            "classes": scorer.num_classes,
            "class_mapping": scorer.class_mapping or "label ids as stored",
            "label_format": label_format,
            "ignore_index": IGNORE_INDEX,
            "resolution": f"{size[0]}x{size[1]} (labels resized nearest)" if size else
            "each generated photo's own (labels resized nearest)" if rule["resolution"] == "photo" else "each label map's own",
            "photos": "read as saved (8-bit)" + ("" if rule["resolution"] == "photo" and size is None
                                                 else f", resized {rule['photo_resize']} to the scored size"),
            "scores": "one confusion matrix over all pixels; IoU TP/(TP+FP+FN), class accuracy TP/(TP+FN)",
        },
    }
