"""A built-in paired dataset: flat-coloured label layouts (A) -> textured, shaded "street photos" (B).

Generated procedurally and deterministically from a seed, written in the official on-disk format
(side-by-side A|B PNG files in ``root/{train,val,test}``) so the whole file path is exercised. Its label
form (``form="labels"``) writes the same scenes as id maps: ``{split}/labels`` (class ids, ``CLASSES``),
``{split}/instances`` (16-bit instance ids: class * 1000 + the object's number, as Cityscapes) and
``{split}/photos``. The
photo is mostly a function of the layout (class colours, textures tied to position, light from the
left, darker object borders), so a few CPU minutes of training visibly lower the L1 to the target.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pix2pix_lit.errors import ConfigError

# label colours (Cityscapes-like palette): sky, building, vegetation, road, car
PALETTE = np.array([[70, 130, 180], [70, 70, 70], [107, 142, 35], [128, 64, 128], [0, 0, 142]], dtype=np.uint8)
SKY, BUILDING, TREE, ROAD, CAR = range(5)
CLASSES = ("sky", "building", "vegetation", "road", "car")


def make_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size) int map of classes: sky on top, buildings, trees, a road and cars at the bottom."""
    return make_scene(rng, size)[0]


def make_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The layout (class ids) and its instance ids: every building, tree and car an object of its own
    (``class * 1000 + k``), sky and road one region each (their class id)."""
    lab = np.full((size, size), SKY, dtype=np.int64)
    inst = np.full((size, size), SKY, dtype=np.int64)
    count = {BUILDING: 0, TREE: 0, CAR: 0}

    def put(mask: np.ndarray, cls: int) -> None:
        lab[mask] = cls
        inst[mask] = cls * 1000 + count[cls]
        count[cls] += 1

    yy, xx = np.mgrid[0:size, 0:size]
    horizon = int(size * rng.uniform(0.55, 0.75))
    lab[horizon:] = inst[horizon:] = ROAD
    x = int(rng.integers(-size // 8, size // 8))
    while x < size:  # a row of buildings of random widths and heights
        w = int(rng.integers(size // 6, size // 3))
        top = int(rng.integers(size // 8, horizon - size // 8))
        mask = np.zeros((size, size), dtype=bool)
        mask[top:horizon, max(x, 0):x + w] = True
        put(mask, BUILDING)
        x += w + int(rng.integers(0, size // 10))
    for _ in range(int(rng.integers(1, 4))):  # round trees in front of the buildings
        cx, cy = rng.integers(0, size), horizon - rng.integers(size // 10, size // 4)
        r = rng.integers(size // 14, size // 7)
        put((xx - cx) ** 2 + ((yy - cy) * 1.3) ** 2 < r**2, TREE)
    for _ in range(int(rng.integers(0, 3))):  # cars on the road
        cx, cy = int(rng.integers(0, size)), int(rng.integers(horizon + 2, size - 2))
        w, h = size // 6, size // 14 + 1
        mask = np.zeros((size, size), dtype=bool)
        mask[max(cy - h, horizon):cy, max(cx - w // 2, 0):cx + w // 2] = True
        put(mask, CAR)
    return lab, inst


def render_photo(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render the "photo" of a layout as float RGB in [0, 1]."""
    size = lab.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), dtype=np.float32)
    sky = np.stack([0.55 + 0.35 * yy, 0.7 + 0.25 * yy, 0.95 + 0.0 * yy], -1)
    period = max(size // 10, 4)
    win = ((np.arange(size)[:, None] % period) < period // 2) & ((np.arange(size)[None, :] % period) < period // 2)
    building = np.where(win[..., None], [0.25, 0.3, 0.4], [0.72, 0.55, 0.42]).astype(np.float32)
    leaves = (0.5 + 0.5 * np.sin(xx * 40) * np.sin(yy * 40))[..., None]
    tree = np.array([0.12, 0.35, 0.1]) + leaves * np.array([0.1, 0.25, 0.05])
    road = np.stack([0.35 + 0.2 * yy] * 3, -1) * np.array([1.0, 1.0, 1.05])
    car = np.array([0.75, 0.1, 0.12]) + np.zeros_like(img)
    for cls, tex in ((SKY, sky), (BUILDING, building), (TREE, tree), (ROAD, road), (CAR, car)):
        img[lab == cls] = tex[lab == cls]
    light = 0.8 + 0.35 * (1.0 - xx)[..., None]  # sunlight from the left
    img = img * light
    edge = np.zeros((size, size), dtype=bool)
    edge[1:] |= lab[1:] != lab[:-1]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    img[edge] *= 0.45  # dark outlines where objects meet
    img += rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def make_pair(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(label image A, photo B) as uint8 (size, size, 3) arrays, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    lab = make_layout(rng, size)
    return PALETTE[lab], (render_photo(lab, rng) * 255 + 0.5).astype(np.uint8)


def make_labelled(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class ids uint8, instance ids uint16, photo uint8 RGB) of the scene :func:`make_pair` draws for ``seed``."""
    rng = np.random.default_rng(seed)
    lab, inst = make_scene(rng, size)
    return lab.astype(np.uint8), inst.astype(np.uint16), (render_photo(lab, rng) * 255 + 0.5).astype(np.uint8)


def _write_sample(folder: Path, i: int, seed: int, size: int, form: str) -> None:
    if form == "labels":
        lab, inst, photo = make_labelled(seed, size)
        for sub, img in (("labels", Image.fromarray(lab, "L")), ("instances", Image.fromarray(inst)),
                         ("photos", Image.fromarray(photo))):
            (folder / sub).mkdir(exist_ok=True)
            img.save(folder / sub / f"{i:05d}.png")
    else:
        a, b = make_pair(seed, size)
        Image.fromarray(np.concatenate([a, b], axis=1)).save(folder / f"{i:05d}.png")


MARKER_NAME = "dataset.json"
MARKER_KEYS = {"sizes", "image_size", "seed", "version"}  # what every marker generate() ever wrote holds


def _our_marker(marker: Path) -> dict | None:
    """The parameters recorded in ``marker`` if generate() wrote it (its keys), else None."""
    try:
        params = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(params, dict) and MARKER_KEYS <= set(params) <= MARKER_KEYS | {"form"}:
        return params
    return None


def generate(root: str | os.PathLike, sizes: dict[str, int], image_size: int = 72, seed: int = 0,
             form: str = "pairs") -> Path:
    """Write the dataset to ``root`` unless it is already there: ``{split}/{i}.png`` (A|B side by side), or with
    ``form="labels"`` ``{split}/labels|instances|photos/{i}.png``.

    Written to a temporary folder and renamed into place, so an interrupted run leaves nothing
    half-made; ``root/dataset.json`` records the parameters, and a different request regenerates it. A ``root``
    that exists, is not empty and has no such record is someone else's: a ConfigError, nothing touched.
    """
    root = Path(root)
    params = {"sizes": sizes, "image_size": image_size, "seed": seed, "version": 1}
    if form != "pairs":
        params["form"] = form
    marker = root / "dataset.json"
    written = _our_marker(marker)
    if written == params:
        return root
    if written is None and root.exists() and (not root.is_dir() or any(root.iterdir())):
        # never replace what this project did not write: a user's folder given as the built-in set's root
        raise ConfigError(f"data.root {root} holds files the built-in dataset did not write (no {MARKER_NAME} of its "
                          "own); the built-in set is generated only into an empty or absent folder: give another "
                          "data.root, or train on your images with PairedDataModule (docs/getting-started.md)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for split_no, (split, n) in enumerate(sorted(sizes.items())):
            (tmp / split).mkdir()
            for i in range(n):
                _write_sample(tmp / split, i, seed * 1_000_003 + split_no * 100_000 + i, image_size, form)
        (tmp / "dataset.json").write_text(json.dumps(params))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


class BuiltInData:
    """Mixin for a DataModule over the built-in set, stored side by side (``layout: aligned``): generates it into
    ``root`` on first use (before the parent's checks), also outside a Trainer and on processes where Lightning
    did not call prepare_data.

    Args:
        num_train, num_val, num_test: images per split. image_size: the side of the stored images
            (``load_size`` should match). dataset_seed: what the images are drawn from.
        The other options are those of the data module it is mixed into, with defaults for the small images.
    """

    built_in_form = "pairs"  # what generate() writes: "pairs" (side by side) or "labels"

    def __init__(
        self,
        root: str = "data/synthetic",
        num_train: int = 400,
        num_val: int = 48,
        num_test: int = 48,
        image_size: int = 72,
        dataset_seed: int = 0,
        load_size: int = 72,
        crop_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, load_size=load_size, crop_size=crop_size, **kwargs)
        if min(num_train, num_val, num_test) < 1 or image_size < 8:
            raise ConfigError("data.num_train/num_val/num_test must be >= 1 and data.image_size >= 8")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size, self.dataset_seed = image_size, dataset_seed

    def prepare_data(self) -> None:
        generate(self.root, self.sizes, self.image_size, self.dataset_seed, self.built_in_form)
        super().prepare_data()

    def setup(self, stage: str) -> None:
        generate(self.root, self.sizes, self.image_size, self.dataset_seed, self.built_in_form)
        super().setup(stage)

    def evaluation_sizes(self, stage: str) -> dict[str, int]:
        generate(self.root, self.sizes, self.image_size, self.dataset_seed, self.built_in_form)
        return super().evaluation_sizes(stage)
