"""Differentiable augmentation of what D sees (DiffAugment, Zhao et al., NeurIPS 2020): with ~1k training images D
memorises the real set; augmenting every image it judges — real and fake alike, differentiably so G still learns
through it — keeps it from doing so. For a conditional D the unit is the pair (source, image): one draw of the
parameters moves and cuts both halves of a pair the same way, and the real and the fake pairs of a step share
the draw, so the augmentation itself never tells them apart (and feature matching compares like with like).

Policies (DiffAugment's, its strengths): ``color`` — brightness ±0.5, saturation ×[0, 2], contrast ×[0.5, 1.5] on
the image half (the source is a condition, not a photo); ``translation`` — a shift of up to 1/8 of each side,
zeros (grey) where the image left; ``cutout`` — a square of half each side set to zero.
"""

from __future__ import annotations

from typing import Optional

import torch

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> its parts, checked (``""``: none)."""
    from pix2pix_lit.errors import ConfigError

    parts = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ConfigError(f"model.diff_augment={policy!r}: {unknown[0]} is not a policy; use a comma-separated "
                          f"choice of {', '.join(POLICIES)} (or an empty string for none)")
    return parts


def sample(policy: tuple[str, ...], n: int, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One draw of every parameter the policy needs, for ``n`` images of ``height`` x ``width``."""
    draw: dict[str, torch.Tensor] = {}
    if "color" in policy:
        draw["brightness"] = torch.rand(n, 1, 1, 1, device=device) - 0.5
        draw["saturation"] = torch.rand(n, 1, 1, 1, device=device) * 2
        draw["contrast"] = torch.rand(n, 1, 1, 1, device=device) + 0.5
    if "translation" in policy:
        for side, size in (("dy", height), ("dx", width)):
            reach = int(size * 0.125 + 0.5)
            draw[side] = torch.randint(-reach, reach + 1, (n,), device=device)
    if "cutout" in policy:
        for side, size in (("cy", height), ("cx", width)):
            draw[side] = torch.randint(0, size + (1 - size % 2), (n,), device=device)
    return draw


def apply(pair: torch.Tensor, draw: dict[str, torch.Tensor], image_channels: int) -> torch.Tensor:
    """``pair`` (N, source + image channels, H, W) augmented by ``draw``; the color policy on the last
    ``image_channels`` channels, the others on all."""
    x = pair
    if "brightness" in draw:
        source, image = x[:, :-image_channels], x[:, -image_channels:]
        image = image + draw["brightness"]
        mean = image.mean(dim=1, keepdim=True)
        image = (image - mean) * draw["saturation"] + mean
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (image - mean) * draw["contrast"] + mean
        x = torch.cat([source, image], 1)
    n, _, h, w = x.shape
    if "dy" in draw:  # integer shifts: each output pixel is an input pixel or zero
        rows = torch.arange(h, device=x.device).view(1, h, 1) - draw["dy"].view(n, 1, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w) - draw["dx"].view(n, 1, 1)
        inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
        index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
        x = x.flatten(2).gather(2, index).view_as(x) * inside
    if "cy" in draw:
        half_h, half_w = (h + 1) // 2, (w + 1) // 2
        rows = torch.arange(h, device=x.device).view(1, h, 1) - (draw["cy"].view(n, 1, 1) - half_h // 2)
        cols = torch.arange(w, device=x.device).view(1, 1, w) - (draw["cx"].view(n, 1, 1) - half_w // 2)
        cut = ((rows >= 0) & (rows < half_h) & (cols >= 0) & (cols < half_w)).unsqueeze(1)
        x = x * ~cut
    return x


class DiffAugment:
    """``model.diff_augment``: :func:`sample` once per step, :func:`apply` to each pair D judges in it."""

    def __init__(self, policy: str, image_channels: int) -> None:
        self.policy, self.image_channels = parse_policy(policy), image_channels
        self.draw: Optional[dict[str, torch.Tensor]] = None

    def __bool__(self) -> bool:
        return bool(self.policy)

    def new_draw(self, like: torch.Tensor) -> None:
        n, _, h, w = like.shape
        self.draw = sample(self.policy, n, h, w, like.device)

    def __call__(self, pair: torch.Tensor) -> torch.Tensor:
        if not self.policy:
            return pair
        if self.draw is None or next(iter(self.draw.values())).shape[0] != pair.shape[0]:
            self.new_draw(pair)
        return apply(pair, self.draw, self.image_channels)

