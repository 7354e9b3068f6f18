"""The evaluation part of every model here: metrics per stage and output domain, the FID Inception attached
and released, the real set's (and the training set's) features cached, the val/test steps and epoch-end scoring.

:class:`Evaluation` is mixed into :class:`~pix2pix_lit.models.base.ImageTranslationModel`; a model fills in
``evaluate_batch`` (and ``real_set_loaders`` when it has more than one eval loader).
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn as nn
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from pix2pix_lit.data.datasets import fingerprint
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.fid_stats import RealStats, check_compatible, load_real_stats
from pix2pix_lit.inception import weights_sha256
from pix2pix_lit.lightning_internals import end_validation_workers
from pix2pix_lit.metrics import FID_FEATURES, ImageQualityMetrics, find_inception_weights, load_inception
from pix2pix_lit.models.segmenter import load_scorer
from pix2pix_lit.precision import EvalPassWeights
from pix2pix_lit.segmentation import (
    SCALAR_SCORES,
    SegmentationScores,
    class_targets,
    num_classes_for,
    per_class_table,
)

STAGES = ("val", "test")


class Evaluation(pl.LightningModule):
    """Scores a model's outputs at validation and test (see the module docstring).

    Declared by the model: ``metric_domains`` (metric name suffix per evaluated output domain) and
    ``reference_domains`` (which of the data module's ``training_references()`` each domain's MiFID uses).
    """

    metric_domains: dict[str, str] = {"out": ""}
    reference_domains: dict[str, str] = {"out": "target"}

    def make_eval_metrics(self, fid: bool, kid: bool, kid_subset_size: int, mifid: bool, mifid_eps: float) -> None:
        """One :class:`ImageQualityMetrics` per stage and output domain (``self.eval_metrics[stage][domain]``)."""
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({d: ImageQualityMetrics(fid, kid, kid_subset_size, mifid=mifid, mifid_eps=mifid_eps)
                                  for d in self.metric_domains})
            for stage in STAGES
        })
        self._inception_attached = False  # the FID Inception is set on the metrics (see _attach_inception)
        self.segmentation_scores: Optional[nn.ModuleDict] = None  # with model.segmenter (make_segmentation_scores)
        self.test_per_class_iou: dict[str, Optional[float]] = {}
        self.eval_pass_weights = EvalPassWeights()
        self.test_results: dict[str, float] = {}

    def _stage_metrics(self, stage: Optional[str]) -> Optional[nn.ModuleDict]:
        key = {"fit": "val", "validate": "val", "test": "test"}.get(stage or "")
        return self.eval_metrics[key] if key else None

    def _needs_inception(self, stage: Optional[str]) -> bool:
        metrics = self._stage_metrics(stage)
        return metrics is not None and any(m.needs_inception for m in metrics.values())

    def _attach_inception(self, stage: Optional[str]) -> None:
        if self._needs_inception(stage) and not self._inception_attached:
            extractor = load_inception(self.hparams.inception_weights)
            for stage_metrics in self.eval_metrics.values():
                for m in stage_metrics.values():
                    m.set_extractor(extractor)
            self._inception_attached = True

    def _detach_inception(self) -> None:
        # While fit trains, the FID Inception (95 MB) is not needed: it goes when training starts and after each
        # validation, and is loaded again (~0.15 s) for the next one, so a training's peak memory does not carry
        # it (experiments/RESULTS.md, the training-memory section).
        for stage_metrics in self.eval_metrics.values():
            for m in stage_metrics.values():
                m.set_extractor(None)
        self._inception_attached = False

    # -- segmentation scores (model.segmenter) -----------------------------------------------------------------
    def make_segmentation_scores(self) -> None:
        """With ``model.segmenter``: load the scorer (not a submodule: checkpoints of this model never hold it) and
        a :class:`~pix2pix_lit.segmentation.SegmentationScores` per stage. Once per process: at ``prepare_data``
        (before the loggers start) where Lightning calls it, else at ``setup``."""
        h = self.hparams
        if not h.get("segmenter") or self.segmentation_scores is not None or self._trainer is None:
            return
        if self.trainer.state.fn not in ("fit", "validate", "test"):
            return  # predict has no labels to score against
        scorer = load_scorer(h.segmenter, h.segmenter_weights, option="model.segmenter")
        if scorer.class_mapping is None and scorer.num_classes != h.label_nc:
            raise ConfigError(f"model.segmenter {h.segmenter} predicts {scorer.num_classes} classes but the label maps "
                              f"have data.label_nc={h.label_nc}; use a segmenter trained on this data")
        num_classes_for(h.label_nc, scorer.class_mapping)  # Cityscapes' train ids need Cityscapes' label ids
        self.__dict__["scorer"] = scorer
        self.segmentation_scores = nn.ModuleDict({stage: SegmentationScores(scorer.num_classes) for stage in STAGES})

    def _score_segmentation(self, stage: str, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        scorer = self.__dict__.get("scorer")
        if scorer is None or self.segmentation_scores is None:
            return
        net = scorer.net.to(self.device)
        h = self.hparams
        truth = class_targets(batch["source"], h.label_nc, h.contain_dontcare_label, scorer.class_mapping)
        self.segmentation_scores[stage].update(net.predict(outputs["fake"]), truth)

    def _segmentation_epoch_end(self, stage: str) -> dict[str, torch.Tensor]:
        if self.segmentation_scores is None:
            return {}
        values = self.segmentation_scores[stage].compute()
        self.segmentation_scores[stage].reset()
        if stage == "test":
            self.test_per_class_iou = per_class_table(values["iou"], self.__dict__["scorer"].class_names)
        return {f"{stage}/{k}": values[k] for k in SCALAR_SCORES}

    def prepare_data(self) -> None:
        # Lightning calls this before it starts the loggers: missing FID weights stop the run before a
        # W&B run or any other file is written (setup() then loads them)
        stage = self.trainer.state.fn.value if self._trainer is not None and self.trainer.state.fn else None
        if self._needs_inception(stage):
            find_inception_weights(self.hparams.inception_weights)
            self._real_stats()  # a bad statistics file too
        if stage in ("fit", "validate", "test"):
            self.make_segmentation_scores()  # a bad segmenter file too stops the run before any logger starts

    def autocast_ready(self, net: nn.Module, device_type: str) -> nn.Module:
        """``net`` with its weights cast once for the whole evaluation pass under autocast
        (:class:`~pix2pix_lit.precision.EvalPassWeights`), else ``net``."""
        return self.eval_pass_weights(net, device_type)

    def _begin_eval_pass(self) -> None:
        self.eval_pass_weights.begin()

    def _end_eval_pass(self) -> None:
        self.eval_pass_weights.end()

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate_batch(self, batch: dict[str, Any], metrics: nn.ModuleDict, dataloader_idx: int) -> dict[str, Any]:
        """Update ``metrics`` (one ImageQualityMetrics per output domain) with a batch; return its outputs."""
        raise NotImplementedError

    def real_set_loaders(self) -> dict[str, int]:
        """Which eval dataloader holds the real images of each metric domain (to key the cached features)."""
        return {d: 0 for d in self.metric_domains}

    def _use_real_sets(self, metrics: nn.ModuleDict, loaders: Any, num_batches: list[int]) -> None:
        """Key the cached real features to the images this pass evaluates (dataset, limits, batch size)."""
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        for domain, i in self.real_set_loaders().items():
            if i < len(loaders) and loaders[i] is not None:
                loader = loaders[i]
                metrics[domain].use_real_set(
                    fingerprint(loader.dataset, list(num_batches), loader.batch_size, self.trainer.world_size))

    def _real_stats(self) -> Optional[RealStats]:
        """``model.fid_real_stats`` read and checked against the Inception weights in use (once), or None."""
        path = self.hparams.fid_real_stats
        if not path:
            return None
        if self.__dict__.get("_loaded_real_stats", (None,))[0] != path:
            stats = load_real_stats(path)
            check_compatible(stats, path, weights_sha256(find_inception_weights(self.hparams.inception_weights)),
                             FID_FEATURES)
            self.__dict__["_loaded_real_stats"] = (path, stats)
        return self.__dict__["_loaded_real_stats"][1]

    def _use_real_stats(self, metrics: nn.ModuleDict) -> None:
        stats = self._real_stats()
        if stats is not None:
            for m in metrics.values():
                m.use_real_stats(stats, self.hparams.fid_real_stats, holds_them=self.trainer.global_rank == 0)

    def _scores_before_training(self) -> bool:
        """A sanity check over the whole val set (``trainer.num_sanity_val_steps: -1``) scores the untrained
        generators: the starting point of the val curves, logged at step 0."""
        return self.trainer.sanity_checking and self.trainer.num_sanity_val_steps == float("inf")

    def _eval_epoch_end(self, metrics: nn.ModuleDict, prefix: str) -> dict[str, float]:
        if self.trainer.sanity_checking and not self._scores_before_training():
            for m in metrics.values():
                m.reset()
            if self.segmentation_scores is not None:
                self.segmentation_scores[prefix].reset()
            return {}
        out = {}
        for domain, m in metrics.items():
            values = m.compute()
            m.reset()
            out.update({f"{prefix}/{k}{self.metric_domains[domain]}": v.float() for k, v in values.items()})
        out.update(self._segmentation_epoch_end(prefix))
        if self.trainer.sanity_checking:  # Lightning drops what is logged in the sanity check: to the loggers
            for logger in self.trainer.loggers if self.trainer.is_global_zero else []:
                logger.log_metrics({k: float(v) for k, v in out.items()}, step=0)
            return {k: float(v) for k, v in out.items()}
        self.log_dict(out, sync_dist=False)
        return {k: float(v) for k, v in out.items()}

    def on_validation_epoch_start(self) -> None:
        self._begin_eval_pass()
        self._attach_inception(self.trainer.state.fn.value)
        self._use_real_sets(self.eval_metrics["val"], self.trainer.val_dataloaders, self.trainer.num_val_batches)
        self._use_real_stats(self.eval_metrics["val"])
        if not self.trainer.sanity_checking or self._scores_before_training():
            self._use_training_references(self.eval_metrics["val"])

    def on_test_epoch_start(self) -> None:
        self._begin_eval_pass()
        self._use_real_sets(self.eval_metrics["test"], self.trainer.test_dataloaders, self.trainer.num_test_batches)
        self._use_real_stats(self.eval_metrics["test"])
        self._use_training_references(self.eval_metrics["test"])

    def _use_training_references(self, metrics: nn.ModuleDict) -> None:
        """Give MiFID the Inception features of the training images (computed once per set of images, each
        process a share of them), which its memorization term compares the generated images with."""
        domains = [d for d, m in metrics.items() if m.mifid]
        if not domains:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "training_references"):
            raise ConfigError("model.mifid compares generated images with the training images, which this data module "
                              "does not give (training_references()); set model.mifid: false")
        references = datamodule.training_references()
        for domain in domains:
            dataset, key = references[self.reference_domains[domain]]
            m = metrics[domain]
            if m.training_key != key:
                m.set_training_reference(self._inception_features(dataset, m), key)
                rank_zero_info(f"MiFID: the memorization term compares with the {m.training_features.shape[0]} "
                               f"training images of {self.reference_domains[domain]}")

    @torch.no_grad()
    def _inception_features(self, dataset, metrics: ImageQualityMetrics) -> torch.Tensor:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        share = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
        loader = torch.utils.data.DataLoader(share, batch_size=8, num_workers=0)
        feats = [metrics.features(batch["image"].to(self.device)) for batch in loader]
        local = torch.cat(feats) if feats else torch.zeros(0, 2048, device=self.device)
        if world > 1:
            from torchmetrics.utilities.distributed import gather_all_tensors

            local = torch.cat(gather_all_tensors(local))
        return local

    def on_predict_epoch_start(self) -> None:
        self._begin_eval_pass()

    def on_predict_epoch_end(self) -> None:
        self._end_eval_pass()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        # a partial sanity check only runs the networks
        scored = not self.trainer.sanity_checking or self._scores_before_training()
        outputs = self.evaluate_batch(batch, self.eval_metrics["val"] if scored else None, dataloader_idx)
        if scored:
            self._score_segmentation("val", outputs, batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval_pass()
        self._eval_epoch_end(self.eval_metrics["val"], "val")

    def on_validation_end(self) -> None:
        # A partial pass (the sanity check, limit_val_batches < 1) leaves its DataLoader iterator, and with it
        # the loader's worker processes, alive until the next validation, holding memory through a whole
        # training epoch (see PairedDataModule._eval_loader).
        if self.trainer.state.fn == "fit":
            self._detach_inception()
            end_validation_workers(self.trainer)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        outputs = self.evaluate_batch(batch, self.eval_metrics["test"], dataloader_idx)
        self._score_segmentation("test", outputs, batch)
        return outputs

    def on_test_epoch_end(self) -> None:
        self._end_eval_pass()
        self.test_results = self._eval_epoch_end(self.eval_metrics["test"], "test")
