"""Names shared by training, evaluation, export and serving, defined once."""

from __future__ import annotations

from typing import Literal, get_args

# which way a model translates: A -> B or B -> A (paired data swaps the images; two-way models pick a generator)
Direction = Literal["AtoB", "BtoA"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
# how a generator runs at evaluation: ``paper`` = the official test.py without --eval (dropout on, every image
# normalised with its own statistics); ``eval`` = the official --eval (dropout off, running statistics)
InferenceMode = Literal["paper", "eval"]
INFERENCE_MODES: tuple[str, ...] = get_args(InferenceMode)
# export and serve default to ``eval``: their outputs must not be random, and ``paper`` keeps dropout on
SERVING_INFERENCE_MODE = "eval"

# metrics where a larger value is better; every other metric logged here (FID, KID, MiFID, L1, losses) is
# lower-is-better. One rule for the best checkpoint, the plateau LR policy and `compare`.
HIGHER_IS_BETTER = ("ssim", "psnr", "miou", "pixel_acc", "class_acc")
# the suffix of a two-way model's metric names: which domain it scores
DOMAIN_SUFFIXES = ("_A", "_B")


def higher_is_better(metric: str) -> bool:
    """``val/ssim``, ``test/psnr_A``, ``val/miou``: True; ``val/fid_B``, ``val/l1``, ``train/loss_G``: False."""
    name = metric.rsplit("/", 1)[-1]
    for suffix in DOMAIN_SUFFIXES:
        name = name.removesuffix(suffix)
    return name in HIGHER_IS_BETTER


def metric_mode(metric: str) -> str:
    """Lightning's ``mode`` for ``metric``: ``max`` or ``min``."""
    return "max" if higher_is_better(metric) else "min"
