"""Datasets: side-by-side A|B files, separate A/B folders matched by name, single images for predict.

Each item is ``{"source": (Cin,H,W), "target": (Cout,H,W), "name": str}`` in [-1, 1]; the
direction (AtoB/BtoA) is resolved here, once. An item may be indexed by ``i`` or by ``(i, seed)``:
the seed (from :class:`SeededSampler`) drives the random crop/flip, so augmentation is a pure
function of (seed, epoch, sample) whatever the number of workers, and resumes exactly.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from torch.utils.data import Dataset, DistributedSampler, Subset

from pix2pix_lit.data.io import (
    check_decodable,
    check_image_files,
    check_mode,
    convert_channels,
    list_images,
    load_image,
    log_converted,
    oriented_size,
    peek_image,
    predict_item,
    to_tensor,
)
from pix2pix_lit.data.transforms import JointTransform
from pix2pix_lit.errors import DataError

log = logging.getLogger(__name__)

Index = Union[int, tuple[int, int]]


def split_index(index: Index) -> tuple[int, random.Random]:
    if isinstance(index, tuple):
        i, seed = index
        return int(i), random.Random(seed)
    return int(index), random.Random(int(index))


class _PairedBase(Dataset):
    def __init__(
        self, transform: JointTransform, direction: str, input_nc: int, output_nc: int, strict_channels: bool = False
    ) -> None:
        self.transform = transform
        self.swap = direction == "BtoA"
        self.input_nc, self.output_nc = input_nc, output_nc
        self.strict_channels = strict_channels

    def describe(self) -> str:
        """How samples are read: direction, channels and preprocessing (part of :func:`fingerprint`)."""
        return f"{type(self).__name__} swap={self.swap} nc={self.input_nc},{self.output_nc} {self.transform!r}"

    def sample_files(self) -> list[Path]:
        raise NotImplementedError

    def _nc_A_B(self) -> tuple[tuple[int, str], tuple[int, str]]:
        """(channels, option name) that A and B are read with, after the direction is applied."""
        src, tgt = (self.input_nc, "data.input_nc"), (self.output_nc, "data.output_nc")
        return (tgt, src) if self.swap else (src, tgt)

    def _make_item(self, a, b, name: str, path_a: Path, path_b: Path, rng: random.Random) -> dict[str, Any]:
        (nc_a, opt_a), (nc_b, opt_b) = self._nc_A_B()
        a = convert_channels(a, nc_a, path_a, opt_a, self.strict_channels)
        b = convert_channels(b, nc_b, path_b, opt_b, self.strict_channels)
        a, b = self.transform([a, b], rng)
        ta, tb = to_tensor(a), to_tensor(b)
        source, target = (tb, ta) if self.swap else (ta, tb)
        return {"source": source, "target": target, "name": name}


class AlignedDataset(_PairedBase):
    """The official format: each file holds A (left half) and B (right half) side by side."""

    def __init__(
        self, files: list[Path], transform: JointTransform, direction: str = "AtoB", input_nc: int = 3,
        output_nc: int = 3, check: bool = True, strict_channels: bool = False,
    ) -> None:
        super().__init__(transform, direction, input_nc, output_nc, strict_channels)
        self.files = list(files)
        if check:
            self._check()

    def _check(self) -> None:
        (nc_a, opt_a), (nc_b, opt_b) = self._nc_A_B()
        check_image_files(self.files, {opt_a: nc_a, opt_b: nc_b}, self.strict_channels, even_width=True)

    def __len__(self) -> int:
        return len(self.files)

    def sample_files(self) -> list[Path]:
        return self.files

    def __getitem__(self, index: Index) -> dict[str, Any]:
        i, rng = split_index(index)
        path = self.files[i]
        with load_image(path) as img:
            w, h = img.size
            if w % 2:
                raise DataError(f"{path} is {w} pixels wide, an odd width: A|B files need an even width")
            a = img.crop((0, 0, w // 2, h))
            b = img.crop((w // 2, 0, w, h))
            a.load()
            b.load()
        return self._make_item(a, b, path.stem, path, path, rng)


def _key(path: Path, folder: Path, suffix: str) -> str | None:
    rel = path.relative_to(folder).as_posix()
    if suffix:
        return rel[: -len(suffix)] if rel.endswith(suffix) else None
    return rel.rsplit(".", 1)[0]


def keyed_images(folder: Path, suffix: str) -> dict[str, Path]:
    """The images of ``folder`` by pairing name; two files with one name (``x.jpg``, ``x.png``) are an error."""
    out: dict[str, Path] = {}
    for path in list_images(folder):
        key = _key(path, folder, suffix)
        if key is None:
            continue
        if key in out:
            raise DataError(f"{out[key]} and {path} have the same name {key!r}, so which one pairs is ambiguous; "
                            "remove or rename one of them")
        out[key] = path
    return out


def match_pairs(dir_a: Path, dir_b: Path, a_suffix: str = "", b_suffix: str = "",
                suffix_options: tuple[str, str] = ("data.a_suffix", "data.b_suffix")) -> list[tuple[str, Path, Path]]:
    """Pair the images of two folders by name: the relative path minus ``*_suffix`` (or minus the extension).

    Cityscapes, for instance: ``a_suffix="_gtFine_color.png"``, ``b_suffix="_leftImg8bit.png"``.
    Unmatched files are reported in the log; no match at all is a DataError.
    """
    files_a = keyed_images(dir_a, a_suffix)
    files_b = keyed_images(dir_b, b_suffix)
    keys = sorted(files_a.keys() & files_b.keys())
    only_a, only_b = sorted(files_a.keys() - files_b.keys()), sorted(files_b.keys() - files_a.keys())
    for side, names, folder in (("A", only_a, dir_b), ("B", only_b, dir_a)):
        if names:
            log.warning(
                "%d %s image(s) have no partner in %s and are left out (e.g. %s)",
                len(names), side, folder, ", ".join(names[:5]),
            )
    if not keys:
        raise DataError(
            f"no image in {dir_a} has a partner of the same name in {dir_b}; check {suffix_options[0]}/{suffix_options[1]} "
            f"(A names like {next(iter(sorted(files_a)), '?')!r}, B names like {next(iter(sorted(files_b)), '?')!r})"
        )
    return [(k, files_a[k], files_b[k]) for k in keys]


class FolderPairDataset(_PairedBase):
    """A and B images in separate folders, paired by :func:`match_pairs`; a pair must have one size."""

    def __init__(
        self, pairs: list[tuple[str, Path, Path]], transform: JointTransform, direction: str = "AtoB",
        input_nc: int = 3, output_nc: int = 3, check: bool = True, strict_channels: bool = False,
    ) -> None:
        super().__init__(transform, direction, input_nc, output_nc, strict_channels)
        self.pairs = list(pairs)
        if check:
            self._check()

    def _check(self) -> None:
        (nc_a, opt_a), (nc_b, opt_b) = self._nc_A_B()
        converted = {opt_a: 0, opt_b: 0}
        for _, pa, pb in self.pairs:
            with peek_image(pa) as a, peek_image(pb) as b:
                size_a, size_b = oriented_size(a), oriented_size(b)
                if size_a != size_b:
                    raise DataError(
                        f"{pa} is {size_a[0]}x{size_a[1]} but its partner {pb} is {size_b[0]}x{size_b[1]}; "
                        "the two images of a pair must have the same size"
                    )
                converted[opt_a] += check_mode(pa, a.mode, a.getbands(), nc_a, opt_a, self.strict_channels)
                converted[opt_b] += check_mode(pb, b.mode, b.getbands(), nc_b, opt_b, self.strict_channels)
        if self.pairs:
            _, pa, pb = self.pairs[0]
            log_converted(converted[opt_a], opt_a, str(pa.parent))
            log_converted(converted[opt_b], opt_b, str(pb.parent))
        check_decodable(self.sample_files())

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_files(self) -> list[Path]:
        return [p for _, pa, pb in self.pairs for p in (pa, pb)]

    def __getitem__(self, index: Index) -> dict[str, Any]:
        i, rng = split_index(index)
        name, pa, pb = self.pairs[i]
        with load_image(pa) as a, load_image(pb) as b:
            if a.size != b.size:
                raise DataError(f"{pa} and {pb} differ in size; the two images of a pair must have the same size")
            return self._make_item(a.copy(), b.copy(), name, pa, pb, rng)


class SingleImageDataset(Dataset):
    """Images of any size for ``predict``: ``{"source", "name", "size"}``, no resizing or cropping."""

    def __init__(self, files: list[Path], root: Path, input_nc: int = 3, strict_channels: bool = False) -> None:
        self.files, self.root, self.input_nc = list(files), Path(root), input_nc
        self.strict_channels = strict_channels
        check_image_files(self.files, {"data.input_nc": input_nc}, strict_channels, where=str(self.root))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        with load_image(path) as img:
            img = convert_channels(img, self.input_nc, path, "data.input_nc", self.strict_channels)
            t = to_tensor(img)
        return predict_item(t, path.relative_to(self.root).as_posix())


class SeededSubset(Subset):
    """A Subset that takes the ``(index, seed)`` pairs of :class:`SeededSampler` as its dataset does (torch's
    Subset indexes its list with the pair and fails)."""

    def __getitem__(self, index: Index) -> Any:  # type: ignore[override]
        if isinstance(index, tuple):
            i, seed = index
            return self.dataset[(self.indices[i], seed)]
        return self.dataset[self.indices[index]]

    def __getitems__(self, indices: list[Index]) -> list[Any]:  # the DataLoader's batched fetch
        return [self[i] for i in indices]


class SeededSampler(DistributedSampler):
    """A DistributedSampler (also for one process) that yields ``(index, seed)`` pairs.

    The order depends only on (seed, epoch) (Lightning calls ``set_epoch``), and each sample's
    augmentation seed only on (seed, epoch, index): training data is reproducible and resumes exactly,
    independent of the global RNG, the number of workers and persistent workers.
    """

    resume_epoch: Optional[int] = None  # see resume_within
    resume_skip: int = 0

    def resume_within(self, epoch: int, samples_done: int) -> None:
        """Resumed mid-epoch: the first pass over ``epoch`` leaves out the ``samples_done`` samples this process
        had trained on before the checkpoint, so the run goes on with the rest of that epoch (as if never
        stopped); the length stays the epoch's, as Lightning counts the epoch's batches from it."""
        self.resume_epoch, self.resume_skip = epoch, samples_done

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip = 0
        if self.resume_epoch is not None:
            skip = self.resume_skip if self.epoch == self.resume_epoch else 0
            self.resume_epoch = None
        for i, idx in enumerate(super().__iter__()):
            if i >= skip:
                yield idx, sample_seed(self.seed, self.epoch, idx)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (0-based) of a run seeded ``seed``: what
    :class:`SeededSampler` gives the folder datasets, and the streamed ones use for the same crops and flips."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63)


def fingerprint(dataset: Dataset, *extra: Any) -> str:
    """A digest of which samples ``dataset`` holds and how they are read: paths, sizes and mtimes of the
    files, direction, channels, preprocessing (and ``extra``, e.g. how many batches are evaluated).

    Cached real-image features are keyed to it: they are reused only for the very same real set.
    """
    h = hashlib.sha1(repr(extra).encode())
    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    h.update(repr(indices).encode())
    if hasattr(dataset, "describe") and hasattr(dataset, "sample_files"):  # paired datasets, DomainView
        h.update(dataset.describe().encode())
        for path in dataset.sample_files():
            st = path.stat()
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:  # an unknown dataset: its type and length are all that can be told
        h.update(f"{type(dataset).__qualname__}|{len(dataset)}".encode())
    return h.hexdigest()
