"""What a checkpoint holds besides the weights, so a resumed run goes on exactly — the training-state part of every
model here (the GANs and the Segmenter): the RNG states (dropout and the image pools draw from them; Lightning does
not store them), the model's class, the epoch counts settled, and what the model adds (its image pools, the
count of skipped non-finite steps). A plain object; no Trainer needed.
"""

from __future__ import annotations

from typing import Any, Optional

from pix2pix_lit.checkpoints import collect_rng_states, set_rng_states
from pix2pix_lit.lightning_internals import settle_epoch_counts

KEY = "pix2pix_lit"  # the checkpoint's entry for this state


class TrainingState:
    def __init__(self) -> None:
        self.rng_to_restore: Optional[dict[str, Any]] = None

    @staticmethod
    def save(checkpoint: dict[str, Any], model: Any, **extra: Any) -> None:
        """Into ``checkpoint``: ``model``'s class (also for models built in Python; LightningCLI writes it for its
        own), the epoch counts settled when saved after the last batch (``lightning_internals``), the RNG states
        and ``extra``."""
        checkpoint.setdefault("hyper_parameters", {}).setdefault(
            "_class_path", f"{type(model).__module__}.{type(model).__qualname__}")
        settle_epoch_counts(model._trainer, checkpoint)
        checkpoint[KEY] = {"rng_states": collect_rng_states(), **extra}

    def load(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """What :meth:`save` wrote (the RNG states kept for :meth:`resume`)."""
        state = checkpoint.get(KEY, {})
        self.rng_to_restore = state.get("rng_states")
        return state

    def resume(self) -> None:
        """At the start of training (after the sanity check): the RNG goes on where the saved run left it."""
        if self.rng_to_restore is not None:
            set_rng_states(self.rng_to_restore)
            self.rng_to_restore = None
