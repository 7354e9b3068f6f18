"""The model side of the service: a generator runner (ONNX Runtime, TorchScript or a checkpoint) and a batcher.

Requests are batched with a bounded wait: the first request of a batch waits at most ``max_wait_s``
for others, up to ``max_batch``; requests whose padded images have the same size run as one batch.
The model runs on one worker thread, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

from pix2pix_lit.data.io import to_pil, to_tensor
from pix2pix_lit.data.transforms import crop_box, pad_to_multiple
from pix2pix_lit.errors import ConfigError


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

    @classmethod
    def load(cls, model: Optional[str] = None, ckpt_path: Optional[str] = None, threads: Optional[int] = None,
             inference_mode: str = "eval", direction: str = "AtoB") -> "Generator":
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

    def to_input(self, img: Image.Image) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """A PIL image as the generator's padded input (C, H', W') and the box to crop the output back to."""
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # a drawing with a transparent background: strokes on white, as sketches are drawn
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, img.convert("RGBA"))
        img = img.convert({1: "L", 3: "RGB", 4: "RGBA"}[self.input_nc])
        x, box = pad_to_multiple(to_tensor(img)[None], self.size_multiple)
        return x[0], box


@dataclass
class _Job:
    x: torch.Tensor
    future: asyncio.Future


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


class Batcher:
    """Collects concurrent requests into batches (bounded wait) and runs them on one worker thread."""

    def __init__(self, generator: Generator, max_batch: int = 8, max_wait_s: float = 0.01) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ConfigError("--max-batch must be >= 1 and --max-wait-ms >= 0")
        self.generator, self.max_batch, self.max_wait_s = generator, max_batch, max_wait_s
        self.stats = BatchStats()
        self._queue: Optional[asyncio.Queue[_Job]] = None
        self._task: Optional[asyncio.Task] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def translate(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's output for one padded input (C, H, W), batched with whatever arrives meanwhile."""
        assert self._queue is not None, "Batcher.start() was not awaited"
        job = _Job(x, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
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
            by_shape: dict[tuple[int, ...], list[_Job]] = {}
            for job in jobs:
                by_shape.setdefault(tuple(job.x.shape), []).append(job)
            for group in by_shape.values():
                batch = torch.stack([j.x for j in group]).float().contiguous()
                try:
                    out = await loop.run_in_executor(self._executor, self.generator.run, batch)
                except Exception as e:  # the model failed on this batch: its requests get the error, the service stays up
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                s = self.stats
                s.batches, s.images = s.batches + 1, s.images + len(group)
                s.largest_batch = max(s.largest_batch, len(group))
                s.sizes[len(group)] = s.sizes.get(len(group), 0) + 1
                for j, o in zip(group, out):
                    if not j.future.done():
                        j.future.set_result(torch.from_numpy(np.ascontiguousarray(o)))


def to_output_image(out: torch.Tensor, box: tuple[int, int, int, int]) -> Image.Image:
    return to_pil(crop_box(out, box).clamp(-1, 1))
