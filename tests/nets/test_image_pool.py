"""The image pool against the official buffer."""

import random

import torch

from pix2pix_lit.nets.image_pool import ImagePool


def test_image_pool_follows_the_official_buffer(monkeypatch):
    pool = ImagePool(2)
    x = [torch.full((1, 1, 2, 2), float(i)) for i in range(5)]
    assert torch.equal(pool.query(torch.cat(x[:2])), torch.cat(x[:2]))  # filling: the images themselves
    draws = iter([0.9, 0.1])  # first a swap with stored image 1, then the new image as is
    monkeypatch.setattr(random, "uniform", lambda lo, hi: next(draws))
    monkeypatch.setattr(random, "randint", lambda lo, hi: 1)
    out = pool.query(torch.cat(x[2:4]))
    assert out[0, 0, 0, 0] == 1.0 and out[1, 0, 0, 0] == 3.0  # the old image 1 returned, image 3 passed through
    assert [t[0, 0, 0, 0].item() for t in pool.images] == [0.0, 2.0]  # image 2 took its place
    assert torch.equal(ImagePool(0).query(x[4]), x[4])
