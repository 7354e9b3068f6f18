"""``pix2pix-lit prepare``: paired training data from your own images.

- ``combine A_DIR B_DIR OUT``: side-by-side A|B files (the official format, as ``combine_A_and_B.py``)
  from two folders matched by name, in parallel, with a report of the unmatched names;
- ``edges SRC OUT --method canny|xdog``: one-channel sketch-like images (black lines on white) from
  photos, with OpenCV's filters, to train edges -> photo models (drawing -> picture);
- ``split SRC OUT --val 0.1 --test 0.1 --seed 0``: the ``train/val/test`` layout, seeded;
- ``labels SRC OUT --palette cityscapes|FILE``: colour renderings of label maps turned into id maps (PNG, one
  class id per pixel) by exact colour match, for ``data.label_nc`` (an unknown colour is an error naming it);
- ``shards SRC OUT [--unpaired] [layout options]``: a dataset in any layout the DataModules read, as LitData
  chunks for the streaming DataModules (``pix2pix_lit.data.streaming``), to put on object storage.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from pix2pix_lit.atomic import check_free_output, staged_folder
from pix2pix_lit.data.datasets import match_pairs
from pix2pix_lit.data.io import (
    check_decodable,
    list_images,
    load_image,
    lossy_format,
    oriented_size,
    peek_image,
    save_image_atomic,
    to_channels,
)
from pix2pix_lit.data.labels import colours_to_ids, load_palette
from pix2pix_lit.errors import ConfigError, DataError, Pix2PixLitError

log = logging.getLogger(__name__)

EDGE_METHODS = ("canny", "xdog")


def _parallel(fn: Callable, items: list, workers: Optional[int] = None) -> list:
    # threads: PIL and OpenCV release the GIL while decoding, filtering and encoding
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(fn, items))


# -- combine ---------------------------------------------------------------------------------------
def combine(dir_a: Path, dir_b: Path, out: Path, workers: Optional[int] = None) -> tuple[int, list[str], list[str]]:
    """Write ``out/<name>.png`` = A | B for every name in both folders; returns (count, only in A, only in B).

    Everything is checked before anything is written (names, sizes, decoding), and the files are written into a
    temporary folder renamed to ``out`` at the end: a failure leaves no ``out``. The two images of a pair must
    have the same size (a DataError names the first pair that does not).
    """
    dir_a, dir_b, out = Path(dir_a), Path(dir_b), Path(out)
    if dir_a.resolve() == dir_b.resolve():
        raise ConfigError(f"A_DIR and B_DIR are the same folder ({dir_a}): every pair would be an image beside "
                          "itself; give the folder of the inputs and the folder of the targets")
    check_free_output(out, dir_a, dir_b)
    pairs = match_pairs(dir_a, dir_b)
    keys_a = {p.relative_to(dir_a).with_suffix("").as_posix() for p in list_images(dir_a)}
    keys_b = {p.relative_to(dir_b).with_suffix("").as_posix() for p in list_images(dir_b)}
    for _, pa, pb in pairs:
        with peek_image(pa) as a, peek_image(pb) as b:
            size_a, size_b = oriented_size(a), oriented_size(b)
        if size_a != size_b:
            raise DataError(f"{pa} is {size_a[0]}x{size_a[1]} but {pb} is {size_b[0]}x{size_b[1]}; "
                            "a pair needs one size (resize one of them first); nothing was written")
    check_decodable([p for _, pa, pb in pairs for p in (pa, pb)])  # a bad file stops it before anything is written

    with staged_folder(out) as stage:
        def one(pair: tuple[str, Path, Path]) -> None:
            name, pa, pb = pair
            with load_image(pa) as a, load_image(pb) as b:
                mode = "RGBA" if "A" in a.getbands() + b.getbands() else "RGB"
                side = Image.new(mode, (a.size[0] * 2, a.size[1]))
                side.paste(to_channels(a, len(mode)), (0, 0))
                side.paste(to_channels(b, len(mode)), (a.size[0], 0))
            save_image_atomic(side, stage / f"{name}.png")

        _parallel(one, pairs, workers)
    return len(pairs), sorted(keys_a - keys_b), sorted(keys_b - keys_a)


# -- edges -----------------------------------------------------------------------------------------
def edges(img: Image.Image, method: str = "canny", low: int = 100, high: int = 200, sigma: float = 1.0) -> Image.Image:
    """A one-channel sketch of ``img``: black lines on white.

    ``canny``: OpenCV's Canny edge detector (hysteresis thresholds ``low``/``high``) after a Gaussian
    blur of ``sigma``. ``xdog``: extended difference of Gaussians (Winnemöller et al. 2012): the two
    Gaussian blurs are OpenCV's; the soft threshold turns their sharpened difference into strokes.
    """
    import cv2

    if method not in EDGE_METHODS:
        raise ConfigError(f"--method {method!r} is not known; choose one of: {', '.join(EDGE_METHODS)}")
    gray = np.asarray(img.convert("L"))
    if method == "canny":
        blurred = cv2.GaussianBlur(gray, (0, 0), sigma) if sigma > 0 else gray
        lines = cv2.Canny(blurred, low, high)
        return Image.fromarray(255 - lines, mode="L")
    g = gray.astype(np.float32) / 255.0
    k, p, eps, phi = 1.6, 20.0, 0.1, 20.0  # strokes where the sharpened image dips below eps (on [0, 1])
    g1 = cv2.GaussianBlur(g, (0, 0), sigma)
    g2 = cv2.GaussianBlur(g, (0, 0), sigma * k)
    sharpened = (1 + p) * g1 - p * g2
    soft = np.where(sharpened >= eps, 1.0, 1.0 + np.tanh(phi * (sharpened - eps)))
    return Image.fromarray((np.clip(soft, 0, 1) * 255).round().astype(np.uint8), mode="L")


def edges_folder(src: Path, out: Path, method: str = "canny", workers: Optional[int] = None, **kw) -> int:
    """``edges`` of every image under ``src``, as PNGs under ``out`` with the same relative names."""
    if method not in EDGE_METHODS:
        raise ConfigError(f"--method {method!r} is not known; choose one of: {', '.join(EDGE_METHODS)}")
    return _convert_folder(Path(src), Path(out), lambda img, path: edges(img, method, **kw), workers)


def _convert_folder(src: Path, out: Path, convert: Callable[[Image.Image, Path], Image.Image],
                    workers: Optional[int] = None) -> int:
    """``convert(image, path)`` of every image under ``src``, as PNGs under ``out`` with the same relative names,
    written to a staged folder renamed into place at the end (nothing half-written on an error)."""
    check_free_output(out, src)
    files = list_images(src)
    check_decodable(files)

    with staged_folder(out) as stage:
        def one(path: Path) -> None:
            with load_image(path) as img:
                converted = convert(img, path)
            save_image_atomic(converted, (stage / path.relative_to(src)).with_suffix(".png"))

        _parallel(one, files, workers)
    return len(files)


# -- labels ----------------------------------------------------------------------------------------
def labels_folder(src: Path, out: Path, palette: str = "cityscapes", workers: Optional[int] = None) -> tuple[int, int]:
    """Every colour rendering under ``src`` as an id map under ``out`` (same relative names, ``.png``; mode ``L``
    for up to 256 classes, else 16-bit); returns (files, classes in the palette)."""
    colours = load_palette(palette)
    for path in list_images(src):  # exact colours are the ids: a lossy rendering has mixed ones at every border
        with peek_image(path) as img:
            lossy = lossy_format(img)
        if lossy:
            raise DataError(f"{path} is a {lossy} file: lossy compression mixes the colours of a label rendering, "
                            "so they are no class's; use the lossless PNG renderings; nothing was written")

    def to_ids(img: Image.Image, path: Path) -> Image.Image:
        ids = colours_to_ids(np.asarray(to_channels(img, 3)), colours, path)
        return Image.fromarray(ids.astype(np.uint8), "L") if len(colours) <= 256 else Image.fromarray(ids.astype(np.uint16))

    return _convert_folder(Path(src), Path(out), to_ids, workers), len(colours)


# -- split -----------------------------------------------------------------------------------------
def split(src: Path, out: Path, val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, int]:
    """Copy the images of ``src`` into ``out/{train,val,test}`` (a seeded shuffle; empty splits are skipped)."""
    src, out = Path(src), Path(out)
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"--val {val} and --test {test} must be fractions in [0, 1) adding up to less than 1")
    check_free_output(out, src)
    files = list_images(src)
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(len(files) * val), round(len(files) * test)
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    if not parts["train"]:
        raise ConfigError(f"{src} has {len(files)} image(s): nothing would be left for train; lower --val/--test")
    with staged_folder(out) as stage:
        for name, idx in parts.items():
            for i in idx:
                dst = stage / name / files[i].relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(files[i], dst)
    return {name: len(idx) for name, idx in parts.items()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pix2pix-lit prepare", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("combine", help="A|B side-by-side files from two folders matched by name")
    c.add_argument("a_dir", type=Path)
    c.add_argument("b_dir", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--workers", type=int, default=None)
    e = sub.add_parser("edges", help="one-channel sketches (black lines on white) from photos")
    e.add_argument("src", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--method", choices=EDGE_METHODS, default="canny")
    e.add_argument("--low", type=int, default=100, help="canny: lower hysteresis threshold")
    e.add_argument("--high", type=int, default=200, help="canny: upper hysteresis threshold")
    e.add_argument("--sigma", type=float, default=1.0, help="Gaussian blur (canny) / inner Gaussian (xdog)")
    e.add_argument("--workers", type=int, default=None)
    s = sub.add_parser("split", help="train/val/test folders, seeded")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--val", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    lab = sub.add_parser("labels", help="id maps (one class id per pixel) from colour renderings of labels")
    lab.add_argument("src", type=Path)
    lab.add_argument("out", type=Path)
    lab.add_argument("--palette", default="cityscapes",
                     help="cityscapes (its *_gtFine_color.png colours), or a file: a JSON list of [r, g, b] per id, "
                     "or one 'r g b' line per id")
    lab.add_argument("--workers", type=int, default=None)
    sh = sub.add_parser("shards", help="LitData chunks of a dataset, for the streaming DataModules")
    sh.add_argument("src", type=Path)
    sh.add_argument("out", type=Path)
    sh.add_argument("--unpaired", action="store_true", help="two domains (trainA/trainB, ...): for CycleGAN")
    sh.add_argument("--layout", default=None, help="the data.layout of SRC (default: aligned; unpaired: folders)")
    for option in ("a_dir", "b_dir", "a_suffix", "b_suffix", "instance_dir", "instance_suffix"):
        sh.add_argument(f"--{option}", default=None, help=f"as data.{option}")
    sh.add_argument("--label_nc", type=int, default=None, help="as data.label_nc: SRC holds label maps")
    sh.add_argument("--contain_dontcare_label", action="store_true", default=None)
    sh.add_argument("--no_instance", action="store_true", default=None)
    sh.add_argument("--max_dataset_size", type=int, default=None, help="at most this many samples per split")
    sh.add_argument("--val_fraction", type=float, default=0.1, help="held out of train when SRC has no val split")
    sh.add_argument("--seed", type=int, default=0, help="the seed of that hold-out")
    sh.add_argument("--chunk_bytes", default="64MB", help="LitData's chunk size")
    sh.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "combine":
            n, only_a, only_b = combine(args.a_dir, args.b_dir, args.out, args.workers)
            print(f"wrote {n} A|B file(s) to {args.out}")
            for side, names in (("A", only_a), ("B", only_b)):
                if names:
                    print(f"{len(names)} name(s) only in {side}, left out: {', '.join(names[:10])}"
                          f"{' ...' if len(names) > 10 else ''}")
        elif args.command == "labels":
            n, classes = labels_folder(args.src, args.out, args.palette, args.workers)
            print(f"wrote {n} id map(s) ({classes} classes in the palette) to {args.out}")
        elif args.command == "shards":
            from pix2pix_lit.data.streaming import write_shards

            layout = {k: getattr(args, k) for k in ("layout", "a_dir", "b_dir", "a_suffix", "b_suffix", "instance_dir",
                                                    "instance_suffix", "label_nc", "contain_dontcare_label",
                                                    "no_instance", "max_dataset_size")}
            counts = write_shards(args.src, args.out, args.unpaired, args.val_fraction, args.seed, args.chunk_bytes,
                                  args.workers, **layout)
            print(f"wrote {', '.join(f'{k} {v}' for k, v in counts.items())} sample(s) as LitData shards to {args.out}")
        elif args.command == "edges":
            n = edges_folder(args.src, args.out, args.method, args.workers, low=args.low, high=args.high, sigma=args.sigma)
            print(f"wrote {n} {args.method} sketch(es) to {args.out}")
        else:
            counts = split(args.src, args.out, args.val, args.test, args.seed)
            print(f"wrote {', '.join(f'{k} {v}' for k, v in counts.items())} image(s) to {args.out}")
    except Pix2PixLitError as err:
        print(f"pix2pix-lit prepare: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # the output cannot be written (read-only place, full disk): nothing is left behind
        print(f"pix2pix-lit prepare: error: cannot write {args.out} ({err.strerror or err}); choose another output "
              "folder", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
