"""The official image buffer of fakes that the discriminators see (Shrivastava et al. 2017)."""

from __future__ import annotations

import random

import torch


class ImagePool:
    """The official image buffer: D sees a mix of current and past fakes (``pool_size=0`` disables it).

    Each call returns, image by image, either the new image or (with probability 1/2, once the pool is
    full) a stored one that the new image replaces. Draws from Python's ``random`` (its state is in checkpoints).
    """

    def __init__(self, pool_size: int) -> None:
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                i = random.randint(0, self.pool_size - 1)
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)
