"""Streamed datasets (LitData): datasets too large for a local disk, read from object storage as they train.

``pix2pix-lit prepare shards SRC OUT`` (:func:`write_shards`) reads a dataset in any layout the folder
DataModules read and writes it as LitData chunks, one LitData dataset per split: paired data in ``OUT/{split}``
(a record per sample: ``index``, ``name``, ``layout``, the A or label map file ``a``, the B or photo file ``b``,
the ``instance`` map; an ``aligned`` record holds its side-by-side file in ``a``), unpaired data in
``OUT/{split}A`` and ``OUT/{split}B`` (``index``, ``name``, ``half``, ``image``). Records hold the files' bytes
as stored (a JPEG stays a JPEG): nothing is decoded or re-encoded on the way, so a streamed sample is read by
the very code that reads the folder's file, with the same transform and, for sample ``index`` of epoch ``e``,
the same augmentation seed (:func:`~pix2pix_lit.data.datasets.sample_seed`). Direction and channels are
options of the reader, as for folders.

:class:`StreamingPairedDataModule` and :class:`StreamingUnpairedDataModule` read them from a local folder or a
URL (``s3://``, ``gs://``, ``azure://``, as LitData reads them). Training streams are shuffled by LitData
(chunk order, then samples within the chunks in memory) with ``drop_last`` so every process gets as many batches;
their position is LitData's ``StreamingDataLoader`` state, which Lightning saves in checkpoints and restores, so a
run resumes mid-epoch exactly. Validation and test read the chunks by index, each sample once over all processes,
as the folder DataModules do.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset

from pix2pix_lit.data.base import ImageDataModule, Part
from pix2pix_lit.data.datasets import AlignedDataset, FolderPairDataset, SeededSubset, sample_seed
from pix2pix_lit.data.io import predict_item, to_tensor
from pix2pix_lit.data.labels import LabelPairDataset
from pix2pix_lit.data.paired import PairedDataModule, _Field, _SourcesOnly
from pix2pix_lit.data.unpaired import DomainImages, UnpairedDataModule
from pix2pix_lit.errors import ConfigError, DataError
from pix2pix_lit.modes import Direction

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3://", "gs://", "azure://", "hf://", "http://", "https://")


def _litdata():
    # imported when streams are used: it loads the object-storage clients, which no other command needs
    try:
        import litdata
    except ImportError:  # a dependency: only a broken install lacks it
        raise ConfigError("streaming data needs LitData: pip install litdata") from None
    return litdata


def is_remote(root: str) -> bool:
    return str(root).startswith(REMOTE_SCHEMES)


def _join(root: str, split: str) -> str:
    return f"{str(root).rstrip('/')}/{split}" if is_remote(root) else str(Path(root) / split)


# -- writing -----------------------------------------------------------------------------------------------
def _paired_records(dataset: Dataset, layout: str) -> list[tuple]:
    """(index, name, layout, file a, file b, instance file) of each sample of a folder dataset (or a part)."""
    indices = None
    if isinstance(dataset, SeededSubset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    if isinstance(dataset, AlignedDataset):
        entries = [(p.stem, p, None, None) for p in dataset.files]
    elif isinstance(dataset, FolderPairDataset):
        entries = [(name, a, b, None) for name, a, b in dataset.pairs]
    else:  # LabelPairDataset
        entries = list(dataset.pairs)
    chosen = [entries[i] for i in indices] if indices is not None else entries
    return [(i, name, layout, a, b, inst) for i, (name, a, b, inst) in enumerate(chosen)]


def _read_paired(entry: tuple) -> dict[str, Any]:
    index, name, layout, a, b, inst = entry
    return {"index": index, "name": name, "layout": layout, "a": Path(a).read_bytes(),
            "b": Path(b).read_bytes() if b is not None else b"", "instance": Path(inst).read_bytes() if inst else b""}


def _read_domain(entry: tuple) -> dict[str, Any]:
    index, name, half, path = entry
    return {"index": index, "name": name, "half": half or "", "image": Path(path).read_bytes()}


def write_shards(src: Path, out: Path, unpaired: bool = False, val_fraction: float = 0.1, seed: int = 0,
                 chunk_bytes: str = "64MB", workers: Optional[int] = None, **layout: Any) -> dict[str, int]:
    """Write the splits (train, val, test) of the dataset at ``src`` as LitData chunks in ``out`` (see the module
    docstring); ``layout`` takes the folder DataModule's layout options (``layout``, ``a_dir``, ``label_nc``, ...).
    Every file is checked first, as training would (a DataError names the first bad one). Without a val split,
    ``val_fraction`` of train is held out (seeded), as the folder DataModules do. Returns the samples per split."""
    from pix2pix_lit.atomic import check_free_output, staged_folder

    litdata = _litdata()
    check_free_output(out, src)
    options = {k: v for k, v in layout.items() if v is not None}
    module_cls = UnpairedDataModule if unpaired else PairedDataModule
    module = module_cls(root=str(src), val_fraction=val_fraction, seed=seed, **options)
    module.require_root()
    h = module.hparams
    if not module.split_exists(h.train_split):
        raise DataError(f"{src} has no {h.train_split} split in data.layout {h.layout}; check the layout options")
    parts: dict[str, tuple[str, Part]] = {}
    for split in (h.train_split, h.val_split, h.test_split):
        if module.split_exists(split):
            parts[split] = (split, None)
    if h.val_split not in parts:
        log.info("%s has no %s split: holding out %.0f%% of %s (seed %d) as %s", src, h.val_split,
                 100 * val_fraction, h.train_split, seed, h.val_split)
        parts[h.train_split] = (h.train_split, "train")
        parts[h.val_split] = (h.train_split, "val")
    counts: dict[str, int] = {}
    with staged_folder(out) as stage:
        for name, (split, part) in parts.items():
            dataset = module.make_split(split, train=False, part=part)
            if unpaired:
                streams = {"A": dataset.A, "B": dataset.B}
                for domain, images in streams.items():
                    entries = [(i, images.name(i), images.half, p) for i, p in enumerate(images.files)]
                    _optimize(litdata, _read_domain, entries, stage / f"{name}{domain}", chunk_bytes, workers)
                    counts[f"{name}{domain}"] = len(entries)
            else:
                entries = _paired_records(dataset, h.layout)
                _optimize(litdata, _read_paired, entries, stage / name, chunk_bytes, workers)
                counts[name] = len(entries)
    return counts


def _optimize(litdata, fn: Callable, entries: list, out: Path, chunk_bytes: str, workers: Optional[int]) -> None:
    # in order (keep_data_ordered, no reordering by file size): record i is sample i of the folder dataset
    litdata.optimize(fn=fn, inputs=entries, output_dir=str(out.resolve()), chunk_bytes=chunk_bytes,
                     num_workers=max(1, min(workers or os.cpu_count() or 1, len(entries))), reorder_files=False,
                     keep_data_ordered=True, verbose=False, start_method="fork")


# -- reading -----------------------------------------------------------------------------------------------
class _Blob(io.BytesIO):
    """A streamed file's bytes where the folder datasets' readers take its path: ``str()`` names the sample in
    their error messages, ``stem`` is the sample's name."""

    def __init__(self, data: bytes, where: str, stem: str) -> None:
        super().__init__(data)
        self.where, self.stem = where, stem

    def __str__(self) -> str:
        return self.where


class PairedRecords:
    """A paired record -> the item its folder dataset gives (``AlignedDataset``, ``FolderPairDataset`` or
    ``LabelPairDataset``, by the record's layout): the same reader, transform and augmentation seed."""

    def __init__(self, where: str, transform, direction: str, input_nc: int, output_nc: int, strict_channels: bool,
                 label_nc: int, contain_dontcare_label: bool, instance_edges: bool) -> None:
        self.where, self.transform, self.direction = where, transform, direction
        self.input_nc, self.output_nc, self.strict_channels = input_nc, output_nc, strict_channels
        self.label_nc, self.dontcare, self.instance_edges = label_nc, contain_dontcare_label, instance_edges

    def __repr__(self) -> str:
        return (f"PairedRecords {self.direction} nc={self.input_nc},{self.output_nc} label_nc={self.label_nc} "
                f"dontcare={self.dontcare} edges={self.instance_edges} {self.transform!r}")

    def check(self, record: dict) -> None:
        """The options fit what the shards hold (label maps or images), in one line if not."""
        labels = record["layout"] in ("cityscapes", "ade20k") or (record["layout"] == "folders" and record["instance"])
        if self.label_nc and record["layout"] == "aligned":
            raise ConfigError(f"data.label_nc={self.label_nc} but {self.where} holds side-by-side image pairs; "
                              "set data.label_nc 0")
        if not self.label_nc and labels:
            raise ConfigError(f"{self.where} holds label maps ({record['layout']} layout): set data.label_nc")
        if self.instance_edges and not record["instance"]:
            raise ConfigError(f"{self.where} holds no instance maps: set data.no_instance true")

    def __call__(self, record: dict, seed: int) -> dict[str, Any]:
        name = record["name"]

        def blob(key: str, what: str) -> _Blob:
            return _Blob(record[key], f"{self.where} sample {name!r} ({what})", name)

        if self.label_nc:
            instance = blob("instance", "instance map") if self.instance_edges else None
            dataset = LabelPairDataset([(name, blob("a", "label map"), blob("b", "photo"), instance)], self.transform,
                                       self.label_nc, self.dontcare, self.output_nc,
                                       ade20k=record["layout"] == "ade20k", check=False,
                                       strict_channels=self.strict_channels)
        elif record["layout"] == "aligned":
            dataset = AlignedDataset([blob("a", "A|B file")], self.transform, self.direction, self.input_nc,
                                     self.output_nc, check=False, strict_channels=self.strict_channels)
        else:
            dataset = FolderPairDataset([(name, blob("a", "A"), blob("b", "B"))], self.transform, self.direction,
                                        self.input_nc, self.output_nc, check=False,
                                        strict_channels=self.strict_channels)
        return dataset[(0, seed)]


class DomainRecords:
    """An unpaired record -> ``{"image", "name"}`` as ``DomainImages`` reads the file, with the transform."""

    def __init__(self, where: str, transform, nc: int, option: str, strict_channels: bool) -> None:
        self.where, self.transform, self.nc, self.option = where, transform, nc, option
        self.strict_channels = strict_channels

    def __repr__(self) -> str:
        return f"DomainRecords nc={self.nc} {self.transform!r}"

    def __call__(self, record: dict, seed: int) -> dict[str, Any]:
        name = record["name"]
        images = DomainImages([_Blob(record["image"], f"{self.where} sample {name!r}", name)], self.nc, self.option,
                              record["half"] or None, check=False, strict_channels=self.strict_channels)
        (image,) = self.transform([images.read(0)], random.Random(seed))
        return {"image": to_tensor(image), "name": name}


def _loader_class():
    litdata = _litdata()

    class ResumableLoader(litdata.StreamingDataLoader):
        """LitData's loader, whose restored position serves the one epoch it was saved in.

        ``load_state_dict`` sets ``restore``, and LitData clears it only when an epoch's iterator runs to its
        end. Lightning ends an epoch when it has counted the epoch's batches, before that: with LitData's own
        loader the epoch after a mid-epoch resume replays the rest of the restored one instead of a new
        shuffle. Each ``iter()`` here after the first one that follows a restore starts a new epoch."""

        _restored_iter_pending = False
        _iterating = False  # LitData's own load_state_dict calls within an epoch (cycling streams) are not restores

        def load_state_dict(self, obj: dict) -> None:
            if not self._iterating:
                _warn_if_elastic(obj, self.num_workers, self.batch_size)
            super().load_state_dict(obj)
            if not self._iterating:
                self._restored_iter_pending = self.restore

        def __iter__(self):
            if not self._restored_iter_pending:
                self.restore = False
            self._restored_iter_pending = False
            return self._epoch(super().__iter__())

        def _epoch(self, batches):
            self._iterating = True
            try:
                yield from batches
            finally:
                self._iterating = False

    return ResumableLoader


def _warn_if_elastic(state: dict, num_workers: int, batch_size: int) -> None:
    """One warning when a saved stream position is restored with other processes, workers or batch size than it was
    saved with: LitData then resumes the epoch approximately (its elastic resume), never exactly."""
    import torch.distributed as dist
    from lightning.pytorch.utilities import rank_zero_warn

    saved = state.get("dataset") or {}
    now = {"world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
           "num_workers": max(1, num_workers or 0), "batch_size": int(batch_size or 1)}
    then = {k: max(1, int(saved[k])) if k == "num_workers" else int(saved[k]) for k in now if k in saved}
    changed = {k: (then[k], now[k]) for k in then if then[k] != now[k]}
    if changed:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
        rank_zero_warn(f"resuming a streamed epoch with other settings than its checkpoint's ({what}; 0 workers count "
                       f"as 1): LitData goes on approximately, dealing the rest of epoch {state.get('current_epoch')} "
                       "out anew, so some of its samples can be skipped or seen twice; resume with the checkpoint's "
                       f"{' and '.join(changed)} (data.num_workers, data.batch_size, trainer.devices/num_nodes) to go "
                       "on exactly")


def _stream_class():
    litdata = _litdata()

    class ShardStream(litdata.StreamingDataset):
        """One split's records, each decoded by ``decode(record, seed)`` into its folder dataset's item; when
        streamed, ``seed`` is :func:`sample_seed` of (the stream's seed, the 0-based epoch, the record's index)."""

        def __init__(self, input_dir: str, decode: Callable, seed: int, shuffle: bool, drop_last: bool,
                     cache_dir: Optional[str] = None) -> None:
            super().__init__(input_dir=input_dir, cache_dir=cache_dir, shuffle=shuffle, drop_last=drop_last, seed=seed)
            self.decode = decode

        def record(self, index: int) -> dict:
            """Record ``index`` as stored (file bytes), not decoded."""
            return super().__getitem__(index)

        def __getitem__(self, index):
            record = super().__getitem__(index)
            if isinstance(index, int):  # read by index (evaluation): the evaluation transform draws nothing
                return self.decode(record, record["index"])
            return self.decode(record, sample_seed(self.seed, self.current_epoch - 1, record["index"]))

    return ShardStream


class ByIndex(Dataset):
    """A split's records read by index (a map-style dataset), for evaluation: the DataModule's samplers then
    give every sample once over all processes, as for folders. ``describe``/``sample_files`` key the cached
    real-image features to these very shards."""

    def __init__(self, stream, url: str) -> None:
        self.stream, self.url = stream, url
        self.length = samples(stream)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.stream[int(index)]

    def describe(self) -> str:
        return f"shards {self.url} {self.stream.decode!r} {_index_digest(self.url)}"

    def sample_files(self) -> list[Path]:
        return []


def samples(stream) -> int:
    """The samples of a stream's split over all processes (``len()`` of a stream is this process's share)."""
    return sum(end - start for start, end in stream.region_of_interest)


def _index_digest(url: str) -> str:
    """The sha1 of a local split's index.json (which chunks, how many samples); a URL's is its name only."""
    index = Path(url) / "index.json"
    return hashlib.sha1(index.read_bytes()).hexdigest() if not is_remote(url) and index.is_file() else ""


def verify_shards(split: Path) -> None:
    """A local split's ``index.json`` and chunk files agree (the index parses; every chunk it lists is there with
    the size it records), else a DataError naming the file: a chunk cut short by a copy would otherwise stall in
    LitData's wait for it and end in its ChunkWaitTimeoutError. Cheap: it reads the index and stats the files."""
    index = split / "index.json"
    hint = f"write the shards again with `pix2pix-lit prepare shards SRC {split.parent}`"
    try:
        meta = json.loads(index.read_text())
        chunks = meta["chunks"]
        compressed = (meta.get("config") or {}).get("compression") is not None
        listed = [(c["filename"], int(c["chunk_bytes"])) for c in chunks]
    except OSError as e:
        raise DataError(f"{index} cannot be read ({e.strerror or e}); {hint}") from None
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or not LitData's index
        raise DataError(f"{index} is not a LitData index ({type(e).__name__}); {hint}") from None
    for filename, size in listed:
        chunk = split / filename
        if not chunk.is_file():
            raise DataError(f"{chunk} is missing (listed in {index}); {hint}")
        actual = chunk.stat().st_size
        if (actual != size) if not compressed else actual == 0:
            raise DataError(f"{chunk} has {actual} bytes but {index} records {size}: the file is cut short or "
                            f"replaced; {hint}")


class _StreamingBase(ImageDataModule):
    """What both streaming DataModules share: the shards' splits, the streams and the loaders."""

    def __init__(self, root: str, cache_dir: Optional[str] = None, **kwargs: Any) -> None:
        if kwargs.get("max_dataset_size") is not None:
            raise ConfigError("data.max_dataset_size: a stream is read whole; write fewer samples with "
                              "`pix2pix-lit prepare shards` (from a smaller folder)")
        super().__init__(root=root, **kwargs)
        self.url = str(root)
        self._splits: dict[str, bool] = {}

    def require_root(self) -> None:
        if not is_remote(self.url) and not Path(self.url).is_dir():
            raise DataError(f"shards folder {self.url} does not exist; write it with `pix2pix-lit prepare shards SRC "
                            f"{self.url}` or set data.root to it")

    def _stream_exists(self, name: str) -> bool:
        self.require_root()
        if name not in self._splits:
            url = _join(self.url, name)
            if is_remote(self.url):
                try:
                    self._open(name, decode=None, train=False)
                    self._splits[name] = True
                except Exception:  # noqa: BLE001 - any failure to read the index: the split is not there
                    self._splits[name] = False
            else:
                self._splits[name] = (Path(url) / "index.json").is_file()
        return self._splits[name]

    def _open(self, name: str, decode: Optional[Callable], train: bool, seed: Optional[int] = None):
        self.require_root()
        if not is_remote(self.url):
            verify_shards(Path(_join(self.url, name)))
        h = self.hparams
        shuffle = train and not h.serial_batches
        return _stream_class()(_join(self.url, name), decode, h.seed if seed is None else seed, shuffle=shuffle,
                               drop_last=train, cache_dir=h.cache_dir)

    @property
    def trained_part(self) -> Part:
        return None

    def val_set(self) -> Dataset:
        h = self.hparams
        if not self.split_exists(h.val_split):
            raise DataError(f"{self.url} has no {h.val_split} split; `pix2pix-lit prepare shards` writes one (held out "
                            "of train when the source has none)")
        return self.make_split(h.val_split, train=False)

    # -- the topology a streamed epoch's position belongs to --------------------------------------------------
    # LitData replays a saved position exactly only with the same processes, workers and batch size; otherwise it
    # resumes "elastically": the rest of the epoch is dealt out anew and samples may be skipped or seen twice.
    @property
    def num_workers(self) -> int:
        """As the folder DataModules', except that a resumed run with ``num_workers: null`` takes the checkpoint's:
        the automatic choice differs between machines (0 on a CPU, up to 4 on a GPU), and so would the resume."""
        saved = self.__dict__.get("_saved_topology")
        if self.hparams.num_workers is None and saved is not None:
            return int(saved["num_workers"])
        return super().num_workers

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        return {"stream_topology": {"world_size": trainer.world_size if trainer is not None else 1,
                                    "num_workers": self.num_workers, "batch_size": self.hparams.batch_size}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__["_saved_topology"] = state.get("stream_topology")

    def _stream_loader(self, dataset) -> Any:
        h = self.hparams
        workers = self.num_workers
        return _loader_class()(
            dataset, batch_size=h.batch_size, num_workers=workers, pin_memory=h.pin_memory,
            persistent_workers=h.persistent_workers and workers > 0,
            # its own generator: creating an iterator then leaves the global RNG (dropout's) alone
            generator=torch.Generator().manual_seed(h.seed))

    def train_dataloader(self) -> Any:
        return self._stream_loader(self.train_dataset)


class StreamingPairedDataModule(_StreamingBase, PairedDataModule):
    """Paired data (images or label maps -> photos) streamed from the shards of ``pix2pix-lit prepare shards``.

    Args:
        root: the shards folder, or its URL (``s3://bucket/maps-shards``; LitData's credentials and ``cache_dir``).
        cache_dir: where LitData keeps downloaded chunks (default: LitData's); unused for a local folder.
        direction, input_nc, output_nc, label_nc, contain_dontcare_label, no_instance, preprocessing, loaders,
            splits: as :class:`~pix2pix_lit.data.paired.PairedDataModule` (the shards record the layout).
            ``max_dataset_size`` is refused (a stream is read whole); ``val_fraction`` is ``prepare shards``'s.
    """

    def __init__(self, root: str, cache_dir: Optional[str] = None, direction: Direction = "AtoB",
                 **kwargs: Any) -> None:
        # the layout is the shards' (each record says it); "folders" lets label options through PairedDataModule
        super().__init__(root=root, cache_dir=cache_dir, direction=direction,
                         layout="folders" if kwargs.get("label_nc", 0) else "aligned", a_dir="{split}/A",
                         b_dir="{split}/B", a_suffix="", b_suffix="", instance_dir=None, instance_suffix="", **kwargs)

    def split_exists(self, split: str) -> bool:
        return self._stream_exists(split)

    def _decoder(self, split: str, train: bool) -> PairedRecords:
        h = self.hparams
        return PairedRecords(_join(self.url, split), self.train_transform if train else self.eval_transform,
                             h.direction, h.input_nc, h.output_nc, h.strict_channels, h.label_nc,
                             h.contain_dontcare_label, self.instance_edges)

    def make_split(self, split: str, train: bool, part: Part = None) -> Any:
        if not self.split_exists(split):
            raise DataError(f"{self.url} has no {split} split ({_join(self.url, split)}/index.json); write the shards "
                            "with `pix2pix-lit prepare shards SRC OUT`" + self._unpaired_hint())
        decode = self._decoder(split, train)
        stream = self._open(split, decode, train)
        decode.check(stream.record(0))
        return stream if train else ByIndex(stream, _join(self.url, split))

    def _unpaired_hint(self) -> str:
        h = self.hparams
        return ("; these look like unpaired shards: use pix2pix_lit.data.StreamingUnpairedDataModule"
                if self._stream_exists(f"{h.train_split}A") else "")

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        from pix2pix_lit.data.datasets import fingerprint

        train = self.make_split(self.hparams.train_split, train=False)
        return {"target": (_Field(train, "target"), fingerprint(train, "target"))}

    def make_predict_dataset(self) -> Dataset:
        if self.hparams.predict_dir is not None:
            return super().make_predict_dataset()
        split = self.predict_split()
        log.info("data.predict_dir is not set: predicting the %s split's sources", split)
        return _SourcesOnly(self.make_split(split, train=False))


class StreamingUnpairedDataModule(_StreamingBase, UnpairedDataModule):
    """Two unpaired domains streamed from the shards of ``pix2pix-lit prepare shards --unpaired``
    (``{split}A``, ``{split}B``): in training two independently shuffled streams, zipped by LitData's
    ``ParallelStreamingDataset`` for ``max(|A|, |B|)`` samples an epoch (the shorter cycles), each image with its
    own crop and flip. Options: :class:`StreamingPairedDataModule`'s ``root``/``cache_dir`` and
    :class:`~pix2pix_lit.data.unpaired.UnpairedDataModule`'s. Validation scores FID/KID per domain (the streams
    do not keep which images were pairs, so no SSIM/PSNR)."""

    def __init__(self, root: str, cache_dir: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(root=root, cache_dir=cache_dir, layout="folders", a_dir="{split}A", b_dir="{split}B",
                         **kwargs)

    def split_exists(self, split: str) -> bool:
        return self._stream_exists(f"{split}A") and self._stream_exists(f"{split}B")

    def _domain(self, split: str, domain: str, train: bool, seed: int):
        h = self.hparams
        nc, option = (h.input_nc, "data.input_nc") if domain == "A" else (h.output_nc, "data.output_nc")
        name = f"{split}{domain}"
        decode = DomainRecords(_join(self.url, name), self.train_transform if train else self.eval_transform, nc,
                               option, h.strict_channels)
        return self._open(name, decode, train, seed=seed)

    def make_split(self, split: str, train: bool, part: Part = None) -> Any:
        if not self.split_exists(split):
            raise DataError(f"{self.url} has no {split}A and {split}B streams; write unpaired shards with "
                            "`pix2pix-lit prepare shards --unpaired SRC OUT`")
        seed = self.hparams.seed
        # B's stream seeded apart from A's: independent orders and crops
        streams = [self._domain(split, d, train, seed + k) for k, d in enumerate("AB")]
        if not train:
            return _Domains(*(ByIndex(s, _join(self.url, f"{split}{d}")) for s, d in zip(streams, "AB")))
        return _zipped_class()(streams, length=max(samples(s) for s in streams), transform=_zip_domains, seed=seed,
                               resume=True)

    def evaluated_sizes(self, dataset: Dataset, name: str) -> dict[str, int]:
        return {f"{name}'s domain {d}": len(getattr(dataset, d)) for d in "AB"}

    def eval_datasets(self, dataset: Dataset) -> list[Dataset]:
        return [dataset.A, dataset.B]

    def training_references(self) -> dict[str, tuple[Dataset, str]]:
        from pix2pix_lit.data.datasets import fingerprint

        split = self.make_split(self.hparams.train_split, train=False)
        return {d: (getattr(split, d), fingerprint(getattr(split, d))) for d in "AB"}

    def make_predict_dataset(self) -> Dataset:
        if self.hparams.predict_dir is not None:
            return super().make_predict_dataset()
        split = self.make_split(self.predict_split(), train=False)
        return _DomainSources(split.A if self.predict_direction() == "AtoB" else split.B)


def _zip_domains(samples: tuple) -> dict[str, Any]:
    a, b = samples
    return {"A": a["image"], "B": b["image"], "name_A": a["name"], "name_B": b["name"]}


def _zipped_class():
    litdata = _litdata()

    class ZippedStreams(litdata.ParallelStreamingDataset):
        """LitData's parallel streams (A and B, each shuffled on its own), also read by index for the image grids'
        fixed training samples: item ``i`` is A's record ``i`` with B's record ``i mod |B|``."""

        def __getitem__(self, index: int) -> dict[str, Any]:
            return _zip_domains(tuple(d[int(index) % samples(d)] for d in self._datasets))

    return ZippedStreams


class _Domains(Dataset):
    """The two domains of an unpaired split read by index (evaluation): ``A`` and ``B`` for the metrics' loaders;
    as a dataset, A image ``i`` with B image ``i mod |B|`` (the image grids), as the folders' evaluation split."""

    def __init__(self, A: ByIndex, B: ByIndex) -> None:
        self.A, self.B = A, B

    def __len__(self) -> int:
        return max(len(self.A), len(self.B))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _zip_domains((self.A[int(index) % len(self.A)], self.B[int(index) % len(self.B)]))


class _DomainSources(Dataset):
    """One domain's streamed images as ``predict`` items (``source``, ``name``, ``size``)."""

    def __init__(self, images: ByIndex) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        return predict_item(item["image"], f"{item['name']}.png")
