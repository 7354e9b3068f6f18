"""The official test protocol and the behaviours that change published numbers (issue: numbers you can publish)."""

import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim.lr_scheduler import ReduceLROnPlateau

from pix2pix_lit import Pix2Pix, SyntheticPairedDataModule
from pix2pix_lit.data import PairedDataModule
from pix2pix_lit.data.datasets import fingerprint
from pix2pix_lit.metrics import kid_subset_for

from conftest import TINY_MODEL, quiet_trainer


def framed_pair(folder, size=40):
    """One A|B file whose halves have a white frame around a black centre."""
    folder.mkdir(parents=True, exist_ok=True)
    half = np.zeros((size, size, 3), np.uint8)
    half[:4], half[-4:], half[:, :4], half[:, -4:] = 255, 255, 255, 255
    Image.fromarray(np.concatenate([half, half], 1)).save(folder / "0.png")
    return half


def test_val_test_images_are_resized_whole_not_cropped(tmp_path):
    half = framed_pair(tmp_path / "d" / "val")
    framed_pair(tmp_path / "d" / "train")
    dm = PairedDataModule(str(tmp_path / "d"), load_size=44, crop_size=32, num_workers=0)
    dm.setup("validate")
    src = dm.val_dataset[0]["source"]
    # the official test.py: load_size = crop_size, so the whole image, frame included, resized to 32
    ref = np.asarray(Image.fromarray(half).resize((32, 32), Image.Resampling.BICUBIC))
    assert torch.equal(src, torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1)
    assert src[:, 0, :].mean() > 0.9  # the white border is there
    # the old centre crop stays available: resize to 44, take the middle 32 (no frame left)
    cropped = PairedDataModule(str(tmp_path / "d"), load_size=44, crop_size=32, eval_load_size=44, num_workers=0)
    cropped.setup("validate")
    assert cropped.val_dataset[0]["source"][:, 0, :].mean() < -0.9


def bn_model(**kw):
    return Pix2Pix(**{**TINY_MODEL, "num_downs": 6, **kw})


def test_paper_mode_does_not_depend_on_eval_batch_size(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    deterministic = bn_model(no_dropout=True)
    whole = deterministic.generate(x)
    assert torch.allclose(whole, torch.cat([deterministic.generate(x[i:i + 1]) for i in range(4)]), atol=1e-6)
    assert torch.allclose(whole[:2], deterministic.generate(x[:2]), atol=1e-6)
    # a batch's own statistics would make image 0's output depend on the other images
    with torch.no_grad():
        shared = deterministic.G.train()(x)
    assert not torch.allclose(whole, shared, atol=1e-3)
    # with dropout the masks are drawn image after image: same seed, same outputs, any batch split
    dropout = bn_model()
    torch.manual_seed(1)
    a = dropout.generate(x)
    torch.manual_seed(1)
    b = torch.cat([dropout.generate(x[:2]), dropout.generate(x[2:])])
    assert torch.equal(a, b)
    buffers = {k: v.clone() for k, v in dropout.G.named_buffers()}
    dropout.generate(x)
    assert all(torch.equal(v, buffers[k]) for k, v in dropout.G.named_buffers())  # running statistics untouched


def test_image_pool_keeps_source_and_fake_together(tmp_path):
    random.seed(0)  # the pool's draws
    model = Pix2Pix(**{**TINY_MODEL, "pool_size": 3})
    made = []  # (source, fake) of every G forward, in order
    from_pool = 0
    g_forward, d_forward = model.G.forward, model.D.forward

    def g_spy(x):
        out = g_forward(x)
        made.append((x.detach().clone(), out.detach().clone()))
        return out

    def d_spy(x):
        nonlocal from_pool
        src, img = x[:, :3].detach(), x[:, 3:].detach()
        fakes = [j for j, (_, f) in enumerate(made) if torch.equal(f, img)]
        if fakes:  # a fake pair (real pairs hold targets, which G never made)
            j = fakes[0]
            assert torch.equal(made[j][0], src), "D was shown a fake beside another image's source"
            from_pool += j != len(made) - 1
        return d_forward(x)

    model.G.forward, model.D.forward = g_spy, d_spy
    dm = SyntheticPairedDataModule(str(tmp_path / "syn"), num_train=12, num_val=2, num_test=2, image_size=36,
                                   load_size=36, crop_size=32, batch_size=1, num_workers=0)
    quiet_trainer(max_steps=12, limit_val_batches=0).fit(model, dm)
    assert len(made) == 12 and from_pool > 0  # the pool did hand back older pairs


@pytest.mark.parametrize("monitor,values,cut", [
    ("val/ssim", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], False),  # improving: keep the LR
    ("val/psnr", [20, 19, 18, 17, 16, 15, 14, 13], True),  # getting worse: cut it
    ("val/fid", [100, 90, 80, 70, 60, 50, 40, 30], False),
    ("val/fid", [30, 40, 50, 60, 70, 80, 90, 100], True),
])
def test_plateau_follows_the_metric_direction(monitor, values, cut):
    model = Pix2Pix(**{**TINY_MODEL, "lr_policy": "plateau", "plateau_monitor": monitor})
    opt = torch.optim.Adam(model.G.parameters(), lr=1.0)
    sched = model.schedulers_for({"G": opt})[0]["scheduler"]
    assert isinstance(sched, ReduceLROnPlateau)
    for v in values:
        sched.step(v)
    assert (opt.param_groups[0]["lr"] < 1.0) == cut


def test_predict_resize_antialiases_like_pil():
    # vertical stripes of period 3 px: shrunk 300 -> 64 they must average to flat grey, not alias into bands
    row = np.array([255, 0, 0] * 100, np.uint8)
    img = np.repeat(row[None, :], 300, 0)
    src = torch.from_numpy(img).float()[None, None].expand(1, 3, 300, 300) / 127.5 - 1
    model = Pix2Pix(**{**TINY_MODEL, "predict_fit": "resize", "predict_size": 64})
    seen = []
    model.generate = lambda x, direction="AtoB": seen.append(x) or x
    model.predict_step({"source": src, "name": ["s.png"]}, 0)
    ours = seen[0][0, 0]
    pil = torch.from_numpy(np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BICUBIC))).float() / 127.5 - 1
    assert (ours - pil).abs().mean() < 0.02
    aliased = F.interpolate(src, size=(64, 64), mode="bicubic", align_corners=False)[0, 0]
    assert ours.std() < 0.05 < aliased.std()


def test_real_set_fingerprint_changes_with_data_and_limits(tmp_path):
    def val_set(seed):
        d = SyntheticPairedDataModule(str(tmp_path / f"s{seed}"), num_train=4, num_val=4, num_test=2, image_size=36,
                                      load_size=36, crop_size=32, dataset_seed=seed, num_workers=0)
        d.setup("validate")
        return d.val_dataset

    a = val_set(0)
    key = fingerprint(a, [2], 2, 1)
    assert key == fingerprint(val_set(0), [2], 2, 1)
    assert key != fingerprint(val_set(1), [2], 2, 1)  # other files
    assert key != fingerprint(a, [1], 2, 1)  # fewer batches (limit_val_batches)
    assert key != fingerprint(a, [2], 2, 2)  # two processes
    os.utime(a.files[0], ns=(1, 1))  # a file replaced in place
    assert key != fingerprint(a, [2], 2, 1)


def test_cached_real_features_follow_the_validated_data(tmp_path):
    def dm(seed):
        return SyntheticPairedDataModule(str(tmp_path / f"s{seed}"), num_train=4, num_val=6, num_test=2, image_size=36,
                                         load_size=36, crop_size=32, dataset_seed=seed, batch_size=3, num_workers=0)

    kw = {**TINY_MODEL, "fid": True, "kid": False, "inference_mode": "eval"}
    model = Pix2Pix(**kw)
    trainer = quiet_trainer()
    first = trainer.validate(model, dm(0), verbose=False)[0]["val/fid"]
    other = trainer.validate(model, dm(1), verbose=False)[0]["val/fid"]
    fresh = Pix2Pix(**kw)
    fresh.load_state_dict(model.state_dict())
    assert other == pytest.approx(quiet_trainer().validate(fresh, dm(1), verbose=False)[0]["val/fid"], rel=1e-5)
    assert other != pytest.approx(first, rel=1e-3)
    # fewer batches of the same data: a different real set too
    limited = quiet_trainer(limit_val_batches=1).validate(model, dm(1), verbose=False)[0]["val/fid"]
    fresh2 = Pix2Pix(**kw)
    fresh2.load_state_dict(model.state_dict())
    ref = quiet_trainer(limit_val_batches=1).validate(fresh2, dm(1), verbose=False)[0]["val/fid"]
    assert limited == pytest.approx(ref, rel=1e-5)


def test_kid_subset_rule():
    assert kid_subset_for(5000, 1000) == 1000
    assert kid_subset_for(1000, 1000) == 500  # all 1000 in every subset would give no spread
    assert kid_subset_for(48, 1000) == 24
    assert kid_subset_for(3, 1000) == 3


def test_eval_batch_size_changes_no_score(tmp_path):
    scores = []
    for eval_batch_size in (None, 3):
        dm = SyntheticPairedDataModule(str(tmp_path / "syn"), num_train=4, num_val=5, num_test=2, image_size=36,
                                       load_size=36, crop_size=32, batch_size=1, eval_batch_size=eval_batch_size,
                                       num_workers=0)
        dm.setup("validate")
        assert dm.val_dataloader().batch_size == (eval_batch_size or 1)
        torch.manual_seed(0)
        model = Pix2Pix(**TINY_MODEL)  # dropout on: paper mode draws the masks image after image
        torch.manual_seed(1)
        scores.append(quiet_trainer().validate(model, dm, verbose=False)[0])
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)
