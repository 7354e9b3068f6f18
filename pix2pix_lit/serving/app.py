"""``pix2pix-lit serve``: the generator over HTTP (FastAPI + uvicorn), with a drawing page.

- ``POST /v1/translate``: an image (PNG, JPEG or WebP) as the raw body (``Content-Type: image/...``) or
  as the multipart field ``image`` -> the translated PNG at the input's size (reflect-padded to the
  generator's size multiple and cropped back, as ``predict``). A model of label maps takes a PNG of class
  ids (as its dataset stores them; the classes are in ``/health``'s ``model.labels``). ``?direction=AtoB|BtoA`` is checked
  against the model's direction (a pix2pix generator translates one way).
- ``GET /health``: status (200 ``ok``, 503 while the batching loop is down), the model's contract, the
  limits in force and batching counts. ``GET /``: the drawing page (for a model of label maps, the page that
  paints with its classes), with ``GET /translate.js``, the request both pages make.
- Errors are JSON ``{"error": ..., "status": N}``: 400 not an image / truncated / wrong direction (and a
  ``Host`` header that is not allowed, plain text), 405 wrong method, 413 too many bytes or pixels, 415 not
  PNG/JPEG/MPO/WebP, 500 the model failed on the input, 503 the service is full (``Retry-After`` says when to
  try again), 504 the request took longer than ``--timeout-s``; the service stays up. Responses never carry
  file paths or exception text: the server's log has them.

Memory is kept within ``--memory-budget-mb`` (default: half the memory available when the server starts):
the largest image, the pixels a batch holds and the pixels of all requests in progress are derived from it
and from what one pixel costs the generator (measured when it is loaded or exported; see
:func:`memory_limits`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import logging
import os
import socket
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from pix2pix_lit.errors import ConfigError, Pix2PixLitError
from pix2pix_lit.modes import DIRECTIONS, INFERENCE_MODES, SERVING_INFERENCE_MODE
from pix2pix_lit.serving.engine import BadInput, Batcher, Generator, Overloaded, to_output_image

log = logging.getLogger("pix2pix_lit.serve")

# MPO: the JPEG most phones write (a JPEG with more frames after the first; the first is the photo)
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp"}
PREPROCESS = ("none", "edges")
MAX_PIXELS_CAP = 16_777_216  # 4096 x 4096: the largest image served unless --max-pixels says otherwise
# what a pixel costs while the generator runs, for files exported before the figure was written into them:
# above the resnet_9blocks generator's 7.8 KB (pix2pix_lit.serving.export.bytes_per_pixel; experiments/serve_load.py)
UNKNOWN_BYTES_PER_PIXEL = 8192
# what a pixel costs a request outside the generator: the decoded image, the float input and its padded copy,
# the output and its 8-bit image (3 channels: 3 + 12 + 12 + 12 + 3 bytes, rounded up for 4 channels)
REQUEST_BYTES_PER_PIXEL = 64


@dataclass
class Limits:
    """What the service admits (see :func:`memory_limits`)."""

    max_bytes: int = 10_000_000
    max_pixels: Optional[int] = None
    max_batch: int = 8
    max_batch_pixels: Optional[int] = None
    max_queue: int = 32
    max_pending_pixels: Optional[int] = None
    max_wait_ms: float = 10.0
    timeout_s: float = 60.0
    memory_budget_mb: Optional[int] = None
    bytes_per_pixel: Optional[int] = None


def available_memory() -> Optional[int]:
    """Bytes this process can still take: the kernel's MemAvailable, or less under a cgroup's memory limit."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read().strip())
        if limit.isdigit():
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(found))


def memory_limits(budget_bytes: int, bytes_per_pixel: int) -> tuple[int, int, int]:
    """(largest image, pixels per batch, pixels of all requests in progress) for a memory budget.

    Three quarters of the budget go to the running batch (the generator's activations plus the request's own
    buffers, per pixel), a quarter to the requests decoding, waiting and encoding around it. A single image
    never needs more than a batch may hold, and the requests in progress can always hold one such image.
    """
    batch_pixels = max(1, int(budget_bytes * 3 / 4 / (bytes_per_pixel + REQUEST_BYTES_PER_PIXEL)))
    pending_pixels = max(batch_pixels, int(budget_bytes / 4 / REQUEST_BYTES_PER_PIXEL))
    return min(MAX_PIXELS_CAP, batch_pixels), batch_pixels, pending_pixels


def resolve_limits(generator: Generator, limits: Limits) -> Limits:
    """``limits`` with the unset memory limits derived from the budget and the generator's cost per pixel."""
    out = Limits(**asdict(limits))
    out.bytes_per_pixel = generator.bytes_per_pixel or UNKNOWN_BYTES_PER_PIXEL
    if generator.bytes_per_pixel is None:
        log.info("the model file does not say what a pixel costs it (exported before this version): assuming %d "
                 "bytes; export it again for a measured figure", UNKNOWN_BYTES_PER_PIXEL)
    if out.memory_budget_mb is None:
        available = available_memory()
        out.memory_budget_mb = max(64, (available or 4 * 2**30) // 2 // 2**20)
    if out.memory_budget_mb < 1:
        raise ConfigError(f"--memory-budget-mb {out.memory_budget_mb} must be >= 1")
    max_pixels, batch_pixels, pending_pixels = memory_limits(out.memory_budget_mb * 2**20, out.bytes_per_pixel)
    if limits.max_pixels is None:
        out.max_pixels = max_pixels
    out.max_batch_pixels = limits.max_batch_pixels or max(batch_pixels, out.max_pixels)
    out.max_pending_pixels = limits.max_pending_pixels or max(pending_pixels, out.max_pixels)
    for name in ("max_bytes", "max_pixels", "max_batch", "max_queue", "max_batch_pixels", "max_pending_pixels"):
        if getattr(out, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(out, name)} must be >= 1")
    if out.timeout_s <= 0 or out.max_wait_ms < 0:
        raise ConfigError(f"--timeout-s {out.timeout_s} must be > 0 and --max-wait-ms {out.max_wait_ms} >= 0")
    return out


def default_allowed_hosts(host: str) -> list[str]:
    """Host names a request may name: the bound address and this machine's loopback names (and, bound to every
    interface, the machine's own names). Anything else is refused, so a page on another site cannot reach the
    API through DNS rebinding."""
    hosts = {host, "localhost", "127.0.0.1", "::1", "[::1]"}
    if host in ("0.0.0.0", "::", ""):
        hosts |= {socket.gethostname(), socket.getfqdn()}
    return sorted(h for h in hosts if h)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    """The request body, or a 413 as soon as it grows past ``max_bytes`` (also without Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"the request has {int(declared)} bytes, more than the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"the request has more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    generator: Generator, limits: Optional[Limits] = None, preprocess: str = "none",
    allowed_hosts: Optional[list[str]] = None,
) -> FastAPI:
    """The service for ``generator``. ``limits``: what it admits (unset memory limits derived by
    :func:`resolve_limits`). ``allowed_hosts``: the ``Host`` names served (``None``: any, for in-process use)."""
    if preprocess not in PREPROCESS:
        raise ConfigError(f"--preprocess {preprocess!r} is not known; choose one of: {', '.join(PREPROCESS)}")
    if preprocess != "none" and generator.labels:
        raise ConfigError(f"--preprocess {preprocess} makes images, but this model takes label maps; leave it out")
    limits = resolve_limits(generator, limits or Limits())
    max_bytes, max_pixels = limits.max_bytes, limits.max_pixels
    batcher = Batcher(generator, limits.max_batch, limits.max_wait_ms / 1000.0, limits.max_batch_pixels,
                      limits.max_queue, limits.max_pending_pixels)
    request_ids = itertools.count(1)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        log.info("serving %s (%s)", generator.source, generator.contract.get("inference_mode"))
        yield
        await batcher.stop()  # uvicorn has finished the requests in flight (graceful shutdown)

    app = FastAPI(title="pix2pix-lit", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.batcher, app.state.limits = batcher, limits
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "; ".join(str(e.get("msg")) for e in exc.errors()) or "bad request")

    @app.get("/health")
    async def health() -> JSONResponse:
        s = batcher.stats
        alive = batcher.alive
        body = {"status": "ok" if alive else "unavailable", "model": generator.contract, "preprocess": preprocess,
                "limits": asdict(limits),
                "batching": {"alive": alive, "restarts": s.restarts, "in_progress": batcher.admitted,
                             "pending_pixels": batcher.pending_pixels, "batches": s.batches, "images": s.images,
                             "failed_batches": s.failed_batches, "largest_batch": s.largest_batch}}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        # a model of label maps gets the paint-with-labels page (a brush per class), the others the drawing page
        name = "paint_labels.html" if generator.labels else "page.html"
        return resources.files("pix2pix_lit.serving").joinpath(name).read_text()

    @app.get("/translate.js")
    async def page_script() -> Response:  # what both pages share: the request and showing its answer
        script = resources.files("pix2pix_lit.serving").joinpath("translate.js").read_text()
        return Response(script, media_type="text/javascript")

    @app.post("/v1/translate")
    async def translate(request: Request, direction: Optional[str] = None) -> Response:
        model_direction = generator.contract.get("direction")
        if direction is not None:
            if direction not in DIRECTIONS:
                return _error(400, f"direction={direction!r} is not known; choose AtoB or BtoA")
            if model_direction is not None and direction != model_direction:
                return _error(400, f"this model translates {model_direction} only (pix2pix is one-way)")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (content_type.startswith("image/") or content_type in ("multipart/form-data", "application/octet-stream")):
            return _error(415, f"Content-Type {content_type or '(none)'} is not an image; send PNG, JPEG or WebP as the "
                          "body (Content-Type image/png, ...) or as the multipart field 'image'")
        body = await _read_limited(request, max_bytes)
        if content_type == "multipart/form-data":
            request._body = body  # Starlette parses the form from the body read (and size-checked) above
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                return _error(400, "the multipart request has no file field 'image'")
            body = await upload.read()
        try:
            img = Image.open(io.BytesIO(body))
        except Image.DecompressionBombError:  # a header declaring billions of pixels
            return _error(413, f"the image is too large: its header declares more pixels than the limit of {max_pixels}")
        except (UnidentifiedImageError, OSError):
            return _error(400, "the request body is not an image that can be read (PNG, JPEG or WebP)")
        if img.format not in FORMATS:
            return _error(415, f"{img.format} images are not accepted; send PNG, JPEG or WebP")
        w, h = img.size
        if w * h > max_pixels:
            return _error(413, f"the image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
        try:
            ticket = batcher.admit(w * h)
        except Overloaded as e:
            response = _error(503, str(e))
            response.headers["Retry-After"] = str(e.retry_after_s)
            return response
        request_id = next(request_ids)
        try:
            return await asyncio.wait_for(run(img, ticket, request_id), limits.timeout_s)
        except asyncio.TimeoutError:
            log.warning("request %d: no answer within %.0f s", request_id, limits.timeout_s)
            return _error(504, f"the translation took longer than the limit of {limits.timeout_s:g} s; "
                          "try a smaller image or again later")
        finally:
            ticket.release()

    async def run(img: Image.Image, ticket, request_id: int) -> Response:
        try:
            # decoding and encoding run in worker threads (PIL releases the GIL), so the event loop keeps
            # accepting requests, and batching them, meanwhile
            x, box = await run_in_threadpool(prepare_input, img)
        except BadInput as e:  # not what the model takes (a colour image where class ids are expected, ...)
            return _error(400, str(e))
        except (OSError, SyntaxError, ValueError):
            log.info("request %d: the image cannot be decoded", request_id, exc_info=True)
            return _error(400, "the image cannot be decoded; it is truncated or corrupt")
        except MemoryError:
            log.exception("request %d: out of memory while decoding", request_id)
            return _error(503, "the server is out of memory; try a smaller image or again later")
        try:
            out = await batcher.translate(x, ticket)
            del x
            return Response(await run_in_threadpool(encode_png, out, box), media_type="image/png")
        except Exception:  # the model failed on this input: a JSON 500, and the service keeps serving
            log.exception("request %d: the generator failed", request_id)
            return _error(500, f"the model failed on this image (request {request_id}; the server log has the details)")

    def prepare_input(img: Image.Image):
        img.load()
        if preprocess == "edges":
            from pix2pix_lit.data.io import as_viewed
            from pix2pix_lit.prepare import edges

            img = edges(as_viewed(img), "canny")
        return generator.to_input(img)

    def encode_png(out, box) -> bytes:
        buf = io.BytesIO()
        to_output_image(out, box).save(buf, format="PNG")
        return buf.getvalue()

    return app


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pix2pix-lit serve", description="Serve a generator over HTTP, with a drawing page.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt_path", help="a pix2pix-lit checkpoint")
    which.add_argument("--model", help="a file from pix2pix-lit export (.onnx, or TorchScript .pt)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allowed-hosts", default=None,
                        help="comma-separated Host names to serve (default: the --host address, localhost, 127.0.0.1, ::1; "
                        "bound to 0.0.0.0 also this machine's names); '*' serves any (no DNS-rebinding protection)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the generator (default: torch's)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch of concurrent requests")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for others to batch with")
    parser.add_argument("--max-bytes", type=int, default=10_000_000, help="largest request body (else 413)")
    parser.add_argument("--memory-budget-mb", type=int, default=None,
                        help="memory the limits below are derived from (default: half of what is available at start)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="largest image, width x height, else 413 (default: what the budget gives one batch, "
                        f"at most {MAX_PIXELS_CAP})")
    parser.add_argument("--max-batch-pixels", type=int, default=None,
                        help="pixels one batch may hold (default: from the budget); a larger image runs alone")
    parser.add_argument("--max-queue", type=int, default=32,
                        help="requests in progress (decoding, waiting, running, encoding) before 503 + Retry-After")
    parser.add_argument("--max-pending-pixels", type=int, default=None,
                        help="pixels of all requests in progress before 503 + Retry-After (default: from the budget)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="longest a request may take, else 504")
    parser.add_argument("--limit-concurrency", type=int, default=64,
                        help="uvicorn's limit of connections and tasks at once; past it uvicorn answers 503")
    parser.add_argument("--preprocess", choices=PREPROCESS, default="none",
                        help="edges: turn photos into sketch-like input first (Canny, as prepare edges)")
    parser.add_argument("--inference_mode", choices=INFERENCE_MODES, default=SERVING_INFERENCE_MODE,
                        help="for --ckpt_path: eval (default: deterministic) or paper (generators without dropout)")
    parser.add_argument("--direction", choices=DIRECTIONS, default="AtoB",
                        help="for --ckpt_path of a two-way model (CycleGAN): AtoB serves G_A, BtoA G_B")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_batch=args.max_batch,
                    max_batch_pixels=args.max_batch_pixels, max_queue=args.max_queue,
                    max_pending_pixels=args.max_pending_pixels, max_wait_ms=args.max_wait_ms, timeout_s=args.timeout_s,
                    memory_budget_mb=args.memory_budget_mb)
    if args.allowed_hosts is not None:
        hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    else:
        hosts = default_allowed_hosts(args.host)
    try:
        if args.limit_concurrency < 1:
            raise ConfigError(f"--limit-concurrency {args.limit_concurrency} must be >= 1")
        generator = Generator.load(args.model, args.ckpt_path, args.threads, args.inference_mode, args.direction)
        app = create_app(generator, limits, args.preprocess, hosts)
    except Pix2PixLitError as e:
        print(f"pix2pix-lit serve: error: {e}", file=sys.stderr)
        return e.exit_code
    import uvicorn

    resolved = app.state.limits
    log.info("limits: images up to %d pixels, %d pixels a batch, %d requests / %d pixels in progress, %.0f s a request "
             "(memory budget %d MB at %d bytes a pixel); hosts served: %s", resolved.max_pixels,
             resolved.max_batch_pixels, resolved.max_queue, resolved.max_pending_pixels, resolved.timeout_s,
             resolved.memory_budget_mb, resolved.bytes_per_pixel, ", ".join(hosts))
    # uvicorn stops on SIGINT/SIGTERM after the requests in flight (at most 10 s), then the lifespan ends
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=10,
                limit_concurrency=args.limit_concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
