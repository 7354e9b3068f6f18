"""The segmenter that scores generated photos: a torchvision segmentation network trained on the *real* photos ->
label maps of the user's own dataset, by the same CLI as every model (tracking, resume, DDP, precision).

No machine here can download a published segmenter, and the papers' scorers are not released in a form anyone can
run (SPADE's, the pix2pix paper's Caffe FCN), so the framework trains its own: ``pix2pix-lit fit -c
configs/segmenter/cityscapes.yaml``. Its checkpoint then scores photos: ``pix2pix-lit eval FAKE_DIR --labels
LABEL_DIR --segmenter SEG.ckpt`` and ``model.segmenter: SEG.ckpt`` during any label -> photo training
(:mod:`pix2pix_lit.segmentation`).

One training step reads as the torchvision reference recipe (``references/segmentation/train.py``): per-pixel
cross-entropy on the output, plus half of it on the auxiliary head, SGD with momentum and weight decay, the
learning rate decaying polynomially (power 0.9) to zero over the run.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_lit.checkpoints import load_checkpoint
from pix2pix_lit.data.labels import colorize
from pix2pix_lit.errors import CheckpointError, ConfigError, check_choice, check_numbers
from pix2pix_lit.models.training_state import TrainingState
from pix2pix_lit.segmentation import (
    CLASS_MAPPINGS,
    IGNORE_INDEX,
    TORCHVISION_PREFIX,
    TRAINED_ARCHS,
    ClassMapping,
    Scorer,
    SegmentationNet,
    StageScores,
    build_torchvision,
    check_scorer_spec,
    class_names_for,
    class_targets,
    num_classes_for,
    torchvision_scorer,
)


class Segmenter(pl.LightningModule):
    """A segmentation network learning photo -> label classes from a label-map data module (its ``target`` photos
    are the input, its ``source`` label maps the truth).

    Args:
        arch: torchvision's ``deeplabv3_resnet50`` (default), ``fcn_resnet50`` or ``lraspp_mobilenet_v3_large``
            (fastest), built with ``weights=None, weights_backbone=None``.
        class_mapping: ``null``: the data's classes (``label_nc``); ``cityscapes_train_ids``: Cityscapes' 34 label ids
            as its 19 train ids (the classes of every Cityscapes score; the others ignored).
        aux_loss: torchvision's auxiliary head (not for LRASPP), weighted 0.5 as in its reference recipe.
        optimizer: ``sgd`` (the reference: momentum, weight decay) or ``adam``.
        lr: the starting learning rate.
        momentum: SGD's momentum.
        weight_decay: the optimizer's weight decay.
        poly_power: the learning rate falls as ``(1 - step / total) ** poly_power`` per step.
        bn_momentum: the batch-norm momentum; ``null``: torchvision's (0.1, MobileNetV3 0.01). Short runs want 0.1:
            with 0.01 the running statistics trail the weights for hundreds of steps and eval mode lags.
        input_nc: the data's source channels (linked; unused: the photos are the input).
        output_nc: the photos' channels (linked from the data).
        label_nc: the label maps' classes (linked from the data).
        contain_dontcare_label: the label maps have a don't-care class, ignored in the loss (linked).
        no_instance: linked from the data; the segmenter reads no instance maps.
    """

    default_best_monitor = "val/miou"  # the checkpoint the CLI keeps as best-*.ckpt

    def __init__(
        self,
        arch: str = "deeplabv3_resnet50",
        class_mapping: Optional[ClassMapping] = None,
        aux_loss: bool = False,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        bn_momentum: Optional[float] = None,
        input_nc: int = 3,
        output_nc: int = 3,
        label_nc: int = 0,
        contain_dontcare_label: bool = False,
        no_instance: bool = False,
    ) -> None:
        super().__init__()
        check_choice("model.arch", arch, TRAINED_ARCHS)
        check_choice("model.optimizer", optimizer, ("sgd", "adam"))
        if label_nc < 1:
            raise ConfigError("model Segmenter learns label maps: use a data module of label maps (data.label_nc > 0, "
                              "e.g. pix2pix_lit.data.SyntheticLabelDataModule or layout: cityscapes)")
        check_numbers(locals(), {"lr": ">0", "momentum": "[0,1)", "weight_decay": ">=0", "poly_power": ">=0",
                                 "bn_momentum": "(0,1]", "input_nc": ">=1", "output_nc": ">=1"})
        self.save_hyperparameters()
        self.num_classes = num_classes_for(label_nc, class_mapping)
        self.net = SegmentationNet(build_torchvision(arch, self.num_classes, aux_loss))
        if bn_momentum is not None:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = bn_momentum
        self.class_names = class_names_for(self.num_classes, class_mapping)
        self.scores = StageScores(self.num_classes)  # the parts the GANs' evaluator and checkpoints use too
        self.training_state = TrainingState()
        self.test_results: dict[str, float] = {}
        self.test_per_class_iou: dict[str, Optional[float]] = {}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # the per-class table of test names the data's classes
            self.class_names = class_names_for(self.num_classes, self.hparams.class_mapping,
                                               dict(getattr(datamodule, "hparams", {})))

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        h = self.hparams
        return class_targets(batch["source"], h.class_mapping)

    def forward(self, photos: torch.Tensor) -> torch.Tensor:
        """(N, num_classes, H, W) logits."""
        return self.net(photos)["out"]

    # -- training -----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.net(batch["target"])
        truth = self.targets(batch)
        loss = F.cross_entropy(out["out"], truth, ignore_index=IGNORE_INDEX)
        if "aux" in out:
            loss = loss + 0.5 * F.cross_entropy(out["aux"], truth, ignore_index=IGNORE_INDEX)
        self.log("train/loss", loss, prog_bar=True, batch_size=truth.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=h.lr, weight_decay=h.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        poly = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total) ** h.poly_power)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": poly, "interval": "step", "name": "lr/segmenter"}}

    # -- evaluation ---------------------------------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        predicted = self(batch["target"]).argmax(1)
        self.scores.update(stage, predicted, self.targets(batch))
        return {"name": batch["name"]}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "test")

    def _log_scores(self, stage: str) -> dict[str, float]:
        scalars, table = self.scores.take(stage, self.class_names)
        if self.trainer.sanity_checking:
            return {}
        self.log_dict(scalars)
        if stage == "test":
            self.test_per_class_iou = table
        return {k: float(v) for k, v in scalars.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_scores("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        raise ConfigError("a Segmenter has no predict: it scores photos with pix2pix-lit eval FAKE_DIR --labels "
                          "LABEL_DIR --segmenter CKPT (or model.segmenter during a label -> photo training)")

    def grid_rows(self, batch: dict[str, Any]) -> tuple[list[list[torch.Tensor]], Optional[float], str]:
        """Photo | predicted classes | label classes, in the label palette's colours (no L1: ``None``)."""
        with torch.no_grad():
            predicted = self(batch["target"].to(self.device)).argmax(1).cpu()
        truth = self.targets(batch)
        rows = [[photo, colorize(p[None, None])[0], colorize(t[None, None])[0]]
                for photo, p, t in zip(batch["target"], predicted, truth)]
        return rows, None, "photo | predicted classes | label classes"

    # -- exact resume ---------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_state.save(checkpoint, self)  # dropout in the heads draws from the RNG Lightning does not store

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_state.load(checkpoint)

    def on_train_start(self) -> None:
        self.training_state.resume()  # after the sanity check, as the GANs do


# -- the scorer a file names (here, not in segmentation.py: it builds a Segmenter) --------------------------------
def load_scorer(spec: str, weights: Optional[str] = None, class_mapping: Optional[str] = None,
                option: str = "--segmenter") -> Scorer:
    """The scorer ``spec`` names: a Segmenter checkpoint (its classes and mapping as trained), or
    ``torchvision:NAME`` with ``weights`` (a state dict of that model; its classes read from the file, the
    label ids mapped by ``class_mapping``)."""
    check_scorer_spec(spec, weights, option)
    if spec.startswith(TORCHVISION_PREFIX):
        net, num_classes, digest = torchvision_scorer(spec[len(TORCHVISION_PREFIX):], weights, f"{option}_weights")
        if class_mapping is not None:
            check_choice("--class_mapping", class_mapping, CLASS_MAPPINGS)
        names = class_names_for(num_classes, class_mapping)
        about = {"segmenter": spec, "weights": str(weights), "weights_sha256": digest}
        return Scorer(net.eval(), num_classes, class_mapping, names, about)
    ckpt = load_checkpoint(spec)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if not hparams.pop("_class_path", "").endswith(".Segmenter"):
        raise CheckpointError(f"{option} {spec} is not a Segmenter checkpoint; train one with pix2pix-lit fit -c "
                              "configs/segmenter/... or pass torchvision:NAME with weights")
    hparams.pop("_instantiator", None)
    model = Segmenter(**hparams)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{option} {spec}: its weights do not fit its own settings ({str(e).splitlines()[0]})") \
            from None
    if class_mapping not in (None, model.hparams.class_mapping):
        raise ConfigError(f"--class_mapping {class_mapping}: the segmenter {spec} was trained with class_mapping "
                          f"{model.hparams.class_mapping}; leave the option out")
    about = {"segmenter": str(spec), "arch": model.hparams.arch, "trained_steps": int(ckpt.get("global_step", 0))}
    names = class_names_for(model.num_classes, model.hparams.class_mapping, ckpt.get("datamodule_hyper_parameters"))
    return Scorer(model.net.eval(), model.num_classes, model.hparams.class_mapping, names, about)
