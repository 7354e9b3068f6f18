"""Unpaired data: two domains of any counts and sizes, side-by-side files read as two domains."""


import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.data import UnpairedDataModule
from pix2pix_lit.errors import DataError

from conftest import write_aligned


def write_domains(root, split, n_a, n_b, size_a=(40, 36), size_b=(48, 48), seed=0):
    rng = np.random.default_rng(seed)
    for domain, n, (w, h) in (("A", n_a, size_a), ("B", n_b, size_b)):
        folder = root / f"{split}{domain}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{domain.lower()}{i:02d}.png")


def test_unpaired_folders_any_counts_and_sizes(tmp_path):
    write_domains(tmp_path, "train", 5, 3)
    write_domains(tmp_path, "test", 2, 4, seed=1)
    dm = UnpairedDataModule(str(tmp_path), load_size=36, crop_size=32, num_workers=0, val_fraction=0.4)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.train_dataset.A) == 3 and len(dm.train_dataset.B) == 2  # max(|A|, |B|)
    assert len(dm.val_dataset.A) == 2 and len(dm.val_dataset.B) == 1  # carved from each domain, seeded
    assert not set(dm.val_dataset.A.files) & set(dm.train_dataset.A.files)
    item = dm.train_dataset[(0, 123)]
    assert item["A"].shape == item["B"].shape == (3, 32, 32)
    # a random B for each A, a function of the sample's seed; serial_batches: B i mod |B|
    picks = {dm.train_dataset[(0, s)]["name_B"] for s in range(20)}
    assert len(picks) == 2 and dm.train_dataset[(0, 5)]["name_B"] == dm.train_dataset[(0, 5)]["name_B"]
    serial = UnpairedDataModule(str(tmp_path), load_size=36, crop_size=32, num_workers=0, serial_batches=True,
                                val_fraction=0.4)
    serial.setup("fit")
    assert [serial.train_dataset[(i, s)]["name_B"] for i, s in ((0, 1), (1, 2), (2, 3))] == [
        p.stem for p in serial.train_dataset.B.files] + [serial.train_dataset.B.files[0].stem]
    a_loader, b_loader = dm.val_dataloader()
    assert len(a_loader.dataset) == 2 and len(b_loader.dataset) == 1 and "target" not in a_loader.dataset[0]
    dm.setup("test")
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [2, 4]
    with pytest.raises(DataError, match="trainB"):
        (tmp_path / "empty").mkdir()
        write_domains(tmp_path / "empty", "train", 2, 0)
        UnpairedDataModule(str(tmp_path / "empty"), num_workers=0).setup("fit")


def test_side_by_side_files_as_two_domains_keep_val_pairs(tmp_path):
    write_aligned(tmp_path / "train", 6, size=32)
    write_aligned(tmp_path / "val", 3, size=32, seed=5)
    dm = UnpairedDataModule(str(tmp_path), layout="aligned", load_size=32, crop_size=32, num_workers=0)
    dm.setup("fit")
    a_view, b_view = (loader.dataset for loader in dm.val_dataloader())
    item = a_view[0]
    assert torch.allclose(item["target"], -item["image"], atol=1.5 / 127.5)  # write_aligned: B = 255 - A
    assert torch.allclose(b_view[0]["target"], -b_view[0]["image"], atol=1.5 / 127.5)
    names = {dm.train_dataset[(0, s)]["name_B"] for s in range(30)}
    assert len(names) > 1  # in training B is drawn independently of A, not its partner


def test_data_modules_forward_the_shared_options():
    """Every data module takes the shared options (ImageDataModule's) without re-listing them, with its own
    defaults where it has them; options it fixes (the built-in data's layout) are not offered."""
    from jsonargparse import ArgumentParser

    from pix2pix_lit.data import (
        ImageDataModule,
        PairedDataModule,
        SyntheticPairedDataModule,
        SyntheticUnpairedDataModule,
        UnpairedDataModule,
    )

    def defaults(cls):
        parser = ArgumentParser()
        parser.add_class_arguments(cls, "d")
        return parser.get_defaults().d.as_dict()

    shared = defaults(ImageDataModule)
    for cls in (PairedDataModule, UnpairedDataModule, SyntheticPairedDataModule, SyntheticUnpairedDataModule):
        assert set(shared) <= set(defaults(cls)), cls.__name__
    assert defaults(PairedDataModule)["layout"] == "aligned" and defaults(UnpairedDataModule)["layout"] == "folders"
    assert "direction" in defaults(PairedDataModule) and "direction" not in defaults(UnpairedDataModule)
    built_in = defaults(SyntheticPairedDataModule)
    assert "layout" not in built_in and built_in["batch_size"] == 4 and built_in["load_size"] == 72
    assert defaults(SyntheticUnpairedDataModule)["batch_size"] == 1
    dm = SyntheticUnpairedDataModule(root="x", val_fraction=0.2, strict_channels=True)
    assert dm.hparams.layout == "aligned" and dm.hparams.val_fraction == 0.2 and dm.hparams.strict_channels
