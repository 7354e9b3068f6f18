"""Joint transforms: the official pix2pix preprocessing, with one set of random parameters per pair."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from PIL import Image

from pix2pix_lit.errors import ConfigError, check_choice

PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none", "fixed")
_BICUBIC = Image.Resampling.BICUBIC
_NEAREST = Image.Resampling.NEAREST


class JointTransform:
    """Apply the same resize / crop / flip to every image of a pair.

    ``train=True`` draws the crop position and flip from ``rng`` like the official ``get_params``;
    ``train=False`` (val/test) takes the centre crop and never flips, so metrics are repeatable.
    ``fixed`` (SPADE's): every image resized to ``crop_size`` x ``crop_size / aspect_ratio`` (e.g. Cityscapes
    512x256), no crop. Images named in ``nearest`` (label and instance maps) are resized nearest-neighbour.
    """

    def __init__(
        self, preprocess: str = "resize_and_crop", load_size: int = 286, crop_size: int = 256, flip: bool = True,
        train: bool = True, aspect_ratio: float = 1.0,
    ) -> None:
        check_choice("data.preprocess", preprocess, PREPROCESS)
        if load_size < 1 or crop_size < 1:
            raise ConfigError(f"data.load_size={load_size} and data.crop_size={crop_size} must be positive")
        if aspect_ratio <= 0:
            raise ConfigError(f"data.aspect_ratio={aspect_ratio} must be positive (width / height, e.g. 2.0)")
        if preprocess in ("resize_and_crop", "scale_width_and_crop") and crop_size > load_size:
            raise ConfigError(
                f"data.crop_size={crop_size} is larger than data.load_size={load_size}; "
                f"set crop_size <= load_size (e.g. load_size {crop_size + crop_size // 8}, crop_size {crop_size})"
            )
        self.preprocess, self.load_size, self.crop_size = preprocess, load_size, crop_size
        self.flip, self.train, self.aspect_ratio = flip, train, aspect_ratio

    def __repr__(self) -> str:
        ratio = f", aspect_ratio={self.aspect_ratio}" if self.preprocess == "fixed" else ""
        return (f"JointTransform({self.preprocess}, load_size={self.load_size}, crop_size={self.crop_size}, "
                f"flip={self.flip}, train={self.train}{ratio})")

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        if self.preprocess == "resize_and_crop":
            return self.load_size, self.load_size
        if self.preprocess == "fixed":
            return self.crop_size, round(self.crop_size / self.aspect_ratio)
        if "scale_width" in self.preprocess:
            if w == self.load_size and h >= self.crop_size:
                return w, h
            return self.load_size, int(max(self.load_size * h / w, self.crop_size))
        return w, h

    def params(self, size: tuple[int, int], rng: random.Random) -> tuple[int, int, bool]:
        """Crop position (x, y) and flip for an image of ``size`` = (w, h)."""
        new_w, new_h = self._resized_size(*size)
        max_x, max_y = max(0, new_w - self.crop_size), max(0, new_h - self.crop_size)
        if not self.train:
            return max_x // 2, max_y // 2, False
        x, y = rng.randint(0, max_x), rng.randint(0, max_y)
        flip = self.flip and rng.random() > 0.5
        return x, y, flip

    def apply(self, img: Image.Image, x: int, y: int, flip: bool, ids: bool = False) -> Image.Image:
        """``img`` resized, cropped at (x, y) and flipped; ``ids``: an id map (resized nearest-neighbour)."""
        resample = _NEAREST if ids else _BICUBIC
        w, h = img.size
        new_w, new_h = self._resized_size(w, h)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample)
        if "crop" in self.preprocess and (new_w > self.crop_size or new_h > self.crop_size):
            img = img.crop((x, y, x + self.crop_size, y + self.crop_size))
        if self.preprocess == "none":
            img = _make_multiple(img, 4, resample)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __call__(self, images: list[Image.Image], rng: random.Random, nearest: tuple[int, ...] = ()) -> list[Image.Image]:
        """The same crop and flip for every image; those at the indices ``nearest`` are id maps."""
        x, y, flip = self.params(images[0].size, rng)
        return [self.apply(img, x, y, flip, ids=i in nearest) for i, img in enumerate(images)]


def _make_multiple(img: Image.Image, base: int, resample: Image.Resampling = _BICUBIC) -> Image.Image:
    ow, oh = img.size
    w, h = max(base, int(round(ow / base) * base)), max(base, int(round(oh / base) * base))
    return img if (w, h) == (ow, oh) else img.resize((w, h), resample)


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 1) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (N, C, H, W) images so both sides divide by ``multiple`` and are at least ``min_size`` (reflect, or
    replicate when an image is too small to reflect), centred; returns them and the (top, left, height, width)
    box to crop back."""
    h, w = x.shape[-2:]

    def target(side: int) -> int:
        side = max(side, min_size)
        return side + (-side % multiple)

    ph, pw = target(h) - h, target(w) - w
    if not (ph or pw):
        return x, (0, 0, h, w)
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x.float(), pad, mode=mode), (pad[2], pad[0], h, w)


def crop_box(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return x[..., top:top + h, left:left + w]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` start along a side of ``length``: every ``tile - overlap``, the last flush."""
    if tile >= length:
        return [0]
    return sorted({*range(0, length - tile, tile - overlap), length - tile})


def tile_weight(n: int, overlap: int, like: torch.Tensor) -> torch.Tensor:
    """1 inside a tile, falling linearly towards 0 over the ``overlap`` pixels at each end (never 0: a pixel
    only one tile covers keeps that tile's value)."""
    i = torch.arange(n, dtype=like.dtype, device=like.device)
    return (torch.minimum(i + 0.5, n - i - 0.5) / max(overlap, 1)).clamp(max=1.0)


def translate_in_tiles(batch: dict[str, torch.Tensor], translate, tile: int, overlap: int) -> torch.Tensor:
    """``translate`` (a batch dict -> images) run on tiles of ``tile`` pixels a side (or the image's side where
    smaller) overlapping by ``overlap``, the last of each row and column flush with the edge; each output pixel
    the average of the tiles covering it, weighted linearly across each overlap (no hard seam). Peak memory is
    one tile's."""
    height, width = batch["source"].shape[-2:]
    th, tw = min(tile, height), min(tile, width)
    out = weight = None
    for top in tile_starts(height, th, overlap):
        for left in tile_starts(width, tw, overlap):
            y = translate({k: v[..., top:top + th, left:left + tw] for k, v in batch.items()})
            w = tile_weight(th, overlap, y)[:, None] * tile_weight(tw, overlap, y)[None, :]
            if out is None:
                out, weight = y.new_zeros(*y.shape[:2], height, width), y.new_zeros(height, width)
            out[..., top:top + th, left:left + tw] += y * w
            weight[top:top + th, left:left + tw] += w
    return out / weight
