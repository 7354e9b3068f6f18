"""``pix2pix-lit serve``: the generator over HTTP (FastAPI + uvicorn), with a drawing page.

- ``POST /v1/translate``: an image (PNG, JPEG or WebP) as the raw body (``Content-Type: image/...``) or
  as the multipart field ``image`` -> the translated PNG at the input's size (reflect-padded to the
  generator's size multiple and cropped back, as ``predict``). ``?direction=AtoB|BtoA`` is checked
  against the model's direction (a pix2pix generator translates one way).
- ``GET /health``: status, the model's contract and batching counts. ``GET /``: the drawing page.
- Errors are JSON ``{"error": ..., "status": N}``: 400 not an image / truncated / wrong direction,
  405 wrong method, 413 too many bytes or pixels, 415 not PNG/JPEG/WebP, 500 the model failed on the
  input; the service stays up.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from contextlib import asynccontextmanager
from importlib import resources
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from pix2pix_lit.errors import Pix2PixLitError
from pix2pix_lit.serving.engine import Batcher, Generator, to_output_image

log = logging.getLogger("pix2pix_lit.serve")

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
PREPROCESS = ("none", "edges")


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
    generator: Generator, max_batch: int = 8, max_wait_ms: float = 10.0, max_bytes: int = 10_000_000,
    max_pixels: int = 16_777_216, preprocess: str = "none",
) -> FastAPI:
    if preprocess not in PREPROCESS:
        raise Pix2PixLitError(f"--preprocess {preprocess!r} is not known; choose one of: {', '.join(PREPROCESS)}")
    batcher = Batcher(generator, max_batch, max_wait_ms / 1000.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        log.info("serving %s (%s)", generator.source, generator.contract.get("inference_mode"))
        yield
        await batcher.stop()  # uvicorn has finished the requests in flight (graceful shutdown)

    app = FastAPI(title="pix2pix-lit", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.batcher = batcher

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
    async def health() -> dict:
        s = batcher.stats
        return {"status": "ok", "model": generator.contract, "source": generator.source, "preprocess": preprocess,
                "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "batches": s.batches,
                             "images": s.images, "largest_batch": s.largest_batch}}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("pix2pix_lit.serving").joinpath("page.html").read_text()

    @app.post("/v1/translate")
    async def translate(request: Request, direction: Optional[str] = None) -> Response:
        model_direction = generator.contract.get("direction")
        if direction is not None:
            if direction not in ("AtoB", "BtoA"):
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
        except Image.DecompressionBombError as e:  # a header declaring billions of pixels
            return _error(413, f"the image is too large ({e})")
        except (UnidentifiedImageError, OSError):
            return _error(400, "the request body is not an image that can be read (PNG, JPEG or WebP)")
        if img.format not in FORMATS:
            return _error(415, f"{img.format} images are not accepted; send PNG, JPEG or WebP")
        w, h = img.size
        if w * h > max_pixels:
            return _error(413, f"the image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
        try:
            # decoding and encoding run in worker threads (PIL releases the GIL), so the event loop keeps
            # accepting requests, and batching them, meanwhile
            x, box = await run_in_threadpool(prepare_input, img)
        except (OSError, SyntaxError, ValueError) as e:
            return _error(400, f"the image cannot be decoded ({e}); it is truncated or corrupt")
        try:
            out = await batcher.translate(x)
        except Exception as e:  # the model failed on this input: a JSON 500, and the service keeps serving
            log.exception("the generator failed")
            return _error(500, f"the model failed on this image ({type(e).__name__}: {str(e)[:200]})")
        return Response(await run_in_threadpool(encode_png, out, box), media_type="image/png")

    def prepare_input(img: Image.Image):
        img.load()
        if preprocess == "edges":
            from pix2pix_lit.prepare import edges

            img = edges(img, "canny")
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
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the generator (default: torch's)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch of concurrent requests")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for others to batch with")
    parser.add_argument("--max-bytes", type=int, default=10_000_000, help="largest request body (else 413)")
    parser.add_argument("--max-pixels", type=int, default=16_777_216, help="largest image, width x height (else 413)")
    parser.add_argument("--preprocess", choices=PREPROCESS, default="none",
                        help="edges: turn photos into sketch-like input first (Canny, as prepare edges)")
    parser.add_argument("--inference_mode", choices=("eval", "paper"), default="eval", help="for --ckpt_path")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                        help="for --ckpt_path of a two-way model (CycleGAN): AtoB serves G_A, BtoA G_B")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generator = Generator.load(args.model, args.ckpt_path, args.threads, args.inference_mode, args.direction)
        app = create_app(generator, args.max_batch, args.max_wait_ms, args.max_bytes, args.max_pixels, args.preprocess)
    except Pix2PixLitError as e:
        print(f"pix2pix-lit serve: error: {e}", file=sys.stderr)
        return e.exit_code
    import uvicorn

    # uvicorn stops on SIGINT/SIGTERM after the requests in flight (at most 10 s), then the lifespan ends
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
