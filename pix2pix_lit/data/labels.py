"""Semantic label maps: integer class ids (and instance ids) read exactly as stored, never interpolated.

A label map is a PNG of class ids (mode ``L``, ``P`` (the palette indices are the ids), ``I`` or 16-bit);
an instance map a PNG of instance ids (Cityscapes ``*_instanceIds.png``: 16-bit). Every resize of either is
nearest-neighbour and shares the photo's crop and flip (:class:`~pix2pix_lit.data.transforms.JointTransform`),
so an id that enters is the id that arrives. The data keeps ids small (``uint8``/``int16``); the model one-hot
encodes them (:func:`one_hot`) with the instance boundaries (:func:`instance_edges`) as one more channel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from pix2pix_lit.atomic import staged_file
from pix2pix_lit.data.datasets import Index, split_index
from pix2pix_lit.data.io import (
    check_decodable,
    check_mode,
    convert_channels,
    data_cache_dir,
    load_image,
    log_converted,
    lossy_format,
    oriented_size,
    peek_image,
    predict_item,
    to_tensor,
)
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# the id every label convention here uses for "unlabelled": a class of its own with contain_dontcare_label. The one
# encoding of don't-care from the files to the scores: the data, grids, segmenter targets and export keep 255; only
# the one-hot a network sees puts it in the channel after the classes (network_input)
DONTCARE_ID = 255
ID_MODES = {"L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"}


def semantic_channels(label_nc: int, contain_dontcare_label: bool, instance_edges: bool) -> int:
    """The channels a network sees for label maps: one per class (+ don't-care) (+ the instance edges)."""
    return label_nc + int(contain_dontcare_label) + int(instance_edges)


def read_ids(path: Path, what: str = "label map") -> Image.Image:
    """``path`` decoded as an id map: mode ``L`` (ids up to 255) or ``I`` (wider), palette indices for ``P``."""
    img = peek_image(path)
    try:
        lossy = lossy_format(img)
        if lossy:
            raise DataError(f"{path} is a {lossy} file: lossy compression changes the ids of a {what} (pixels at "
                            "class borders land in other classes); save it as PNG from the original ids")
        if img.mode not in ID_MODES:
            raise DataError(
                f"{path} is a {img.mode} image where a {what} of integer ids is expected; a colour rendering of "
                "labels can be turned into ids with `pix2pix-lit prepare labels --palette cityscapes|FILE SRC OUT`"
            )
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path} cannot be decoded ({e}); the file is truncated or corrupt") from None
        if img.mode == "P":  # the indices, not the colours they are shown with
            return Image.fromarray(np.asarray(img), "L")
        if img.mode.startswith("I;16"):
            return img.convert("I")
        return img.copy()
    finally:
        img.close()


def first_bad_id(ids: np.ndarray, label_nc: int, contain_dontcare_label: bool) -> Optional[tuple[int, int, int]]:
    """(id, x, y) of the first pixel whose id is no class (``>= label_nc``, but for the don't-care id 255 with
    ``contain_dontcare_label``), or None."""
    bad = ids >= label_nc
    if contain_dontcare_label:
        bad &= ids != DONTCARE_ID
    if not bad.any():
        return None
    y, x = (int(v[0]) for v in np.nonzero(bad))
    return int(ids[y, x]), x, y


def check_ids(ids: np.ndarray, label_nc: int, contain_dontcare_label: bool, path: Path) -> None:
    """Every id is a class (``< label_nc``) or, with ``contain_dontcare_label``, the don't-care id 255."""
    found = first_bad_id(ids, label_nc, contain_dontcare_label)
    if found is not None:
        value, x, y = found
        hint = (" (255 is 'unlabelled': set data.contain_dontcare_label true to make it a class)"
                if value == DONTCARE_ID else "")
        raise DataError(f"{path}: class id {value} at pixel (x={x}, y={y}) is not below data.label_nc={label_nc}"
                        f"{hint}; set data.label_nc to the number of classes")


def encode_ids(ids: np.ndarray, label_nc: int, contain_dontcare_label: bool) -> torch.Tensor:
    """Checked ids as a (1, H, W) tensor, as stored (don't care stays 255): ``uint8`` when every id fits, else
    ``int16``."""
    dtype = np.uint8 if label_nc <= 256 else np.int16
    return torch.from_numpy(ids.astype(dtype))[None]


def check_label_files(paths: list[Path], label_nc: int, contain_dontcare_label: bool, ade20k: bool = False) -> None:
    """Read every label map once before a run starts: a colour or lossy image, a corrupt file or an id out of range
    stops the run at once with a DataError naming the file (and the id and pixel)."""
    for path, ids in remembered_ids(paths).items():
        classes = to_class_ids(np.asarray(ids, dtype=np.int64), ade20k)
        if any(i >= label_nc and not (contain_dontcare_label and i == DONTCARE_ID) for i in classes.tolist()):
            with read_ids(path) as img:  # again, to name the first pixel out of range
                check_ids(to_class_ids(np.asarray(img), ade20k), label_nc, contain_dontcare_label, path)


def remembered_ids(paths: list[Path]) -> dict[Path, list[int]]:
    """The ids each label map holds as stored (:func:`stored_ids`), remembered by the file's content (a hash: a
    file edited in place with its size and time kept is read again), so a second run on the same data decodes
    nothing again."""
    cache_dir = data_cache_dir("label-ids")
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path)
    out: dict[Path, list[int]] = {}
    for folder, files in by_folder.items():
        cache = cache_dir / (hashlib.sha1(str(folder.resolve()).encode()).hexdigest() + ".json")
        try:
            known = json.loads(cache.read_text()) if cache.is_file() else {}
        except (OSError, ValueError):
            known = {}
        keys = {path: _content_key(path) for path in files}
        todo = [p for p in files if keys[p] not in known]
        if todo:
            if len(todo) > 200:
                log.info("reading the ids of %d label maps in %s once (remembered for later runs)", len(todo), folder)
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
                for path, ids in zip(todo, pool.map(stored_ids, todo)):
                    known[keys[path]] = ids
            _write_cache(cache, known)
        out.update((path, known[keys[path]]) for path in files)
    return out


def _content_key(path: Path) -> str:
    """``name|hash of the bytes``: hashing is ~50x faster than decoding a PNG, and unlike size and mtime it cannot
    miss an edit."""
    try:
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); check the file's permissions") from None
    return f"{path.name}|{digest}"


def stored_ids(path: Path) -> list[int]:
    """The ids a label map holds, as stored."""
    with read_ids(path) as img:
        a = np.asarray(img)
    if a.dtype == np.uint8:  # a histogram is much faster than sorting for 8-bit maps
        return np.flatnonzero(np.bincount(a.ravel(), minlength=256)).tolist()
    return np.unique(a).tolist()


def _write_cache(cache: Path, known: dict) -> None:
    try:
        with staged_file(cache) as tmp:
            tmp.write_text(json.dumps(known))
    except OSError:  # a read-only cache only costs the next run the reading again
        pass


def instance_edges(instances: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """pix2pixHD's boundary map of an (…, H, W) instance-id tensor: 1 where a pixel's id differs from one of its
    4 neighbours, else 0 (in ``dtype``, the same shape).

    Written with comparisons, zero padding and a sum (no in-place writes), so the exported label-map generators
    trace it into their graphs as it is (``pix2pix_lit.serving.export``: class boundaries as the edge channel)."""
    t = instances
    horizontal = (t[..., :, 1:] != t[..., :, :-1]).to(dtype)
    vertical = (t[..., 1:, :] != t[..., :-1, :]).to(dtype)
    count = (F.pad(horizontal, (1, 0)) + F.pad(horizontal, (0, 1))
             + F.pad(vertical, (0, 0, 1, 0)) + F.pad(vertical, (0, 0, 0, 1)))
    return (count > 0).to(dtype)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, 1, H, W) class ids as (N, num_classes, H, W) float one-hot maps."""
    return F.one_hot(labels[:, 0].long(), num_classes).permute(0, 3, 1, 2).float()


def network_input(batch: dict[str, Any], label_nc: int, contain_dontcare_label: bool, instance_edges: bool,
                  device: Optional[torch.device] = None) -> torch.Tensor:
    """What a generator (and a conditional discriminator) sees of a batch's ``source``: the image itself, or the
    label map one-hot encoded (+ the don't-care class) with the instance edges stacked on — encoded here, on the
    device, because the data keeps the small ids."""
    source = batch["source"]
    if not label_nc:
        return source
    ids = source.to(device or source.device).long()
    if contain_dontcare_label:  # the don't-care id is the channel after the classes
        ids = torch.where(ids == DONTCARE_ID, label_nc, ids)
    x = one_hot(ids, label_nc + int(contain_dontcare_label))
    if instance_edges:
        if "edges" not in batch:
            raise ConfigError("this model takes instance edges (model.no_instance false) but the data gives none; give "
                            "the data instance maps (data.instance_dir) or train with data.no_instance true")
        x = torch.cat([x, batch["edges"].to(x.device, x.dtype)], 1)
    return x


class LabelPairDataset(Dataset):
    """Label maps (sources) paired with photos (targets), with instance maps when given: items
    ``{"source": (1, H, W) ids, "target": (C, H, W) in [-1, 1], "name"}`` (+ ``"edges"``: (1, H, W) 0/1, the
    instance boundaries after the transform, as pix2pixHD computes them).

    ``pairs``: (name, label map, photo, instance map or None). ``ade20k``: the ADE20K convention, where 0 is
    "unlabelled" and the classes are 1..150: ids are shifted down by one and 0 becomes the don't-care id.
    """

    def __init__(
        self, pairs: list[tuple[str, Path, Path, Optional[Path]]], transform: JointTransform, label_nc: int,
        contain_dontcare_label: bool, output_nc: int = 3, ade20k: bool = False, check: bool = True,
        strict_channels: bool = False,
    ) -> None:
        self.pairs, self.transform = list(pairs), transform
        self.label_nc, self.dontcare, self.output_nc, self.ade20k = label_nc, contain_dontcare_label, output_nc, ade20k
        self.strict_channels = strict_channels
        if check:
            self._check()

    def describe(self) -> str:
        """How samples are read (part of :func:`~pix2pix_lit.data.datasets.fingerprint`)."""
        return (f"LabelPairDataset label_nc={self.label_nc} dontcare={self.dontcare} ade20k={self.ade20k} "
                f"nc={self.output_nc} {self.transform!r}")

    def sample_files(self) -> list[Path]:
        return [p for _, *paths in self.pairs for p in paths if p is not None]

    def _check(self) -> None:
        converted = 0
        for _, label, photo, instance in self.pairs:
            with peek_image(label) as a, peek_image(photo) as b:
                sizes = {label: oriented_size(a), photo: oriented_size(b)}
                converted += check_mode(photo, b.mode, b.getbands(), self.output_nc, "data.output_nc",
                                        self.strict_channels)
            if instance is not None:
                with peek_image(instance) as c:
                    sizes[instance] = oriented_size(c)
            (w, h) = sizes[label]
            for other, (ow, oh) in sizes.items():
                if (ow, oh) != (w, h):
                    raise DataError(f"{other} is {ow}x{oh} but its label map {label} is {w}x{h}; a label map, its "
                                    "instance map and its photo must have the same size")
        if self.pairs:
            log_converted(converted, "data.output_nc", str(self.pairs[0][2].parent))
        check_decodable([photo for _, _, photo, _ in self.pairs])
        check_label_files([label for _, label, _, _ in self.pairs], self.label_nc, self.dontcare, self.ade20k)
        instances = [inst for *_, inst in self.pairs if inst is not None]
        for path in instances:
            with peek_image(path) as img:
                if img.mode not in ID_MODES:
                    raise DataError(f"{path} is a {img.mode} image where an instance map of integer ids is expected")
        check_decodable(instances)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: Index) -> dict[str, Any]:
        i, rng = split_index(index)
        name, label_path, photo_path, instance_path = self.pairs[i]
        images = [read_ids(label_path)]
        with load_image(photo_path) as photo:
            images.append(convert_channels(photo.copy(), self.output_nc, photo_path, "data.output_nc",
                                           self.strict_channels))
        if instance_path is not None:
            images.append(read_ids(instance_path, "instance map"))
        out = self.transform(images, rng, nearest=(0, 2))
        ids = to_class_ids(np.asarray(out[0]), self.ade20k)
        check_ids(ids, self.label_nc, self.dontcare, label_path)
        item: dict[str, Any] = {"source": encode_ids(ids, self.label_nc, self.dontcare), "target": to_tensor(out[1]),
                                "name": name}
        if instance_path is not None:
            item["edges"] = instance_edges(torch.from_numpy(np.asarray(out[2]).astype(np.int64)))[None]
        return item


def to_class_ids(stored: np.ndarray, ade20k: bool = False) -> np.ndarray:
    """The class ids of a stored label map (``ade20k``: 0 is unlabelled, classes are stored as 1..N)."""
    ids = stored.astype(np.int64)
    if ade20k:
        ids = np.where(ids == 0, DONTCARE_ID, ids - 1)
    return ids


class LabelMapsForPredict(Dataset):
    """Label maps of any size for ``predict``: ``{"source", "name", "size"}`` (+ ``"edges"`` when the model takes
    instance edges: with no instance maps at hand, the boundaries between classes are used, as GauGAN's demo
    does with a painted map)."""

    def __init__(self, files: list[Path], root: Path, label_nc: int, contain_dontcare_label: bool, edges: bool,
                 ade20k: bool = False) -> None:
        self.files, self.root = list(files), Path(root)
        self.label_nc, self.dontcare, self.edges, self.ade20k = label_nc, contain_dontcare_label, edges, ade20k
        check_label_files(self.files, label_nc, contain_dontcare_label, ade20k)
        if edges:
            log.info("predicting label maps without instance maps: the class boundaries are the edge channel")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        with read_ids(path) as img:
            ids = to_class_ids(np.asarray(img), self.ade20k)
        source = encode_ids(ids, self.label_nc, self.dontcare)
        edges = instance_edges(source.long()) if self.edges else None
        return predict_item(source, path.relative_to(self.root).as_posix(), edges)


def palette(n: int = 256) -> np.ndarray:
    """A fixed (n, 3) uint8 colour per class id: the PASCAL VOC colour map (bits of the id spread over R, G, B),
    so neighbouring ids get distinct colours and a rendering means the same on every run."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[i] = (r, g, b)
    return out


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) class ids as (N, 3, H, W) RGB images in [-1, 1] in the :func:`palette`'s colours."""
    colours = torch.from_numpy(palette(max(256, int(labels.max()) + 1))).to(labels.device)
    rgb = colours[labels[:, 0].long()].permute(0, 3, 1, 2).float()
    return rgb / 127.5 - 1


# The Cityscapes label ids 0..33 with their names and the colours of the dataset's *_gtFine_color.png renderings
# (cityscapesScripts' labels.py). Ids that share a colour (0-4: black; 17/18: poles) turn back into the first.
CITYSCAPES = (
    ("unlabeled", (0, 0, 0)), ("ego vehicle", (0, 0, 0)), ("rectification border", (0, 0, 0)),
    ("out of roi", (0, 0, 0)), ("static", (0, 0, 0)), ("dynamic", (111, 74, 0)), ("ground", (81, 0, 81)),
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("parking", (250, 170, 160)),
    ("rail track", (230, 150, 140)), ("building", (70, 70, 70)), ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)), ("guard rail", (180, 165, 180)), ("bridge", (150, 100, 100)),
    ("tunnel", (150, 120, 90)), ("pole", (153, 153, 153)), ("polegroup", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("caravan", (0, 0, 90)),
    ("trailer", (0, 0, 110)), ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
)


# Cityscapes' train ids (cityscapesScripts' labels.py, the ``trainId`` column) of the label ids 0..33 above: the 19
# classes every Cityscapes segmentation score is computed over; the others (255) are left out of the evaluation.
CITYSCAPES_TRAIN_IDS = (255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9,
                        10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18)
CITYSCAPES_TRAIN_CLASSES = tuple(name for (name, _), t in zip(CITYSCAPES, CITYSCAPES_TRAIN_IDS) if t != 255)


def label_classes(label_nc: int, contain_dontcare_label: bool, layout: Optional[str] = None,
                  class_names: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Each class of a label-map dataset as ``{"id", "name", "colour"}``: ``id`` as its maps store it (ADE20K:
    the class + 1, 0 unlabelled), the name from ``class_names`` (else Cityscapes' for that layout, else
    ``class N``), the colour of the dataset's renderings (Cityscapes) or of :func:`palette`. Don't-care last."""
    colours = palette(max(256, label_nc + 1))
    names = list(class_names or [])
    if not names and layout == "cityscapes":
        names = [name for name, _ in CITYSCAPES]
    if layout == "cityscapes":
        colours[:len(CITYSCAPES)] = [rgb for _, rgb in CITYSCAPES]
    offset = 1 if layout == "ade20k" else 0
    classes = [{"id": i + offset, "name": names[i] if i < len(names) else f"class {i}", "colour": colours[i].tolist()}
               for i in range(label_nc)]
    if contain_dontcare_label:
        classes.append({"id": 0 if layout == "ade20k" else DONTCARE_ID, "name": "unlabelled",
                        "colour": colours[DONTCARE_ID].tolist()})  # PASCAL VOC's colour for "void"
    return classes


def load_palette(spec: str) -> np.ndarray:
    """The (n, 3) colours of class ids 0..n-1: ``cityscapes``, or a file: JSON (a list of [r, g, b]) or text
    (one ``r g b`` per line, the line number being the id)."""
    if spec == "cityscapes":
        return np.array([rgb for _, rgb in CITYSCAPES], np.uint8)
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"--palette {spec}: not 'cityscapes' and not a readable file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"--palette {spec} is not a text file; expected a JSON list of [r, g, b] or one 'r g b' line "
                        "per class id") from None
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [
            [int(v) for v in line.split()[:3]] for line in text.splitlines() if line.strip()]
        colours = np.array(rows, dtype=np.int64)
    except (ValueError, TypeError):
        colours = np.zeros((0,))
    if colours.ndim != 2 or colours.shape[1] != 3 or colours.size == 0 or colours.min() < 0 or colours.max() > 255:
        raise DataError(f"--palette {spec}: expected a JSON list of [r, g, b] or one 'r g b' line per class id "
                        "(values 0-255)")
    return colours.astype(np.uint8)


def colours_to_ids(rgb: np.ndarray, colours: np.ndarray, path: Path) -> np.ndarray:
    """A colour rendering (H, W, 3) as class ids by exact colour match (shared colours: the first id); a colour
    that is no class's is a DataError naming the pixel and the file."""
    keys = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
    first = {}
    for i, k in enumerate(keys.tolist()):
        first.setdefault(k, i)
    pixels = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(pixels, return_inverse=True)
    lookup = np.array([first.get(k, -1) for k in uniq.tolist()], dtype=np.int64)
    ids = lookup[inverse].reshape(pixels.shape)
    if (ids < 0).any():
        y, x = (int(v[0]) for v in np.nonzero(ids < 0))
        raise DataError(f"{path}: the colour {tuple(int(c) for c in rgb[y, x])} at pixel (x={x}, y={y}) is no class's "
                        f"in the palette ({len(colours)} classes); an antialiased or JPEG rendering has mixed colours: "
                        "use the lossless PNG labels")
    return ids
