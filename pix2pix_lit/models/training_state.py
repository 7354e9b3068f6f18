"""What a checkpoint holds besides the weights, so a resumed run goes on exactly: the RNG states (dropout and the
image pools draw from them), the image pools, the count of skipped non-finite steps, the model's class; and the
EMA key rules applied when a checkpoint is loaded.

:class:`TrainingState` is mixed into :class:`~pix2pix_lit.models.base.ImageTranslationModel`; a model with pools
names them in ``image_pools()``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

from pix2pix_lit.checkpoints import align_ema_weights, collect_rng_states, set_rng_states
from pix2pix_lit.lightning_internals import settle_epoch_counts
from pix2pix_lit.nets.image_pool import ImagePool

log = logging.getLogger(__name__)


class TrainingState(pl.LightningModule):
    """The checkpoint state of a model (see the module docstring)."""

    def image_pools(self) -> dict[str, ImagePool]:
        """The algorithm's image pools by name (saved in checkpoints for exact resume)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not store RNG states; dropout and the image pools draw from them, so exact resume
        # needs them. The data order and augmentation are seeded per epoch (SeededSampler).
        # which model class this is, also for models built in Python (LightningCLI writes it for its own)
        checkpoint.setdefault("hyper_parameters", {}).setdefault(
            "_class_path", f"{type(self).__module__}.{type(self).__qualname__}")
        settle_epoch_counts(self._trainer, checkpoint)  # saved after the last batch: resumable as such
        checkpoint["pix2pix_lit"] = {
            "rng_states": collect_rng_states(),
            "image_pools": {k: [t.cpu() for t in pool.images] for k, pool in self.image_pools().items()},
            "nonfinite_total": self.nonfinite_total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.get("state_dict", {})
        for name in self.generator_names:
            done = align_ema_weights(weights, name, self.ema_of(name) is not None)
            if done:
                log.info(done)
        state = checkpoint.get("pix2pix_lit", {})
        self._rng_to_restore = state.get("rng_states")
        self.restore_pools(state)
        self.nonfinite_total = int(state.get("nonfinite_total", 0))

    def restore_pools(self, state: dict[str, Any]) -> None:
        saved = state.get("image_pools", {})
        for name, pool in self.image_pools().items():
            pool.images = list(saved.get(name, []))

    def resume_training_state(self) -> None:
        """At the start of training: the RNG states of the checkpoint resumed from, and the pools on the device."""
        if getattr(self, "_rng_to_restore", None) is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        for pool in self.image_pools().values():
            pool.images = [t.to(self.device) for t in pool.images]
