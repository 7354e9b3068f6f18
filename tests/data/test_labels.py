"""Label maps: ids read exactly and resized nearest-neighbour with the photo's crop and flip, don't-care, ids out
of range, instance edges against a hand computation, the Cityscapes and ADE20K layouts, palette conversion."""

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.data import PairedDataModule
from pix2pix_lit.data.labels import (
    CITYSCAPES,
    colours_to_ids,
    encode_ids,
    instance_edges,
    label_classes,
    load_palette,
    network_input,
    palette,
    read_ids,
)
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import ConfigError, DataError
from pix2pix_lit.prepare import main as prepare

from conftest import noise_image, write_cityscapes


def write_label_folders(root, n=3, label_nc=7, size=(37, 29), seed=0, instances=False):
    """labels/{i}.png (every id 0..label_nc-1 in blocks), photos/{i}.png coloured by the ids' palette."""
    rng = np.random.default_rng(seed)
    w, h = size
    for sub in ("labels", "photos") + (("instances",) if instances else ()):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ids = (np.arange(w)[None, :] // 9 + np.arange(h)[:, None] // 9 * 3) % label_nc
        ids = np.roll(ids, i, axis=1).astype(np.uint8)
        Image.fromarray(ids, "L").save(root / "train" / "labels" / f"{i}.png")
        Image.fromarray(palette()[ids]).save(root / "train" / "photos" / f"{i}.png")
        if instances:
            Image.fromarray((ids.astype(np.uint16) * 1000 + 7)).save(root / "train" / "instances" / f"{i}.png")
    return rng


def label_data(root, **kw):
    options = dict(layout="folders", a_dir="{split}/labels", b_dir="{split}/photos", label_nc=7, no_instance=True,
                   num_workers=0, batch_size=1)
    return PairedDataModule(str(root), **{**options, **kw})


def test_nearest_resize_keeps_ids_and_shares_crop_and_flip(tmp_path):
    """A map with all 7 ids at an odd size, resized up, cropped and flipped: the ids that enter are the ids that
    arrive, and each label pixel still sits on the photo pixel of its colour (crop and flip shared)."""
    write_label_folders(tmp_path, label_nc=7)
    dm = label_data(tmp_path, load_size=45, crop_size=40, val_fraction=0.34)
    dm.setup("fit")
    colours = torch.from_numpy(palette()[:7]).float() / 127.5 - 1
    corners = set()
    for epoch_seed in range(8):
        item = dm.train_dataset[(0, epoch_seed)]
        ids = item["source"][0].long()
        assert item["source"].dtype == torch.uint8  # small in the loaders; the model one-hot encodes
        assert set(ids.unique().tolist()) == set(range(7))
        # pixels 2 away from any class border and the image's edge (the photo's bicubic resize mixes colours there)
        border = torch.ones_like(ids, dtype=torch.float)
        border[1:-1, 1:-1] = 0
        border[:, 1:] += (ids[:, 1:] != ids[:, :-1]).float()
        border[1:, :] += (ids[1:, :] != ids[:-1, :]).float()
        near = torch.nn.functional.max_pool2d(border[None, None], 5, 1, 2)[0, 0] > 0
        assert (~near).sum() > 200
        photo = item["target"].permute(1, 2, 0)
        assert (photo[~near] - colours[ids[~near]]).abs().max() < 0.02
        corners.add(int(ids[0, 0]))
    assert len(corners) > 1  # the draws cropped (and flipped) differently, and every one stayed aligned


def test_dontcare_and_ids_out_of_range(tmp_path):
    ids = np.array([[0, 1, 255], [2, 255, 1]], np.uint8)
    encoded = encode_ids(ids.astype(np.int64), 3, True)
    assert encoded.tolist() == [[[0, 1, 255], [2, 255, 1]]] and encoded.dtype == torch.uint8  # as stored
    hot = network_input({"source": encoded[None]}, 3, True, False)  # don't care: the channel after the classes
    assert hot.shape == (1, 4, 2, 3) and hot[0, 3].tolist() == [[0, 0, 1], [0, 1, 0]] and hot.sum(1).eq(1).all()
    assert hot[0, :3].argmax(0)[0, :2].tolist() == [0, 1] and hot[0, 2, 1, 0] == 1
    write_label_folders(tmp_path, label_nc=7)
    with pytest.raises(DataError, match=r"0\.png: class id 5 at pixel \(x=\d+, y=\d+\) is not below data.label_nc=5"):
        label_data(tmp_path, label_nc=5).setup("fit")
    img = np.zeros((29, 37), np.uint8)
    img[2, 4] = 255
    Image.fromarray(img, "L").save(tmp_path / "train" / "labels" / "0.png")
    with pytest.raises(DataError, match=r"class id 255 at pixel \(x=4, y=2\).*contain_dontcare_label true"):
        label_data(tmp_path).setup("fit")


def test_instance_edges_equal_a_hand_computation():
    inst = torch.tensor([[1, 1, 2, 2],
                         [1, 1, 2, 2],
                         [3, 3, 3, 2],
                         [3, 3, 3, 3]])
    # a pixel is an edge where a 4-neighbour has another id
    want = [[0, 1, 1, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1],
            [0, 0, 0, 1]]
    assert instance_edges(inst).tolist() == want
    assert instance_edges(inst[None, None]).shape == (1, 1, 4, 4)  # any leading dimensions


def test_bad_label_files_are_one_line(tmp_path):
    write_label_folders(tmp_path, instances=True)
    Image.fromarray(noise_image(np.random.default_rng(0), 37, 29)).save(tmp_path / "train" / "labels" / "1.png")
    with pytest.raises(DataError, match=r"1\.png is a RGB image where a label map of integer ids is expected.*"
                                        "prepare labels --palette"):
        label_data(tmp_path).setup("fit")
    write_label_folders(tmp_path, instances=True)
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(tmp_path / "train" / "instances" / "2.png")
    with pytest.raises(DataError, match=r"instances/2\.png is 10x10 but its label map .*labels/2\.png is 37x29"):
        label_data(tmp_path, no_instance=False, instance_dir="{split}/instances").setup("fit")
    with pytest.raises(ConfigError, match="need instance maps: set data.instance_dir"):
        label_data(tmp_path, no_instance=False).setup("fit")
    with pytest.raises(ConfigError, match="label maps cannot be one half of a side-by-side file"):
        PairedDataModule(str(tmp_path), label_nc=5)
    with pytest.raises(ConfigError, match="set data.label_nc"):
        PairedDataModule(str(tmp_path), layout="cityscapes")


def test_cityscapes_download_layout_with_instance_edges(tmp_path):
    names = write_cityscapes(tmp_path, "train", per_city=2)
    write_cityscapes(tmp_path, "val", cities=("frankfurt",), per_city=1, seed=1)
    dm = PairedDataModule(str(tmp_path), layout="cityscapes", label_nc=35, preprocess="fixed", crop_size=32,
                          aspect_ratio=2.0, num_workers=0, batch_size=2)
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and sorted(p[0] for p in dm.train_dataset.pairs) == sorted(names)
    batch = next(iter(dm.train_dataloader()))
    assert batch["source"].shape == (2, 1, 16, 32) and batch["target"].shape == (2, 3, 16, 32)
    assert batch["edges"].shape == (2, 1, 16, 32) and set(batch["edges"].unique().tolist()) <= {0, 1}
    assert int(batch["source"].max()) < 34


def test_ade20k_layout_shifts_ids_and_makes_zero_dontcare(tmp_path):
    for split, sub in (("training", "annotations"), ("training", "images")):
        (tmp_path / sub / split).mkdir(parents=True, exist_ok=True)
    ids = np.array([[0, 1, 150, 2]] * 4, np.uint8)
    for i in range(3):
        Image.fromarray(ids, "L").save(tmp_path / "annotations" / "training" / f"ADE_train_{i}.png")
        Image.fromarray(noise_image(np.random.default_rng(i), 4, 4)).save(
            tmp_path / "images" / "training" / f"ADE_train_{i}.jpg")
    dm = PairedDataModule(str(tmp_path), layout="ade20k", label_nc=150, contain_dontcare_label=True, no_instance=True,
                          train_split="training", val_split="validation", preprocess="none", num_workers=0,
                          val_fraction=0.34)
    dm.setup("fit")
    item = dm.train_dataset[0]
    assert item["source"][0, 0].tolist() == [255, 0, 149, 1]  # 0 (unlabelled) -> the don't-care id 255


def test_palette_conversion_both_ways(tmp_path, capsys):
    colours = load_palette("cityscapes")
    assert len(colours) == len(CITYSCAPES) == 34 and tuple(colours[7]) == (128, 64, 128)  # road
    unique = [i for i in range(34) if sum((colours == colours[i]).all(1)) == 1]  # ids with a colour of their own
    ids = np.array(unique * 2, np.uint8).reshape(2, -1)
    (tmp_path / "colour" / "city").mkdir(parents=True)
    Image.fromarray(colours[ids]).save(tmp_path / "colour" / "city" / "a.png")
    assert prepare(["labels", str(tmp_path / "colour"), str(tmp_path / "ids"), "--palette", "cityscapes"]) == 0
    back = read_ids(tmp_path / "ids" / "city" / "a.png")
    assert back.mode == "L" and np.array_equal(np.asarray(back), ids)
    # shared colours turn back into the first id
    assert colours_to_ids(np.array([[[0, 0, 0], [153, 153, 153]]], np.uint8), colours, tmp_path).tolist() == [[0, 17]]
    # a file palette; an unknown colour names the pixel and the file, and nothing is written
    (tmp_path / "mine.txt").write_text("0 0 0\n255 255 255\n")
    img = np.zeros((3, 3, 3), np.uint8)
    img[1, 2] = (10, 20, 30)
    Image.fromarray(img).save(tmp_path / "colour" / "city" / "a.png")
    assert prepare(["labels", str(tmp_path / "colour"), str(tmp_path / "ids2"), "--palette",
                    str(tmp_path / "mine.txt")]) == 2
    err = capsys.readouterr().err
    assert "a.png: the colour (10, 20, 30) at pixel (x=2, y=1) is no class's in the palette (2 classes)" in err
    assert not (tmp_path / "ids2").exists()
    assert prepare(["labels", str(tmp_path / "colour"), str(tmp_path / "ids3"), "--palette", "nope.json"]) == 2
    assert "--palette nope.json: not 'cityscapes' and not a readable file" in capsys.readouterr().err


def test_the_classes_a_served_model_lists(tmp_path):
    """The brushes of the paint page: ids as each layout stores them, names and colours of the dataset."""
    cityscapes = label_classes(35, False, "cityscapes")
    assert len(cityscapes) == 35 and cityscapes[7] == {"id": 7, "name": "road", "colour": [128, 64, 128]}
    assert cityscapes[34]["name"] == "class 34"  # beyond the named ids: a number
    ade = label_classes(150, True, "ade20k", class_names=["wall", "building"])
    assert ade[0] == {"id": 1, "name": "wall", "colour": palette()[0].tolist()} and ade[2]["name"] == "class 2"
    assert ade[-1] == {"id": 0, "name": "unlabelled", "colour": [224, 224, 192]}  # stored 0, the VOC "void" colour
    assert label_classes(2, True)[-1]["id"] == 255
    with pytest.raises(ConfigError, match="data.class_names has 3 names but data.label_nc=2 classes"):
        PairedDataModule(str(tmp_path), layout="folders", label_nc=2, class_names=["a", "b", "c"])


def test_label_maps_are_the_source(tmp_path):
    with pytest.raises(ConfigError, match="label maps are the source"):
        label_data(tmp_path, direction="BtoA")
    random.seed(0)
    transform = JointTransform("resize_and_crop", 45, 40)
    label = Image.fromarray(np.arange(37 * 29, dtype=np.int32).reshape(29, 37) % 251, "I")
    (out,) = transform([label], random.Random(0), nearest=(0,))
    assert set(np.unique(np.asarray(out))) <= set(np.unique(np.asarray(label)))  # no new (interpolated) ids


def test_the_ids_of_each_label_map_are_read_once_and_remembered(tmp_path, monkeypatch):
    from pix2pix_lit.data import labels

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_label_folders(tmp_path / "d")
    label_data(tmp_path / "d").setup("fit")

    def read_again(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(labels, "stored_ids", read_again)
    label_data(tmp_path / "d").setup("fit")  # nothing read: the ids come from the cache
    Image.fromarray(np.full((29, 37), 9, np.uint8), "L").save(tmp_path / "d" / "train" / "labels" / "0.png")
    with pytest.raises(AssertionError, match="0.png was read again"):  # a changed file is read again
        label_data(tmp_path / "d").setup("fit")


# -- lossy id maps, remembered ids (issue: nothing a user sends lies to them) -----------------------------------
def test_a_jpeg_label_map_is_refused_everywhere_label_maps_are_read(tmp_path):
    from pix2pix_lit.data.labels import LabelMapsForPredict
    from pix2pix_lit.prepare import labels_folder

    write_label_folders(tmp_path, n=3, label_nc=5)
    grey = np.asarray(Image.open(tmp_path / "train" / "labels" / "1.png"))
    Image.fromarray(grey, "L").save(tmp_path / "train" / "labels" / "1.jpg", quality=90)
    (tmp_path / "train" / "labels" / "1.png").unlink()
    # what the JPEG does to the ids (the reason for the refusal): pixels at class borders change class
    assert (np.asarray(Image.open(tmp_path / "train" / "labels" / "1.jpg")) != grey).mean() > 0.01
    lossy = r"1.jpg is a JPEG file: lossy compression changes the ids of a label map"
    with pytest.raises(DataError, match=lossy):  # fit (and validate/test: the same datasets)
        label_data(tmp_path, label_nc=5, load_size=32, crop_size=32, val_fraction=0.34).setup("fit")
    with pytest.raises(DataError, match=lossy):  # predict
        LabelMapsForPredict([tmp_path / "train" / "labels" / "1.jpg"], tmp_path, 5, False, False)
    with pytest.raises(DataError, match=lossy):  # eval --labels reads them with read_ids
        read_ids(tmp_path / "train" / "labels" / "1.jpg")
    # a lossy WebP too (a lossless one holds RGB, no id map: refused for its mode)
    Image.fromarray(grey, "L").save(tmp_path / "lossy.webp", lossless=False, quality=80)
    Image.fromarray(grey, "L").save(tmp_path / "lossless.webp", lossless=True)
    with pytest.raises(DataError, match="lossy.webp is a lossy WebP file"):
        read_ids(tmp_path / "lossy.webp")
    with pytest.raises(DataError, match="lossless.webp is a RGB image where a label map of integer ids"):
        read_ids(tmp_path / "lossless.webp")
    # prepare labels: a JPEG colour rendering, refused before anything is written
    (tmp_path / "colour").mkdir()
    Image.fromarray(palette()[grey]).save(tmp_path / "colour" / "a.jpg", quality=95)
    with pytest.raises(DataError, match=r"a.jpg is a JPEG file: lossy compression mixes the colours"):
        labels_folder(tmp_path / "colour", tmp_path / "ids", palette=str(_palette_file(tmp_path)))
    assert not (tmp_path / "ids").exists()


def _palette_file(tmp_path):
    path = tmp_path / "palette.json"
    path.write_text(json.dumps(palette()[:5].tolist()))
    return path


def test_a_label_map_edited_in_place_with_size_and_time_kept_is_read_again(tmp_path):
    from pix2pix_lit.data.labels import check_label_files

    write_label_folders(tmp_path, n=2, label_nc=5)
    path = tmp_path / "train" / "labels" / "0.png"
    ids = np.asarray(Image.open(path)).copy()
    Image.fromarray(ids, "L").save(path, compress_level=0)  # stored: the file's size is the image's, not its content's
    check_label_files([path], 5, False)  # read once, remembered
    st = path.stat()
    ids[0, 0] = 9  # an id out of range, in a file of the same size and modification time
    Image.fromarray(ids, "L").save(path, compress_level=0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(DataError, match=r"0.png: class id 9 at pixel \(x=0, y=0\) is not below data.label_nc=5"):
        check_label_files([path], 5, False)


def test_palette_that_is_not_text_is_one_line(tmp_path):
    from pix2pix_lit.data.labels import load_palette

    (tmp_path / "pal.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"--palette .*pal.bin is not a text file"):
        load_palette(str(tmp_path / "pal.bin"))
