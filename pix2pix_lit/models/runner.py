"""How a trained generator is run — the part of a model that validation, test, predict and export share: the
inference mode, the network evaluated (the EMA copy or the generator), ``generate`` and ``predict`` at any image
size (padded, resized or in tiles). A plain object: it holds options, not networks, and needs no Trainer.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_lit.data.transforms import crop_box, pad_to_multiple, translate_in_tiles
from pix2pix_lit.errors import ConfigError, check_choice
from pix2pix_lit.modes import INFERENCE_MODES, InferenceMode
from pix2pix_lit.nets.norm import has_active_dropout, in_inference_mode
from pix2pix_lit.precision import EvalPassWeights


class GeneratorRunner:
    """``inference_mode``, ``predict_fit``, ``predict_size``, ``predict_tile``, ``predict_tile_overlap`` and
    ``use_ema_for_eval`` of :class:`~pix2pix_lit.models.base.ImageTranslationModel` (documented there)."""

    def __init__(self, inference_mode: InferenceMode = "paper", predict_fit: str = "pad", predict_size: int = 256,
                 predict_tile: int = 0, predict_tile_overlap: Optional[int] = None, use_ema_for_eval: bool = True):
        check_choice("model.inference_mode", inference_mode, INFERENCE_MODES)
        check_choice("model.predict_fit", predict_fit, ("pad", "resize"))
        if predict_tile and predict_fit != "pad":
            raise ConfigError(f"model.predict_tile={predict_tile}: give a tile side in pixels (with model.predict_fit "
                              "pad), or 0 for whole images")
        if predict_tile_overlap is not None and not 0 <= 2 * predict_tile_overlap <= predict_tile:
            raise ConfigError(f"model.predict_tile_overlap={predict_tile_overlap} must be between 0 and half of "
                              f"model.predict_tile={predict_tile}")
        self.mode, self.fit, self.size, self.use_ema = inference_mode, predict_fit, predict_size, use_ema_for_eval
        self.tile = predict_tile
        self.overlap = predict_tile // 4 if predict_tile_overlap is None else predict_tile_overlap
        self.pass_weights = EvalPassWeights()  # weights cast once per evaluation pass under autocast

    def check_sizes(self, size_multiple: int, min_size: int, label: str) -> None:
        """``predict_size`` and ``predict_tile`` against what the generator accepts (named ``label``)."""
        if self.size % size_multiple:
            raise ConfigError(f"model.predict_size={self.size} must be a multiple of {size_multiple} for netG={label}")
        if self.tile and (self.tile % size_multiple or self.tile < min_size):
            raise ConfigError(f"model.predict_tile={self.tile} must be a multiple of {size_multiple} and at least "
                              f"{min_size} for netG={label}")

    def pick(self, generator: nn.Module, ema: Optional[nn.Module]) -> nn.Module:
        """The network evaluated: the EMA copy where there is one (and ``use_ema_for_eval``), else the generator."""
        return ema.module if ema is not None and self.use_ema else generator

    @torch.no_grad()
    def generate(self, net: nn.Module, source: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """``net(source, **inputs)`` in the inference mode, as float. In ``paper`` mode with dropout, images go
        through one after another, so a seed gives the same masks for any batch split (and batch norm sees each
        image's own statistics, as the official test at batch size 1, whatever the batch)."""
        with in_inference_mode(net, self.mode):
            if self.mode == "paper" and source.shape[0] > 1 and has_active_dropout(net):
                return torch.cat([net(x.unsqueeze(0), **{k: v[i:i + 1] for k, v in inputs.items()}).float()
                                  for i, x in enumerate(source)])
            return net(source, **inputs).float()

    def predict(self, batch: dict[str, torch.Tensor], run: Callable[[torch.Tensor], torch.Tensor],
                encode: Callable[[dict[str, torch.Tensor]], torch.Tensor], size_multiple: int, min_size: int,
                label_maps: bool) -> torch.Tensor:
        """The translation of a batch's ``source`` (and ``edges``) of any size: ``encode`` makes the network input
        of a batch, ``run`` translates it. ``resize``: to ``predict_size`` and back. ``pad``: reflect-padded to
        what the generator accepts and cropped back, whole or in tiles."""
        if self.fit == "resize":
            source = encode(batch)
            h, w = source.shape[-2:]
            if label_maps:  # one-hot classes and edges stay 0/1
                x = F.interpolate(source.float(), size=(self.size, self.size), mode="nearest")
            else:  # antialiased bicubic, as PIL resizes the training images (plain bicubic aliases when shrinking)
                x = F.interpolate(source.float(), size=(self.size, self.size), mode="bicubic", align_corners=False,
                                  antialias=True).clamp(-1, 1)
            return F.interpolate(run(x), size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
        # the batch's own tensors are padded (label ids as ids: reflecting commutes with the per-pixel one-hot),
        # and each tile encoded on its own, so a large label map is never one-hot encoded whole
        padded, box = {}, None
        for key in ("source", "edges"):
            if key in batch:
                padded[key], box = pad_to_multiple(batch[key], size_multiple, min_size)
                padded[key] = padded[key].to(batch[key].dtype)
        if self.tile and max(padded["source"].shape[-2:]) > self.tile:
            return crop_box(translate_in_tiles(padded, lambda window: run(encode(window)), self.tile, self.overlap), box)
        return crop_box(run(encode(padded)), box)
