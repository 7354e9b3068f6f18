"""The HTTP service as a client sees it: a real server process on 127.0.0.1, a real HTTP client, a real browser."""

import io
import os
import shutil
import signal
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit import Pix2Pix
from pix2pix_lit.serving.export import export_generator

from conftest import drawing, expected, png_bytes, start_server, stop_server

LIMITS = ["--max-bytes", "300000", "--max-pixels", "250000", "--max-batch", "8", "--max-wait-ms", "100"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = Pix2Pix(netG="unet", num_downs=5, ngf=8, ndf=8, input_nc=1, output_nc=3, fid=False, kid=False)
    export_generator(model.G, tmp / "g.onnx", "onnx", "eval", 1, 3, model.size_multiple, {"direction": "AtoB"})
    return tmp / "g.onnx"


@pytest.fixture(scope="module")
def server(model_file):
    proc, url = start_server(["--model", str(model_file), *LIMITS], model_file.parent)
    yield url
    stop_server(proc)


def test_translate_returns_the_model_output_at_the_input_size(server, model_file):
    img = drawing(100, 70)
    want = expected(model_file, img)
    requests = [
        dict(content=png_bytes(img), headers={"Content-Type": "image/png"}),
        dict(files={"image": ("d.png", png_bytes(img), "image/png")}),
        dict(content=png_bytes(img.convert("RGBA")), headers={"Content-Type": "image/png"}),  # a canvas export
    ]
    for req in requests:
        r = httpx.post(f"{server}/v1/translate", timeout=60, **req)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        out = np.asarray(Image.open(io.BytesIO(r.content)))
        assert out.shape == (70, 100, 3)
        assert np.abs(out.astype(int) - want.astype(int)).max() <= 1
    for fmt, kw in (("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=fmt, **kw)
        r = httpx.post(f"{server}/v1/translate", content=buf.getvalue(), headers={"Content-Type": f"image/{fmt.lower()}"},
                       timeout=60)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (100, 70)
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"]["input"]["channels"] == 1


def test_bad_requests_get_json_errors_and_the_service_stays_up(server):
    good = png_bytes(drawing(40, 40))
    truncated = png_bytes(drawing(200, 200, seed=1))[:300]
    bmp = io.BytesIO()
    drawing(20, 20).save(bmp, format="BMP")
    huge_pixels = png_bytes(Image.new("L", (600, 600), 255))  # 360,000 pixels, few bytes
    bomb = bytearray(huge_pixels)
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2  # the header now declares 100000 x 100000 pixels
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # with a valid IHDR checksum
    cases = [
        ("post", dict(content=b"not an image at all", headers={"Content-Type": "image/png"}), 400, "not an image"),
        ("post", dict(content=truncated, headers={"Content-Type": "image/png"}), 400, "truncated or corrupt"),
        ("post", dict(content=os.urandom(400_000), headers={"Content-Type": "image/png"}), 413, "limit of 300000"),
        ("post", dict(content=huge_pixels, headers={"Content-Type": "image/png"}), 413, "more than the limit of 250000"),
        ("post", dict(content=bytes(bomb), headers={"Content-Type": "image/png"}), 413, "too large"),
        ("get", {}, 405, "GET is not allowed"),
        ("put", dict(content=good, headers={"Content-Type": "image/png"}), 405, "PUT is not allowed"),
        ("post", dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "is not an image"),
        ("post", dict(content=bmp.getvalue(), headers={"Content-Type": "image/bmp"}), 415, "BMP images are not accepted"),
        ("post", dict(files={"other": ("d.png", good, "image/png")}), 400, "no file field 'image'"),
        ("post", dict(content=good, headers={"Content-Type": "image/png"}, params={"direction": "BtoA"}), 400,
         "translates AtoB only"),
    ]
    for method, kw, status, message in cases:
        r = getattr(httpx, method)(f"{server}/v1/translate", timeout=60, **kw)
        assert r.status_code == status, (message, r.status_code, r.text)
        body = r.json()
        assert body["status"] == status and message in body["error"], body
        ok = httpx.post(f"{server}/v1/translate", content=good, headers={"Content-Type": "image/png"}, timeout=60)
        assert ok.status_code == 200  # still serving
    # a body larger than the limit without Content-Length (chunked) is stopped too
    r = httpx.post(f"{server}/v1/translate", content=iter([os.urandom(100_000)] * 4), headers={"Content-Type": "image/png"},
                   timeout=60)
    assert r.status_code == 413


def test_concurrent_requests_are_batched(server, model_file):
    before = httpx.get(f"{server}/health").json()["batching"]
    imgs = [drawing(64, 64, seed=i) for i in range(16)]

    def post(img):
        return httpx.post(f"{server}/v1/translate", content=png_bytes(img), headers={"Content-Type": "image/png"},
                          timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, imgs))
    assert all(r.status_code == 200 for r in responses)
    for img, r in zip(imgs[:3], responses[:3]):  # each answer belongs to its own request
        out = np.asarray(Image.open(io.BytesIO(r.content))).astype(int)
        assert np.abs(out - expected(model_file, img).astype(int)).max() <= 1
    after = httpx.get(f"{server}/health").json()["batching"]
    assert after["images"] - before["images"] == 16
    assert after["largest_batch"] > 1 and after["batches"] - before["batches"] < 16


def test_sigterm_shuts_down_gracefully(model_file):
    proc, url = start_server(["--model", str(model_file)], model_file.parent)
    assert httpx.post(f"{url}/v1/translate", content=png_bytes(drawing(32, 32)), headers={"Content-Type": "image/png"},
                      timeout=60).status_code == 200
    out = stop_server(proc)
    # uvicorn finishes the requests in flight, runs the app's shutdown, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in out and "Finished server process" in out


def test_edges_preprocessing_feeds_the_model_a_sketch_of_the_photo(model_file):
    from pix2pix_lit.prepare import edges

    photo = np.full((64, 96, 3), 220, np.uint8)
    photo[16:48, 24:72] = (40, 90, 160)
    photo = Image.fromarray(photo)
    proc, url = start_server(["--model", str(model_file), "--preprocess", "edges"], model_file.parent)
    try:
        r = httpx.post(f"{url}/v1/translate", content=png_bytes(photo), headers={"Content-Type": "image/png"}, timeout=60)
    finally:
        stop_server(proc)
    assert r.status_code == 200
    out = np.asarray(Image.open(io.BytesIO(r.content))).astype(int)
    assert np.abs(out - expected(model_file, edges(photo, "canny")).astype(int)).max() <= 1
    assert np.abs(out - expected(model_file, photo).astype(int)).max() > 1  # not the photo itself


def test_serve_refuses_a_missing_model_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pix2pix_lit", "serve", "--model", str(tmp_path / "none.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("pix2pix-lit serve: error: model file")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_drawing_page_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page()
        page.goto(server + "/")
        box = page.locator("#canvas").bounding_box()
        for (x0, y0), (x1, y1) in (((30, 40), (220, 60)), ((60, 200), (200, 120)), ((128, 20), (128, 230))):
            page.mouse.move(box["x"] + x0, box["y"] + y0)
            page.mouse.down()
            for t in np.linspace(0, 1, 12):
                page.mouse.move(box["x"] + x0 + t * (x1 - x0), box["y"] + y0 + t * (y1 - y0))
            page.mouse.up()
        dark = page.evaluate("""() => {
            const d = document.getElementById('canvas').getContext('2d').getImageData(0, 0, 256, 256).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n; }""")
        assert dark > 300  # the strokes are on the canvas
        page.click("#translate")
        page.wait_for_function("() => document.getElementById('result').naturalWidth > 0", timeout=60000)
        assert page.evaluate("() => document.getElementById('result').naturalWidth") == 256
        assert page.inner_text("#status").startswith("done in")
        page.screenshot(path=str(tmp_path / "drawing-page.png"))
        browser.close()
    assert (tmp_path / "drawing-page.png").stat().st_size > 5000
