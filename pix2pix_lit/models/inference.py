"""How every model here runs its generators outside training: the inference modes, ``generate``, the EMA
generator as the one evaluated, and ``predict`` at any image size.

:class:`Inference` is mixed into :class:`~pix2pix_lit.models.base.ImageTranslationModel`; a model fills in
``generator_for`` (and ``grid_rows`` for the image grids).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_lit.checkpoints import EMA_SUFFIX
from pix2pix_lit.data.labels import colorize, one_hot, semantic_channels
from pix2pix_lit.data.transforms import crop_box, pad_to_multiple
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.modes import DIRECTIONS
from pix2pix_lit.nets.norm import batch_norm_per_image, has_active_dropout


class Inference(pl.LightningModule):
    """The inference side of a model (see the module docstring)."""

    @property
    def size_multiple(self) -> int:
        """What image sides every generator accepts must divide by."""
        return max(getattr(self, n).size_multiple for n in self.generator_names)

    @property
    def min_size(self) -> int:
        """The smallest image side every generator accepts (a multiple of :attr:`size_multiple`)."""
        side = max(getattr(getattr(self, n), "min_size", 1) for n in self.generator_names)
        return side + (-side % self.size_multiple)

    def source_channels(self, input_nc: int) -> int:
        """The channels of :meth:`network_input`: ``input_nc`` for images; for label maps one per class
        (+ don't-care) (+ the instance edges)."""
        h = self.hparams
        if not h.get("label_nc"):
            return input_nc
        return semantic_channels(h.label_nc, h.contain_dontcare_label, not h.no_instance)

    def network_input(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the generator (and a conditional discriminator) sees of a batch's ``source``: the image, or the
        label map one-hot encoded here (the data keeps the small ids) with the instance edges stacked on."""
        source, h = batch["source"], self.hparams
        if not h.get("label_nc"):
            return source
        x = one_hot(source.to(self.device), h.label_nc + int(h.contain_dontcare_label))
        if not h.no_instance:
            if "edges" not in batch:
                raise ConfigError("this model takes instance edges (model.no_instance false) but the data gives none; "
                                  "give the data instance maps (data.instance_dir) or train with data.no_instance true")
            x = torch.cat([x, batch["edges"].to(x.device, x.dtype)], 1)
        return x

    def shown_source(self, batch: dict[str, Any]) -> torch.Tensor:
        """A batch's sources as images in [-1, 1] for the grids (label maps in a fixed palette)."""
        if not self.hparams.label_nc:
            return batch["source"]
        return colorize(batch["source"])

    @property
    def generator_label(self) -> str:
        """The generator's name in messages: the model's ``netG`` where it has that option, else its class."""
        return str(self.hparams["netG"]) if "netG" in self.hparams else type(self).__name__

    @property
    def predict_direction(self) -> str:
        """The way ``predict`` translates: a two-way model's ``model.predict_direction`` (CycleGAN), else AtoB (a
        one-way model: the data resolved the direction)."""
        return str(self.hparams["predict_direction"]) if "predict_direction" in self.hparams else "AtoB"

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ConfigError(
                f"images are {h}x{w} but netG={self.generator_label} needs sides divisible by {m}; "
                f"set data.crop_size to a multiple of {m} (or choose another netG)"
            )

    def generator_for(self, direction: str = "AtoB") -> str:
        """The name of the generator that translates in ``direction`` (a one-way model: its generator, the data
        having resolved the direction)."""
        raise NotImplementedError

    def inference_net(self, direction: str = "AtoB") -> nn.Module:
        """The network validation, test, predict and export run for ``direction``: the EMA copy if there is one
        (and ``use_ema_for_eval``), else the generator."""
        name = self.generator_for(direction)
        ema = self.ema_of(name)
        if ema is not None and self.hparams.use_ema_for_eval:
            return ema.module
        return getattr(self, name)

    def inference_net_name(self, direction: str = "AtoB") -> str:
        name = self.generator_for(direction)
        return f"{name}{EMA_SUFFIX}" if self.inference_net(direction) is not getattr(self, name) else name

    @property
    def inference_G_name(self) -> str:
        """The generator(s) that evaluation runs, e.g. ``G_ema`` or ``G_A_ema+G_B_ema`` (named in metrics.json)."""
        dirs = DIRECTIONS if len(self.generator_names) > 1 else ("AtoB",)
        return "+".join(self.inference_net_name(d) for d in dirs)

    @contextmanager
    def inference(self, net: nn.Module) -> Iterator[None]:
        """``net`` in the chosen inference mode (see ``inference_mode``); changes no parameter or buffer."""
        was_training = net.training
        if self.hparams.inference_mode == "eval":
            net.eval()
            context, buffers = nullcontext(), {}
        else:  # paper: dropout on, batch norm with the statistics of the images given
            net.train()
            context = batch_norm_per_image(net)
            # a train-mode forward also steps what else keeps state (spectral norm's power iteration): put it back
            buffers = {name: b.clone() for name, b in net.named_buffers()}
        try:
            with context:
                yield
        finally:
            net.train(was_training)
            with torch.no_grad():
                for name, b in net.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])

    @torch.no_grad()
    def generate(self, source: torch.Tensor, direction: str = "AtoB", **inputs: torch.Tensor) -> torch.Tensor:
        """The translation of ``source`` in ``direction``, in the configured inference mode, as float in [-1, 1];
        ``inputs`` go to the generator too (SPADE's style code ``z``).

        In ``paper`` mode every image is normalised with its own statistics, as in the official test (batch
        size 1), whatever the eval batch size or the number of processes; with dropout, images go through one
        after another, so a seed gives the same masks for any batch split.
        """
        source = self.prep(source)
        net = self.autocast_ready(self.inference_net(direction), source.device.type)
        with self.inference(net):
            if self.hparams.inference_mode == "paper" and source.shape[0] > 1 and has_active_dropout(net):
                return torch.cat([net(x.unsqueeze(0), **{k: v[i:i + 1] for k, v in inputs.items()}).float()
                                  for i, x in enumerate(source)])
            return net(source, **inputs).float()

    def forward(self, source: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        """``model(x)``: what evaluation and predict run (:meth:`generate`), for every model the same."""
        return self.generate(source, direction)

    def grid_rows(self, batch: dict[str, torch.Tensor]) -> tuple[list[list[torch.Tensor]], float, str]:
        """Rows of images for the grids of fixed samples, their L1 and what the columns are."""
        raise NotImplementedError

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Any image size: padded to what the generator accepts (or resized), translated (whole, or in tiles
        with ``predict_tile``), brought back."""
        direction = self.predict_direction
        if self.hparams.predict_fit == "resize":
            source = self.network_input(batch)
            h, w = source.shape[-2:]
            s = self.hparams.predict_size
            if self.hparams.label_nc:  # one-hot classes and edges stay 0/1
                x = F.interpolate(source.float(), size=(s, s), mode="nearest")
            else:  # antialiased bicubic, as PIL resizes the training images (plain bicubic aliases when shrinking)
                x = F.interpolate(source.float(), size=(s, s), mode="bicubic", align_corners=False,
                                  antialias=True).clamp(-1, 1)
            fake = self.generate(x, direction)
            fake = F.interpolate(fake, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
            return {"fake": fake, "name": batch["name"]}
        # the batch's own tensors are padded (label ids as ids: reflecting commutes with the per-pixel one-hot),
        # and each tile encoded on its own, so a large label map is never one-hot encoded whole
        padded, box = {}, None
        for key in ("source", "edges"):
            if key in batch:
                padded[key], box = pad_to_multiple(batch[key], self.size_multiple, self.min_size)
                padded[key] = padded[key].to(batch[key].dtype)
        tile = self.hparams.predict_tile
        if tile and max(padded["source"].shape[-2:]) > tile:
            fake = self.generate_tiled(padded, direction, tile)
        else:
            fake = self.generate(self.network_input(padded), direction)
        return {"fake": crop_box(fake, box), "name": batch["name"]}

    @torch.no_grad()
    def generate_tiled(self, batch: dict[str, torch.Tensor], direction: str, tile: int) -> torch.Tensor:
        """:meth:`generate` of a batch's ``source`` (and ``edges``) tile by tile: tiles of ``tile`` pixels a side
        (or the image's side where it is smaller) overlapping by ``predict_tile_overlap``, the last of each row and
        column flush with the edge; every output pixel is the average of the tiles covering it, each weighted by
        its distance from that tile's edge (linear across the overlap), so no seam is a hard edge. Peak memory is
        one tile's."""
        overlap = self.hparams.predict_tile_overlap
        overlap = tile // 4 if overlap is None else overlap
        height, width = batch["source"].shape[-2:]
        th, tw = min(tile, height), min(tile, width)
        out = weight = None
        for top in _tile_starts(height, th, overlap):
            for left in _tile_starts(width, tw, overlap):
                window = {k: v[..., top:top + th, left:left + tw] for k, v in batch.items()}
                y = self.generate(self.network_input(window), direction)
                w = _tile_weight(th, overlap, y)[:, None] * _tile_weight(tw, overlap, y)[None, :]
                if out is None:
                    out = y.new_zeros(*y.shape[:2], height, width)
                    weight = y.new_zeros(height, width)
                out[..., top:top + th, left:left + tw] += y * w
                weight[top:top + th, left:left + tw] += w
        return out / weight


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` start along a side of ``length``: every ``tile - overlap``, the last flush."""
    if tile >= length:
        return [0]
    return sorted({*range(0, length - tile, tile - overlap), length - tile})


def _tile_weight(n: int, overlap: int, like: torch.Tensor) -> torch.Tensor:
    """1 inside a tile, falling linearly towards 0 over the ``overlap`` pixels at each end (never 0: a pixel
    only one tile covers keeps that tile's value)."""
    i = torch.arange(n, dtype=like.dtype, device=like.device)
    return (torch.minimum(i + 0.5, n - i - 0.5) / max(overlap, 1)).clamp(max=1.0)
