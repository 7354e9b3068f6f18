"""The model side of the service: a generator runner (ONNX Runtime, TorchScript or a checkpoint) and a batcher.

Requests are batched with a bounded wait: the first request of a batch waits at most ``max_wait_s``
for others, up to ``max_batch``; requests whose padded images have the same size run as one batch.
The model runs on one worker thread, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

from pix2pix_lit.data.io import as_viewed, to_channels, to_pil, to_tensor
from pix2pix_lit.data.labels import ID_MODES, first_bad_id, to_class_ids
from pix2pix_lit.data.transforms import crop_box, pad_to_multiple
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.modes import SERVING_INFERENCE_MODE

log = logging.getLogger("pix2pix_lit.serve")


class Generator:
    """``run(batch (N, C, H, W) float32 in [-1, 1]) -> numpy (N, C_out, H, W)`` plus the file's contract."""

    def __init__(self, run: Callable[[torch.Tensor], np.ndarray], contract: dict[str, Any], source: str) -> None:
        self.run, self.contract, self.source = run, contract, source

    @property
    def input_nc(self) -> int:
        return int(self.contract["input"]["channels"])

    @property
    def size_multiple(self) -> int:
        return int(self.contract["input"]["size_multiple"])

    @property
    def min_size(self) -> int:
        """The smallest side the generator takes (files exported before it was stated: the size multiple)."""
        return int(self.contract["input"].get("min_size") or self.size_multiple)

    @classmethod
    def load(cls, model: Optional[str] = None, ckpt_path: Optional[str] = None, threads: Optional[int] = None,
             inference_mode: str = SERVING_INFERENCE_MODE, direction: str = "AtoB") -> "Generator":
        if (model is None) == (ckpt_path is None):
            raise ConfigError("give either --model FILE (.onnx or TorchScript .pt) or --ckpt_path CKPT")
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"--threads {threads} must be >= 1")
            torch.set_num_threads(threads)
        if ckpt_path is not None:
            from pix2pix_lit.serving.export import generator_from_checkpoint

            net, contract = generator_from_checkpoint(ckpt_path, inference_mode, direction=direction)

            def run_torch(x: torch.Tensor) -> np.ndarray:
                with torch.inference_mode():
                    return net(x).numpy()

            return cls(run_torch, contract, str(ckpt_path))
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist; export one with pix2pix-lit export")
        if path.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads = threads
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                contract = json.loads(session.get_modelmeta().custom_metadata_map["pix2pix_lit"])
            except Exception as e:  # onnxruntime raises its own exception types for damaged files
                raise ConfigError(f"{path} is not an ONNX file exported by pix2pix-lit ({str(e)[:120]}); export it again") from None

            def run_onnx(x: torch.Tensor) -> np.ndarray:
                return session.run(["output"], {"source": x.numpy()})[0]

            return cls(run_onnx, contract, str(path))
        files = {"pix2pix_lit.json": ""}
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
            contract = json.loads(files["pix2pix_lit.json"])
        except Exception as e:  # torch.jit raises RuntimeError / ValueError / JSON errors for foreign files
            raise ConfigError(f"{path} is not a TorchScript file exported by pix2pix-lit ({str(e)[:120]}); "
                              "export it again") from None

        def run_script(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return module(x).numpy()

        return cls(run_script, contract, str(path))

    @property
    def labels(self) -> Optional[dict[str, Any]]:
        """The classes of a model of label maps (the contract's ``labels``), None for image models."""
        return self.contract.get("labels")

    def to_input(self, img: Image.Image) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """A decoded PIL image as the generator's padded input (C, H', W') and the box to crop the output back to.

        Read as ``predict`` reads a file (``pix2pix_lit.data.io``): as viewers show it (EXIF orientation, 16-bit
        scaled to 8), with the model's channels (alpha kept for 4, else laid on white); a label map as its ids."""
        if self.labels:
            x = self.label_ids(img)
        else:
            x = to_tensor(to_channels(as_viewed(img), self.input_nc))
        # reflect padding commutes with the one-hot encoding and the boundary edges made inside the file
        x, box = pad_to_multiple(x[None], self.size_multiple, self.min_size)
        return x[0], box

    def label_ids(self, img: Image.Image) -> torch.Tensor:
        """A label-map PNG as the file's input: (1, H, W) float class ids (255: don't care), checked as
        ``predict`` checks label maps (:class:`BadInput` naming the first id out of range)."""
        labels = self.labels
        if img.format != "PNG" or img.mode not in ID_MODES:
            raise BadInput(f"this model takes label maps: send a PNG of class ids (8-bit grey, palette or 16-bit), "
                           f"not a {img.format} {img.mode} image; colour renderings turn into ids with "
                           "`pix2pix-lit prepare labels --palette`")
        ids = to_class_ids(np.asarray(img), labels.get("stored_ids") == "ade20k")
        found = first_bad_id(ids, labels["label_nc"], labels["contain_dontcare_label"])
        if found is not None:
            value, x, y = found
            dontcare = " or 255 (unlabelled)" if labels["contain_dontcare_label"] else ""
            raise BadInput(f"class id {value} at pixel (x={x}, y={y}) of the label map is not one of this model's "
                           f"{labels['label_nc']} classes (ids 0-{labels['label_nc'] - 1}{dontcare})")
        return torch.from_numpy(ids.astype(np.float32))[None]

    @property
    def bytes_per_pixel(self) -> Optional[int]:
        """Memory one input pixel costs while the generator runs (the contract's ``memory``), if known."""
        memory = self.contract.get("memory") or {}
        value = memory.get("bytes_per_pixel")
        return int(value) if value else None


class BadInput(ValueError):
    """The request's image is not what the model takes; the message is safe to show the client (no paths)."""


class Overloaded(Exception):
    """The service holds as many requests (or pixels) as its limits allow: answer 503, try again later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Ticket:
    """The pixels one admitted request holds, from its admission until both its handler and the batcher are
    done with it (a request that timed out may still be in a running batch)."""

    def __init__(self, batcher: "Batcher", pixels: int) -> None:
        self.batcher, self.pixels, self._holders = batcher, pixels, 1

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        if self._holders > 0:
            self._holders -= 1
            if self._holders == 0:
                self.batcher._free(self)


@dataclass
class _Job:
    x: torch.Tensor
    future: asyncio.Future
    ticket: Optional[Ticket] = None

    @property
    def pixels(self) -> int:
        return int(self.x.shape[-1] * self.x.shape[-2])


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    restarts: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


class Batcher:
    """Collects concurrent requests into batches (bounded wait) and runs them on one worker thread.

    Memory stays within what the limits allow: at most ``max_queue`` requests are admitted (decoding, waiting,
    running or encoding) holding at most ``max_pending_pixels`` in all, and a batch holds at most
    ``max_batch_pixels`` (a larger single image runs alone). Past either admission limit :meth:`admit` raises
    :class:`Overloaded`. A batch that fails answers its requests with the error and the loop carries on; if the
    loop itself ever ends, it is started again (:attr:`alive` says whether it runs).
    """

    def __init__(self, generator: Generator, max_batch: int = 8, max_wait_s: float = 0.01,
                 max_batch_pixels: Optional[int] = None, max_queue: int = 32,
                 max_pending_pixels: Optional[int] = None) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise ConfigError("--max-batch and --max-queue must be >= 1 and --max-wait-ms >= 0")
        for name, value in (("--max-batch-pixels", max_batch_pixels), ("--max-pending-pixels", max_pending_pixels)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} {value} must be >= 1")
        self.generator, self.max_batch, self.max_wait_s = generator, max_batch, max_wait_s
        self.max_batch_pixels, self.max_queue, self.max_pending_pixels = max_batch_pixels, max_queue, max_pending_pixels
        self.stats = BatchStats()
        self.admitted, self.pending_pixels = 0, 0
        self._queue: Optional[asyncio.Queue[_Job]] = None
        self._task: Optional[asyncio.Task] = None
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._stopping = False
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._loop())
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        if self._stopping or task.cancelled():
            return
        log.error("the batching loop ended (%r); starting it again", task.exception())
        self.stats.restarts += 1
        self._spawn()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    # -- admission ----------------------------------------------------------------------------------
    def admit(self, pixels: int) -> Ticket:
        """A ticket for a request of ``pixels`` pixels, or :class:`Overloaded` when the limits are reached."""
        if self.admitted >= self.max_queue:
            raise Overloaded(f"the service is busy ({self.admitted} requests in progress, the limit is "
                             f"{self.max_queue}); try again shortly", self.retry_after_s())
        if self.max_pending_pixels is not None and self.pending_pixels + pixels > self.max_pending_pixels:
            raise Overloaded(f"the service is busy ({self.pending_pixels} pixels in progress; this image's {pixels} "
                             f"would pass the limit of {self.max_pending_pixels}); try again shortly",
                             self.retry_after_s())
        self.admitted += 1
        self.pending_pixels += pixels
        return Ticket(self, pixels)

    def _free(self, ticket: Ticket) -> None:
        self.admitted -= 1
        self.pending_pixels -= ticket.pixels

    def retry_after_s(self) -> int:
        """Seconds until a retry is likely to be admitted: the work queued, at the batches' recent pace."""
        return max(1, min(60, self.admitted // max(1, self.max_batch) + 1))

    # -- batching -----------------------------------------------------------------------------------
    async def translate(self, x: torch.Tensor, ticket: Optional[Ticket] = None) -> torch.Tensor:
        """The generator's output for one padded input (C, H, W), batched with whatever arrives meanwhile."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        job = _Job(x, asyncio.get_running_loop().create_future(), ticket)
        if ticket is not None:
            ticket.hold()  # the batcher's hold, released when the job has run (or was skipped)
        await self._queue.put(job)
        return await job.future

    def _groups(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Jobs of one padded shape together, split so no group holds more than ``max_batch_pixels``."""
        by_shape: dict[tuple[int, ...], list[_Job]] = {}
        for job in jobs:
            by_shape.setdefault(tuple(job.x.shape), []).append(job)
        groups = []
        for same in by_shape.values():
            group: list[_Job] = []
            for job in same:
                if group and self.max_batch_pixels is not None and (len(group) + 1) * job.pixels > self.max_batch_pixels:
                    groups.append(group)
                    group = []
                group.append(job)
            groups.append(group)
        return groups

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run(self, group: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        try:
            batch = torch.stack([j.x for j in group]).float().contiguous()
            out = await loop.run_in_executor(self._executor, self.generator.run, batch)
            outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in out]
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the model (or building the batch: MemoryError) failed: these requests get the error
            self.stats.failed_batches += 1
            for j in group:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        s = self.stats
        s.batches, s.images = s.batches + 1, s.images + len(group)
        s.largest_batch = max(s.largest_batch, len(group))
        s.sizes[len(group)] = s.sizes.get(len(group), 0) + 1
        for j, o in zip(group, outputs):
            if not j.future.done():
                j.future.set_result(o)

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            live = [j for j in jobs if not j.future.done()]  # a request that timed out while queued is not run
            try:
                for group in self._groups(live):
                    await self._run(group)
            finally:
                for j in jobs:
                    if j.ticket is not None:
                        j.ticket.release()


def to_output_image(out: torch.Tensor, box: tuple[int, int, int, int]) -> Image.Image:
    return to_pil(crop_box(out, box).clamp(-1, 1))
