"""The joint transforms: one crop and flip for both images of a pair, a deterministic centre for evaluation."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.data import AlignedDataset
from pix2pix_lit.data.transforms import JointTransform

from conftest import write_aligned


@pytest.mark.parametrize("preprocess", ["crop", "resize_and_crop", "scale_width_and_crop", "none"])
def test_joint_transform_same_crop_and_flip(tmp_path, preprocess):
    """B = 255 - A pixel for pixel: after the joint transform, target must still be -source."""
    files = write_aligned(tmp_path / "train", 6, size=48, fn=lambda a: 255 - a)
    tf = JointTransform(preprocess, load_size=40 if preprocess != "crop" else 48, crop_size=32, flip=True, train=True)
    ds = AlignedDataset(files, tf)
    flips, positions = 0, set()
    for i in range(len(ds)):
        for epoch_seed in range(8):
            item = ds[(i, epoch_seed)]
            src, tgt = item["source"], item["target"]
            # resizing is interpolation (linear, up to 8-bit clipping): the relation survives within rounding
            tol = 1e-6 if preprocess == "crop" else 0.15
            assert torch.allclose(tgt, -src, atol=tol), preprocess
            if preprocess == "crop":
                x, y, flip = tf.params((48, 48), random.Random(epoch_seed))
                flips += flip
                positions.add((x, y))
    if preprocess == "crop":
        assert 0 < flips < 6 * 8 and len(positions) > 3  # the randomness is really there


def test_joint_transform_is_misalignment_sensitive(tmp_path):
    """The check above can fail: cropping A and B at different places breaks the relation."""
    (path,) = write_aligned(tmp_path, 1, size=48)
    img = Image.open(path)
    a, b = img.crop((0, 0, 48, 48)), img.crop((48, 0, 96, 48))
    tf = JointTransform("crop", 48, 32, flip=False)
    ta = np.asarray(tf.apply(a, 0, 0, False), dtype=int)
    tb = np.asarray(tf.apply(b, 5, 3, False), dtype=int)
    assert not np.array_equal(255 - ta, tb)


def test_eval_transform_is_center_and_deterministic(tmp_path):
    files = write_aligned(tmp_path, 2, size=40)
    ds = AlignedDataset(files, JointTransform("crop", 40, 32, train=False))
    a, b = ds[(0, 1)]["source"], ds[(0, 2)]["source"]
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    full = torch.from_numpy(np.asarray(Image.open(files[0]))).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(a, full[:, 4:36, 4:36])
