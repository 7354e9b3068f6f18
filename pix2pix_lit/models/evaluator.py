"""How a model's outputs are scored — the evaluation part of every model here: image metrics per stage and output
domain, the FID Inception attached and released, the real set's cached features (or stored statistics), MiFID's
training references, and the segmentation scores of ``model.segmenter``. An ``nn.Module`` (its metrics sync
across processes as torchmetrics do) that needs no Trainer: the model's Lightning hooks pass in what it needs.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from pix2pix_lit.clean_fid import CleanFID, find_clean_fid_weights
from pix2pix_lit.errors import ConfigError, check_choice
from pix2pix_lit.fid_stats import RealStats, check_compatible, load_real_stats
from pix2pix_lit.inception import weights_sha256
from pix2pix_lit.metrics import FID_FEATURES, ImageQualityMetrics, find_inception_weights, load_inception
from pix2pix_lit.models.segmenter import load_scorer
from pix2pix_lit.segmentation import StageScores, class_targets, num_classes_for

STAGES = ("val", "test")
STAGE_OF = {"fit": "val", "validate": "val", "test": "test"}  # the trainer's function -> the stage it scores
FID_PROTOCOLS = ("legacy", "clean", "both")  # model.fid_protocol: which FID(s) ``fid: true`` computes


class Evaluator(nn.Module):
    """``metrics[stage][domain]``: an :class:`~pix2pix_lit.metrics.ImageQualityMetrics` per stage and output domain
    (``domains``: metric name suffix per domain, e.g. ``{"out": ""}`` or ``{"B": "_B", "A": "_A"}``;
    ``references``: which of the data's training references each domain's MiFID compares with). The options are
    the model's (``fid``, ``kid``, ... ``segmenter``; documented in ``models/base.py``). ``fid_protocol``: with
    ``fid`` on, ``legacy`` scores ``fid`` (torch-fidelity), ``clean`` scores ``clean_fid`` (the clean-fid package's
    resize and NVIDIA's TorchScript Inception at ``clean_fid_weights``), ``both`` each."""

    def __init__(self, domains: dict[str, str], references: dict[str, str], fid: bool = True, kid: bool = True,
                 kid_subset_size: int = 1000, mifid: bool = False, mifid_eps: float = 0.1,
                 inception_weights: Optional[str] = None, fid_real_stats: Optional[str] = None,
                 segmenter: Optional[str] = None, segmenter_weights: Optional[str] = None, label_nc: int = 0,
                 paired: bool = True, fid_protocol: str = "legacy",
                 clean_fid_weights: Optional[str] = None) -> None:
        super().__init__()
        check_choice("model.fid_protocol", fid_protocol, FID_PROTOCOLS)
        clean = fid and fid_protocol != "legacy"
        if clean and fid_real_stats is not None:
            raise ConfigError(f"model.fid_real_stats {fid_real_stats} holds legacy FID statistics; clean-FID "
                              f"(model.fid_protocol {fid_protocol}) scores the real images themselves: set "
                              "model.fid_protocol legacy or drop model.fid_real_stats")
        if mifid and not (fid and kid):
            raise ConfigError("model.mifid needs model.fid and model.kid (MiFID is FID divided by a memorization term "
                              "computed on the Inception features KID keeps)")
        if mifid and fid_protocol == "clean":
            raise ConfigError("model.mifid divides the legacy FID by its memorization term; with model.fid_protocol "
                              "clean there is none: set model.fid_protocol both (or legacy), or model.mifid false")
        if fid_real_stats is not None and (not fid or kid or len(domains) > 1):
            raise ConfigError(f"model.fid_real_stats {fid_real_stats} gives FID's real side for one output domain: it "
                              "needs model.fid: true and model.kid: false (KID needs every real image's features)"
                              + (f", and this model scores {len(domains)} domains" if len(domains) > 1 else ""))
        if segmenter is not None and (label_nc == 0 or not paired):
            raise ConfigError("model.segmenter scores generated photos against the label maps they were made from: it "
                              "needs paired label-map data (data.label_nc > 0); for other outputs use pix2pix-lit eval "
                              "FAKE_DIR --labels LABEL_DIR --segmenter SEG")
        self.domains, self.references = dict(domains), dict(references)
        self.inception_weights, self.fid_real_stats = inception_weights, fid_real_stats
        self.clean_fid, self.clean_fid_weights = clean, clean_fid_weights
        self.segmenter, self.segmenter_weights = segmenter, segmenter_weights
        self.label_nc = label_nc
        self.metrics = nn.ModuleDict({stage: nn.ModuleDict({
            d: ImageQualityMetrics(fid and fid_protocol != "clean", kid, kid_subset_size, mifid=mifid,
                                   mifid_eps=mifid_eps, clean_fid=clean) for d in domains})
            for stage in STAGES})
        self.inception_attached = False
        self.segmentation: Optional[StageScores] = None  # with a segmenter (load_segmenter)
        self.__dict__["scorer"] = None  # not a submodule: a checkpoint of the model never holds it
        self.__dict__["real_stats"] = None  # (path, RealStats) once read
        self.test_per_class_iou: dict[str, Optional[float]] = {}

    def needs_inception(self, fn: Optional[str]) -> bool:
        stage = STAGE_OF.get(fn or "")
        return stage is not None and any(m.needs_inception for m in self.metrics[stage].values())

    def needs_clean_fid(self, fn: Optional[str]) -> bool:
        return self.clean_fid and STAGE_OF.get(fn or "") is not None

    @property
    def scorer(self):
        """The segmenter of ``model.segmenter`` once loaded (not a submodule), else None."""
        return self.__dict__["scorer"]

    def check_files(self, fn: Optional[str]) -> None:
        """Every file the evaluation of ``fn`` (fit, validate, test) reads, read now: missing FID weights, a bad
        statistics file or segmenter stop a run before its loggers start (the model's ``prepare_data``)."""
        if self.needs_inception(fn):
            find_inception_weights(self.inception_weights)
            self.stored_real_stats()
        if self.needs_clean_fid(fn):
            find_clean_fid_weights(self.clean_fid_weights)
        self.load_segmenter(fn)

    def attach_inception(self, fn: Optional[str]) -> None:
        if (self.needs_inception(fn) or self.needs_clean_fid(fn)) and not self.inception_attached:
            extractor = load_inception(self.inception_weights) if self.needs_inception(fn) else None
            clean = None
            if self.needs_clean_fid(fn):
                clean = CleanFID(find_clean_fid_weights(self.clean_fid_weights)).image_features
            for m in self._all_metrics():
                m.set_extractor(extractor, clean)
            self.inception_attached = True

    def detach_inception(self) -> None:
        # While fit trains, the FID Inception (95 MB) is not needed: it goes when training starts and after each
        # validation, and is loaded again (~0.15 s) for the next one, so a training's peak memory does not carry it
        for m in self._all_metrics():
            m.set_extractor(None)
        self.inception_attached = False

    def _all_metrics(self) -> list[ImageQualityMetrics]:
        return [m for stage in self.metrics.values() for m in stage.values()]

    def load_segmenter(self, fn: Optional[str]) -> None:
        """``model.segmenter`` loaded once per process, for fit/validate/test (predict has no labels)."""
        if self.segmenter is None or self.segmentation is not None or fn not in STAGE_OF:
            return
        scorer = load_scorer(self.segmenter, self.segmenter_weights, option="model.segmenter")
        if scorer.class_mapping is None and scorer.num_classes != self.label_nc:
            raise ConfigError(f"model.segmenter {self.segmenter} predicts {scorer.num_classes} classes but the label "
                              f"maps have data.label_nc={self.label_nc}; use a segmenter trained on this data")
        num_classes_for(self.label_nc, scorer.class_mapping)  # Cityscapes' train ids need Cityscapes' label ids
        self.__dict__["scorer"] = scorer
        self.segmentation = StageScores(scorer.num_classes)

    def score_segmentation(self, stage: str, fake: torch.Tensor, source: torch.Tensor) -> None:
        """The segmenter's classes of generated photos ``fake`` against the label maps ``source`` they came from."""
        scorer = self.__dict__["scorer"]
        if scorer is not None and self.segmentation is not None:
            truth = class_targets(source, scorer.class_mapping)
            self.segmentation.update(stage, scorer.net.to(fake.device).predict(fake), truth)

    def stored_real_stats(self) -> Optional[RealStats]:
        """``fid_real_stats`` read and checked against the Inception weights in use (once), or None."""
        path = self.fid_real_stats
        if not path:
            return None
        if (self.__dict__["real_stats"] or (None,))[0] != path:
            stats = load_real_stats(path)
            check_compatible(stats, path, weights_sha256(find_inception_weights(self.inception_weights)), FID_FEATURES)
            self.__dict__["real_stats"] = (path, stats)
        return self.__dict__["real_stats"][1]

    def begin(self, stage: str, real_set_keys: dict[str, Any], holds_stats: bool = True) -> None:
        """Start a pass: each domain's cached real features keyed to the images this pass scores
        (``real_set_keys``: domain -> fingerprint), or FID's real side from the stored statistics."""
        for domain, key in real_set_keys.items():
            self.metrics[stage][domain].use_real_set(key)
        stats = self.stored_real_stats()
        if stats is not None:
            for m in self.metrics[stage].values():
                m.use_real_stats(stats, self.fid_real_stats, holds_them=holds_stats)

    def use_training_references(self, stage: str, references: Optional[dict], device: torch.device,
                                rank: int = 0, world: int = 1) -> list[str]:
        """Give MiFID the Inception features of the training images (``references``: the data module's
        ``training_references()``; computed once per set, each process a share). Returns what was computed."""
        domains = [d for d, m in self.metrics[stage].items() if m.mifid]
        if domains and references is None:
            raise ConfigError("model.mifid compares generated images with the training images, which this data module "
                              "does not give (training_references()); set model.mifid: false")
        computed = []
        for domain in domains:
            dataset, key = references[self.references[domain]]
            m = self.metrics[stage][domain]
            if m.training_key != key:
                m.set_training_reference(m.dataset_features(dataset, device, rank, world), key)
                computed.append(f"{m.training_features.shape[0]} training images of {self.references[domain]}")
        return computed

    def take(self, stage: str, class_names: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        """The pass's scores (``stage/fid``, ``stage/fid_B``, ..., ``stage/miou``); the stage reset."""
        out = {}
        for domain, m in self.metrics[stage].items():
            values = m.compute()
            m.reset()
            out.update({f"{stage}/{k}{self.domains[domain]}": v.float() for k, v in values.items()})
        if self.segmentation is not None:
            scores, table = self.segmentation.take(stage, class_names or self.__dict__["scorer"].class_names)
            out.update(scores)
            if stage == "test":
                self.test_per_class_iou = table
        return out

    def reset(self, stage: str) -> None:
        for m in self.metrics[stage].values():
            m.reset()
        if self.segmentation is not None:
            self.segmentation.reset(stage)

