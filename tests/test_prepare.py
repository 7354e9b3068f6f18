"""pix2pix-lit prepare: combine / edges / split on small folders made here."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pix2pix_lit.data import PairedDataModule

from conftest import noise_image


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """``pix2pix-lit prepare ARGS`` in this process (the console entry itself: test_console_entry)."""
    from pix2pix_lit.prepare import main

    def call(*args, check=True):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        if check:
            assert code == 0, err[-3000:]
        return Result(code, out, err)

    return call


def test_console_entry(tmp_path):
    photos(tmp_path / "all", ["a.png", "b.png"], size=(8, 8))
    proc = subprocess.run([sys.executable, "-m", "pix2pix_lit", "prepare", "split", str(tmp_path / "all"),
                           str(tmp_path / "s"), "--val", "0.5", "--test", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "val 1, test 0, train 1" in proc.stdout


def photos(folder, names, size=(48, 40), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise_image(rng, *size)).save(folder / name)


def test_combine_pairs_by_name_and_reports_the_rest(run, tmp_path):
    photos(tmp_path / "A", ["x.png", "y.jpg", "sub/z.png", "onlyA.png"])
    photos(tmp_path / "B", ["x.png", "y.png", "sub/z.png", "onlyB.png"], seed=1)
    proc = run("combine", tmp_path / "A", tmp_path / "B", tmp_path / "AB")
    assert "wrote 3 A|B file(s)" in proc.stdout
    assert "1 name(s) only in A, left out: onlyA" in proc.stdout and "only in B, left out: onlyB" in proc.stdout
    out = sorted(p.relative_to(tmp_path / "AB").as_posix() for p in (tmp_path / "AB").rglob("*.png"))
    assert out == ["sub/z.png", "x.png", "y.png"]
    ab = np.asarray(Image.open(tmp_path / "AB" / "x.png"))
    assert ab.shape == (40, 96, 3)
    assert np.array_equal(ab[:, :48], np.asarray(Image.open(tmp_path / "A" / "x.png")))
    assert np.array_equal(ab[:, 48:], np.asarray(Image.open(tmp_path / "B" / "x.png")))
    # the result is the official aligned format: it loads as pairs
    dm = PairedDataModule(str(tmp_path), train_split="AB", preprocess="none", num_workers=0)
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 3


def test_combine_errors(run, tmp_path):
    photos(tmp_path / "A", ["x.png"])
    photos(tmp_path / "B", ["x.png"], size=(30, 30))
    bad = run("combine", tmp_path / "A", tmp_path / "B", tmp_path / "AB", check=False)
    assert bad.returncode == 2 and "x.png is 48x40 but" in bad.stderr and "a pair needs one size" in bad.stderr
    missing = run("combine", tmp_path / "nope", tmp_path / "B", tmp_path / "AB2", check=False)
    assert missing.returncode == 2 and "nope does not exist" in missing.stderr.strip().splitlines()[-1]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    photos(tmp_path / "B2", ["x.png"])
    busy = run("combine", tmp_path / "A", tmp_path / "B2", tmp_path / "full", check=False)
    assert busy.returncode == 2 and "is not empty" in busy.stderr


@pytest.mark.parametrize("method", ["canny", "xdog"])
def test_edges_are_one_channel_sketches_of_the_photos(run, tmp_path, method):
    src = tmp_path / "photos"
    src.mkdir()
    img = np.full((64, 80, 3), 230, np.uint8)
    img[16:48, 20:60] = 30  # a dark box on a light background: its outline is the sketch
    Image.fromarray(img).save(src / "box.jpg", quality=95)
    (src / "sub").mkdir()
    Image.fromarray(img).save(src / "sub" / "b.png")
    run("edges", src, tmp_path / "edges", "--method", method)
    out = Image.open(tmp_path / "edges" / "box.png")
    assert out.mode == "L" and out.size == (80, 64)
    assert (tmp_path / "edges" / "sub" / "b.png").is_file()
    a = np.asarray(out)
    assert a[2:10, 2:15].min() > 200 and a[28:36, 35:45].min() > 200  # flat areas stay white...
    assert a[14:19, 20:60].min() < 60 and a[16:48, 18:23].min() < 60  # ...the box's edges are dark lines


def test_edges_errors(run, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    proc = run("edges", tmp_path / "photos", tmp_path / "e", check=False)
    assert proc.returncode == 2 and "bad.png" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "e").exists()  # every input is decoded before anything is written


def test_split_is_seeded_and_complete(run, tmp_path):
    names = [f"{i:02d}.png" for i in range(20)]
    photos(tmp_path / "all", names, size=(8, 8))
    proc = run("split", tmp_path / "all", tmp_path / "s1", "--val", "0.1", "--test", "0.2", "--seed", "3")
    assert "train 14" in proc.stdout and "val 2" in proc.stdout and "test 4" in proc.stdout
    parts = {p: sorted(f.name for f in (tmp_path / "s1" / p).glob("*.png")) for p in ("train", "val", "test")}
    assert sorted(sum(parts.values(), [])) == names  # each image once
    run("split", tmp_path / "all", tmp_path / "s2", "--val", "0.1", "--test", "0.2", "--seed", "3")
    assert parts["val"] == sorted(f.name for f in (tmp_path / "s2" / "val").glob("*.png"))  # same seed, same split
    run("split", tmp_path / "all", tmp_path / "s3", "--val", "0.1", "--test", "0.2", "--seed", "4")
    assert parts["val"] + parts["test"] != sorted(f.name for f in (tmp_path / "s3" / "val").glob("*.png")) + sorted(
        f.name for f in (tmp_path / "s3" / "test").glob("*.png"))
    bad = run("split", tmp_path / "all", tmp_path / "s4", "--val", "0.6", "--test", "0.5", check=False)
    assert bad.returncode == 2 and "adding up to less than 1" in bad.stderr
