"""Reading images from disk with errors that name the file and the fix."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from pix2pix_lit.atomic import staged_file
from pix2pix_lit.errors import ConfigError, DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
log = logging.getLogger(__name__)

CHANNELS = (1, 3, 4)
_SINGLE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# single-channel modes deeper than 8 bits: PNG's 16-bit grayscale opens as I;16, 16/32-bit TIFFs as I;16* / I
_DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_EXIF_ORIENTATION = 0x0112


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``folder``; a DataError if the folder is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist; check data.root (and the split/folder names)")
    pattern = "**/*" if recursive else "*"
    named = sorted(p for p in folder.glob(pattern) if is_image_file(p))
    for p in named:
        if not p.is_file():  # a broken link, a folder or a FIFO with an image's name: say so, do not skip it
            what = ("a folder" if p.is_dir() else "a link to nothing" if p.is_symlink() and not p.exists()
                    else "not a regular file")
            raise DataError(f"{p} has an image's name but is {what}, so it cannot be read; remove or rename it")
    files = named
    if not files:
        raise DataError(f"data folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)}); put the images there")
    return files


def check_channels_option(option: str, nc: int) -> int:
    if nc not in CHANNELS:
        raise ConfigError(f"{option}={nc}: images can be read with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels")
    return nc


def peek_image(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only) to check it is an image; the caller closes it."""
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image file that can be read; remove it or convert it to PNG/JPEG") from None
    except OSError as e:
        raise DataError(f"{path} cannot be opened ({e}); check the file's permissions or remove it") from None


def lossy_format(img: Image.Image) -> Optional[str]:
    """The name of ``img``'s file format if it stores pixels lossily (JPEG, lossy WebP), else None: an id map
    saved so has compression noise on its ids (a grey JPEG of 5 classes: ~12 % of the pixels in another class)."""
    if img.format in ("JPEG", "MPO"):
        return "JPEG"
    if img.format == "WEBP":
        fp = getattr(img, "fp", None)
        try:  # a WebP is lossless if its image chunk is VP8L ("VP8 " is lossy); the chunks sit near the start
            pos = fp.tell()
            fp.seek(0)
            head = fp.read(4096)
            fp.seek(pos)
        except (AttributeError, OSError, ValueError):
            return "WebP"
        return None if b"VP8L" in head and b"VP8 " not in head else "lossy WebP"
    return None


def check_mode(path: Path, mode: str, bands: tuple[str, ...], nc: int, option: str, strict: bool = False) -> bool:
    """Whether reading ``path`` with ``nc`` channels turns a grayscale image into RGB (True), which the official
    code does for every image (a few grey JPEGs sit in its horse2zebra and other downloads); ``strict``
    refuses that instead. Adding an alpha channel to an image that has none is always refused."""
    if nc == 4 and "A" not in bands and mode != "P":
        raise DataError(f"{path} has no alpha channel but {option}=4; set {option}: 3")
    if nc == 3 and mode in _SINGLE_CHANNEL_MODES:
        if strict:
            raise DataError(f"{path} is a grayscale image but {option}=3 and data.strict_channels is true; convert it "
                            "to RGB, or set data.strict_channels: false to read it as RGB (as the official code does)")
        return True
    return False


def log_converted(count: int, option: str, where: str) -> None:
    """One line for the grayscale images a dataset reads as RGB (see :func:`check_mode`)."""
    if count:
        log.info("%s: %d grayscale image(s) read as RGB (%s=3, as the official code does; "
                 "data.strict_channels: true refuses them)", where, count, option)


def to_8bit(img: Image.Image) -> Image.Image:
    """Images deeper than 8 bits as 8-bit ``L``, scaled (65535 -> 255), not clipped.

    PIL's own conversion of a 16-bit grayscale image to ``L`` clips every value above 255: a photo comes
    out as a white page. Values of 32-bit ``I`` images are read as 16-bit ones; ``F`` images as [0, 255].
    """
    if img.mode in _DEEP_MODES:
        a = np.asarray(img).astype(np.float64) / 257.0
    elif img.mode == "F":
        a = np.asarray(img).astype(np.float64)
    else:
        return img
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the image: swapped when its EXIF orientation turns it by 90 degrees."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: shown unrotated, as viewers do
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def as_viewed(img: Image.Image) -> Image.Image:
    """A decoded image as viewers show it: its EXIF orientation applied (phone photos), 8 bits per channel."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a damaged EXIF block: the pixels as stored
        pass
    return to_8bit(img)


def to_channels(img: Image.Image, nc: int) -> Image.Image:
    """An image with ``nc`` channels: 1 -> grayscale, 3 -> RGB, 4 -> RGBA.

    Transparency is kept for 4 channels; for 1 or 3 the image is laid on white, as viewers show it (a
    drawing with a transparent background is strokes on white). Used for training data, ``predict`` and
    ``serve`` alike, so each gives the model the same input for the same file.
    """
    img = to_8bit(img)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[nc]
    if nc != 4 and (img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img.convert(mode)


def convert_channels(img: Image.Image, nc: int, path: Path, option: str, strict: bool = False) -> Image.Image:
    """Convert to ``nc`` channels (see :func:`to_channels`), after :func:`check_mode`."""
    check_mode(path, img.mode, img.getbands(), nc, option, strict)
    return to_channels(img, nc)


def load_image(path: Path) -> Image.Image:
    """Fully decode ``path`` as viewers show it (:func:`as_viewed`: EXIF orientation, 8 bits); truncated or
    corrupt files give a DataError naming the file."""
    img = peek_image(path)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        img.close()
        raise DataError(f"{path} cannot be decoded ({e}); the file is truncated or corrupt: re-export or remove it") from None
    viewed = as_viewed(img)
    if viewed is not img:
        img.close()
    return viewed


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor (C, H, W) in [-1, 1]."""
    t = TF.pil_to_tensor(img).float().div_(127.5).sub_(1.0)
    return t


def predict_item(source: torch.Tensor, name: str, edges: Optional[torch.Tensor] = None) -> dict:
    """What ``predict`` reads of one input, from any dataset: the source (an image, or label ids), the name its
    output is written under, its own (H, W) (the output is brought back to it), and the instance edges if any."""
    item = {"source": source, "name": name, "size": torch.tensor(source.shape[-2:])}
    if edges is not None:
        item["edges"] = edges
    return item


def to_pil(t: torch.Tensor) -> Image.Image:
    """Tensor (C, H, W) in [-1, 1] -> 8-bit PIL image (1, 3 or 4 channels)."""
    u8 = to_uint8(t)
    return TF.to_pil_image(u8)


def to_uint8(t: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255], rounded as when saving to PNG."""
    return ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers never see half a file."""
    with staged_file(Path(path)) as tmp:
        tmp.write_text(text)


def save_image_atomic(img: Image.Image, path: Path) -> None:
    """Write ``img`` to ``path`` via a temporary file and a rename, so no half-written image is left."""
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    with staged_file(path) as tmp:
        img.save(tmp, format=fmt, **kwargs)


def data_cache_dir(kind: str) -> Path:
    """Where checks of data files are remembered between runs (``decoded``, ``label-ids``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pix2pix-lit" / kind


def _decode(path: Path) -> Optional[str]:
    """None if ``path`` decodes completely, else the DataError's message."""
    try:
        load_image(path).close()
    except DataError as e:
        return str(e)
    return None


def check_image_files(files: list[Path], channels: dict[str, int], strict: bool = False, even_width: bool = False,
                      where: Optional[str] = None) -> None:
    """The pass every list of image files gets before a run: each file's header against the channels each option
    in ``channels`` asks of it (``{"data.input_nc": 3}``; a DataError, or a conversion counted and logged once per
    option), side-by-side A|B files' widths even (``even_width``), then every file decoded once
    (:func:`check_decodable`). ``where``: the folder named in the conversion log (default: the first file's)."""
    converted = dict.fromkeys(channels, 0)
    for path in files:
        with peek_image(path) as img:
            width = oriented_size(img)[0]
            if even_width and width % 2:
                raise DataError(f"{path} is {width} pixels wide, an odd width: side-by-side A|B files need an even "
                                "width (two halves of equal size); re-export it or use data.layout: folders")
            for option, nc in channels.items():
                converted[option] += check_mode(path, img.mode, img.getbands(), nc, option, strict)
    if files:
        for option, count in converted.items():
            log_converted(count, option, where or str(files[0].parent))
    check_decodable(files)


def check_decodable(paths: list[Path], cache_dir: Optional[Path] = None) -> None:
    """Decode every image once before a run starts, so a truncated file (whose header reads fine) stops the
    run at once with a DataError naming it, not mid-epoch.

    Threads decode in parallel (PIL releases the GIL while decoding). Files that decoded before are
    remembered by path, size and modification time under ``~/.cache/pix2pix-lit/decoded``, so a second
    run on the same data pays nothing; a changed file is decoded again.
    """
    cache_dir = cache_dir or data_cache_dir("decoded")
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path)
    for folder, files in by_folder.items():
        cache = cache_dir / (hashlib.sha1(str(folder.resolve()).encode()).hexdigest() + ".txt")
        known = set(cache.read_text().splitlines()) if cache.is_file() else set()
        keys = {}
        for path in files:
            st = path.stat()
            keys[path] = f"{path.name}|{st.st_size}|{st.st_mtime_ns}"
        todo = [p for p in files if keys[p] not in known]
        if not todo:
            continue
        if len(todo) > 200:
            log.info("decoding %d images in %s once to check them (remembered for later runs)", len(todo), folder)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            errors = list(pool.map(_decode, todo))
        good = known | {keys[p] for p, err in zip(todo, errors) if err is None}
        try:
            write_text_atomic(cache, "\n".join(sorted(good)) + "\n")
        except OSError:  # a read-only cache only costs the next run the decoding again
            pass
        bad = [err for err in errors if err is not None]
        if bad:
            raise DataError(bad[0] if len(bad) == 1 else f"{bad[0]} ({len(bad) - 1} more such file(s) in {folder})")
