"""Paired data: layouts, directions, splits, channels, bad files and options, loaders."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.data import PairedDataModule, SeededSampler, SyntheticPairedDataModule
from pix2pix_lit.data.io import list_images
from pix2pix_lit.errors import ConfigError, DataError

from conftest import noise_image, write_aligned, write_folders


def test_directions_aligned(aligned_root):
    dm = PairedDataModule(str(aligned_root), direction="AtoB", preprocess="none", num_workers=0, batch_size=2)
    dm.setup("fit")
    atob = dm.val_dataset[0]
    dm = PairedDataModule(str(aligned_root), direction="BtoA", preprocess="none", num_workers=0, batch_size=2)
    dm.setup("fit")
    btoa = dm.val_dataset[0]
    assert torch.equal(atob["source"], btoa["target"]) and torch.equal(atob["target"], btoa["source"])
    img = np.asarray(Image.open(aligned_root / "val" / "000.png"))
    left = torch.from_numpy(img[:, :32]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(atob["source"], left)
    batch = next(iter(dm.train_dataloader()))
    assert batch["source"].shape == (2, 3, 32, 32) and len(batch["name"]) == 2


def test_folders_layout_names_directions_and_unmatched(tmp_path, caplog):
    root = tmp_path / "city"
    write_folders(root, "train", ["x1", "x2", "x3"], a_suffix="_gtFine_color.png", b_suffix="_leftImg8bit.png")
    Image.fromarray(noise_image(np.random.default_rng(0), 40, 32)).save(root / "train" / "A" / "lonely_gtFine_color.png")
    kw = dict(layout="folders", a_suffix="_gtFine_color.png", b_suffix="_leftImg8bit.png", preprocess="none",
              num_workers=0, val_fraction=0.34)
    with caplog.at_level(logging.WARNING):
        dm = PairedDataModule(str(root), **kw)
        dm.setup("fit")
    assert "lonely" in caplog.text and "no partner" in caplog.text
    names = sorted([dm.train_dataset[i]["name"] for i in range(len(dm.train_dataset))] + [dm.val_dataset[0]["name"]])
    assert names == ["x1", "x2", "x3"]
    item = dm.val_dataset[0]
    assert item["source"].shape == (3, 32, 40)
    assert torch.allclose(item["target"], -item["source"], atol=1e-6)
    dm2 = PairedDataModule(str(root), direction="BtoA", **kw)
    dm2.setup("fit")
    assert torch.equal(dm2.val_dataset[0]["source"], item["target"])


def test_carved_val_split_is_seeded_and_disjoint(tmp_path):
    write_aligned(tmp_path / "d" / "train", 20)
    split = lambda seed: PairedDataModule(str(tmp_path / "d"), seed=seed, val_fraction=0.25, num_workers=0)  # noqa
    a, b, c = split(0), split(0), split(1)
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.val_dataset.indices == b.val_dataset.indices != c.val_dataset.indices
    assert len(a.val_dataset) == 5 and not set(a.val_dataset.indices) & set(a.train_dataset.indices)


def test_input_nc_1_reads_grayscale(aligned_root):
    dm = PairedDataModule(str(aligned_root), input_nc=1, preprocess="none", num_workers=0)
    dm.setup("fit")
    item = dm.val_dataset[0]
    assert item["source"].shape == (1, 32, 32) and item["target"].shape == (3, 32, 32)
    rgb = np.asarray(Image.open(aligned_root / "val" / "000.png").crop((0, 0, 32, 32)).convert("L"))
    assert torch.allclose(item["source"][0], torch.from_numpy(rgb).float() / 127.5 - 1)


def test_max_dataset_size(aligned_root):
    dm = PairedDataModule(str(aligned_root), max_dataset_size=3, num_workers=0, preprocess="none")
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 3


def test_seeded_sampler_depends_only_on_seed_and_epoch():
    data = list(range(10))
    s1, s2 = SeededSampler(data, num_replicas=1, rank=0, seed=3), SeededSampler(data, num_replicas=1, rank=0, seed=3)
    s1.set_epoch(2)
    s2.set_epoch(2)
    assert list(s1) == list(s2)
    s2.set_epoch(3)
    assert list(s1) != list(s2)
    shards = [list(SeededSampler(data, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert sorted(i for shard in shards for i, _ in shard) == data


def test_synthetic_data_is_deterministic_and_official_format(tmp_path):
    dm = SyntheticPairedDataModule(str(tmp_path / "syn"), num_train=4, num_val=2, num_test=2, image_size=40,
                                   load_size=40, crop_size=32, num_workers=0)
    dm.prepare_data()
    files = list_images(tmp_path / "syn" / "train")
    assert len(files) == 4 and Image.open(files[0]).size == (80, 40)
    first = np.asarray(Image.open(files[0]))
    SyntheticPairedDataModule(str(tmp_path / "syn2"), num_train=4, num_val=2, num_test=2, image_size=40).prepare_data()
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "syn2" / "train" / files[0].name)))
    dm.setup("fit")
    assert dm.train_dataset[0]["source"].shape == (3, 32, 32)


# -- bad input: one line naming the file/option and the fix ---------------------------------------------


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist.*data.root"):
        PairedDataModule(str(tmp_path / "nope")).setup("fit")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/train holds no images"):
        PairedDataModule(str(tmp_path / "empty")).setup("fit")


def test_not_an_image_and_truncated(tmp_path):
    root = tmp_path / "bad"
    write_aligned(root / "train", 2, size=32)
    (root / "train" / "notes.png").write_text("this is not a picture")
    with pytest.raises(DataError, match=r"notes.png is not an image file"):
        PairedDataModule(str(root), num_workers=0).setup("fit")
    (root / "train" / "notes.png").unlink()
    good = root / "train" / "000.png"
    Image.open(good).save(root / "train" / "cut.jpg", quality=95)
    data = (root / "train" / "cut.jpg").read_bytes()
    (root / "train" / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(root / "train" / "cut.jpg") as img:
        assert img.size == (64, 32)  # the header is fine: the damage shows only when the pixels are decoded
    dm = PairedDataModule(str(root), num_workers=0, preprocess="none")
    with pytest.raises(DataError, match=r"cut.jpg cannot be decoded .*truncated or corrupt"):
        dm.setup("fit")  # every file is decoded before a run starts, not when the epoch reaches it


def test_decode_check_is_remembered_until_a_file_changes(tmp_path, monkeypatch):
    from pix2pix_lit.data import io

    files = write_aligned(tmp_path / "imgs", 5, size=16)
    decoded = []
    real_decode = io._decode
    monkeypatch.setattr(io, "_decode", lambda p: decoded.append(p.name) or real_decode(p))
    io.check_decodable(files, cache_dir=tmp_path / "cache")
    assert sorted(decoded) == sorted(p.name for p in files)
    decoded.clear()
    io.check_decodable(files, cache_dir=tmp_path / "cache")
    assert decoded == []  # a second run pays nothing
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])  # same name, new size: decoded again, and caught
    with pytest.raises(DataError, match=r"002.png cannot be decoded"):
        io.check_decodable(files, cache_dir=tmp_path / "cache")
    assert decoded == ["002.png"]


def test_odd_width_and_size_mismatch(tmp_path):
    root = tmp_path / "odd"
    (root / "train").mkdir(parents=True)
    Image.fromarray(noise_image(np.random.default_rng(0), 33, 16)).save(root / "train" / "x.png")
    with pytest.raises(DataError, match=r"x.png is 33 pixels wide, an odd width"):
        PairedDataModule(str(root)).setup("fit")
    root2 = tmp_path / "pairs"
    write_folders(root2, "train", ["a", "b"])
    Image.fromarray(noise_image(np.random.default_rng(0), 20, 20)).save(root2 / "train" / "B" / "b.png")
    with pytest.raises(DataError, match=r"A/b.png is 40x32 but its partner .*B/b.png is 20x20"):
        PairedDataModule(str(root2), layout="folders").setup("fit")


def test_channel_mismatch(tmp_path):
    root = tmp_path / "gray"
    (root / "train").mkdir(parents=True)
    Image.fromarray(noise_image(np.random.default_rng(0), 32, 16, channels=1)).save(root / "train" / "g.png")
    # grayscale where RGB is read: refused with strict_channels (by default read as RGB, tests/test_robustness.py)
    with pytest.raises(DataError, match=r"g.png is a grayscale image but data.input_nc=3 and data.strict_channels"):
        PairedDataModule(str(root), strict_channels=True).setup("fit")
    with pytest.raises(DataError, match=r"g.png is a grayscale image but data.output_nc=3"):
        PairedDataModule(str(root), input_nc=1, strict_channels=True).setup("fit")
    Image.open(root / "train" / "g.png").save(root / "train" / "h.png")
    PairedDataModule(str(root), input_nc=1, output_nc=1, val_fraction=0.5).setup("validate")  # fine


def test_bad_options():
    with pytest.raises(ConfigError, match="crop_size=300 is larger than data.load_size=286"):
        PairedDataModule("x", crop_size=300)
    with pytest.raises(ConfigError, match="data.input_nc=2"):
        PairedDataModule("x", input_nc=2)
    with pytest.raises(ConfigError, match="data.preprocess='zoom'.*resize_and_crop"):
        PairedDataModule("x", preprocess="zoom")


def test_evaluation_workers_do_not_outlive_their_pass_during_training(tmp_path):
    """Only the training loader's workers stay alive through training epochs: not those of the sanity check
    (a partial pass) nor of a validation."""
    import multiprocessing

    import lightning.pytorch as pl

    from pix2pix_lit import Pix2Pix, SyntheticPairedDataModule

    from conftest import TINY_MODEL, quiet_trainer

    seen = []

    class CountWorkers(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(len(multiprocessing.active_children()))

    dm = SyntheticPairedDataModule(str(tmp_path / "data"), num_train=4, num_val=4, num_test=1, image_size=64,
                                   load_size=64, crop_size=64, batch_size=1, num_workers=1)
    trainer = quiet_trainer(default_root_dir=str(tmp_path), max_epochs=2, num_sanity_val_steps=2,
                            limit_val_batches=2, callbacks=[CountWorkers()])
    trainer.fit(Pix2Pix(**TINY_MODEL), dm)
    assert len(seen) == 8 and set(seen) == {1}  # the one training worker


def test_num_workers_null_picks_by_device(tmp_path, monkeypatch):
    """num_workers null: no workers when the model runs on the CPU (they would compete with the step's threads),
    4 capped by the CPUs per process on a GPU; a number is kept."""
    from types import SimpleNamespace

    import lightning.pytorch as pl

    from pix2pix_lit import SyntheticPairedDataModule
    from pix2pix_lit.data import base as data_base

    def loaders(**kw):
        dm = SyntheticPairedDataModule(str(tmp_path / "data"), num_train=2, num_val=2, num_test=1, image_size=36,
                                       load_size=36, crop_size=32, **kw)
        dm.setup("fit")
        return dm, dm.train_dataloader(), dm.val_dataloader()

    dm, train, val = loaders()
    assert dm.hparams.num_workers is None and train.num_workers == 0 and val.num_workers == 0  # no trainer, no GPU
    dm.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    assert dm.train_dataloader().num_workers == 0
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), num_devices=2)
    monkeypatch.setattr(data_base, "suggested_max_num_workers", lambda local_world_size: 16 // local_world_size - 1)
    dm.trainer = gpu
    assert dm.num_workers == 4
    monkeypatch.setattr(data_base, "suggested_max_num_workers", lambda local_world_size: 1)
    assert dm.num_workers == 1
    dm, train, val = loaders(num_workers=1)
    assert train.num_workers == 1 and train.persistent_workers and val.num_workers == 1 and not val.persistent_workers
