"""The service under hostile and unlucky requests: memory limits, a full queue, slow and failing batches,
foreign Host headers, and images as phones and scanners write them (16-bit, EXIF-rotated, MPO, alpha)."""

import asyncio
import io
import os
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from pix2pix_lit import Pix2Pix
from pix2pix_lit.data.io import to_pil, to_tensor
from pix2pix_lit.data.transforms import crop_box, pad_to_multiple
from pix2pix_lit.serving.app import (
    REQUEST_BYTES_PER_PIXEL,
    UNKNOWN_BYTES_PER_PIXEL,
    Limits,
    create_app,
    default_allowed_hosts,
    memory_limits,
)
from pix2pix_lit.serving.engine import Batcher, Generator, Overloaded
from pix2pix_lit.serving.export import export_generator, load_exported

from conftest import drawing, expected, png_bytes, start_server, stop_server


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_limits")
    torch.manual_seed(0)
    out = {}
    for nc in (1, 4):
        model = Pix2Pix(netG="unet", num_downs=5, ngf=8, ndf=8, input_nc=nc, output_nc=3, fid=False, kid=False)
        out[nc] = tmp / f"g{nc}.onnx"
        export_generator(model.G, out[nc], "onnx", "eval", nc, 3, model.size_multiple, {"direction": "AtoB"})
    resnet = Pix2Pix(netG="resnet_6blocks", ngf=8, ndf=8, input_nc=3, output_nc=3, fid=False, kid=False, norm="instance")
    out["resnet"] = tmp / "resnet.pt"
    export_generator(resnet.G, out["resnet"], "torchscript", "eval", 3, 3, resnet.size_multiple, {"direction": "AtoB"})
    return out


def post(client, img_bytes, **kw):
    return client.post("/v1/translate", content=img_bytes, headers={"Content-Type": "image/png"}, **kw)


def slow(generator: Generator, seconds: float) -> Generator:
    def run(x):
        time.sleep(seconds)
        return generator.run(x)

    return Generator(run, generator.contract, generator.source)


def test_memory_limits_follow_the_budget_and_the_cost_per_pixel(files):
    # a hand computation: 3/4 of 1 GiB for the batch at (bytes/pixel + request buffers), 1/4 for requests in progress
    budget, bpp = 2**30, 1000
    batch = int(budget * 3 / 4 / (bpp + REQUEST_BYTES_PER_PIXEL))
    assert memory_limits(budget, bpp) == (batch, batch, int(budget / 4 / REQUEST_BYTES_PER_PIXEL))
    assert memory_limits(2**40, 10)[0] == 4096 * 4096  # capped at 4096 x 4096
    gen = Generator.load(model=str(files[1]))
    assert gen.bytes_per_pixel and 10 < gen.bytes_per_pixel < UNKNOWN_BYTES_PER_PIXEL  # measured at export
    resnet = Generator.load(model=str(files["resnet"]))
    assert resnet.bytes_per_pixel > gen.bytes_per_pixel  # 7x7 convs at full size, 32 channels through 6 blocks
    app = create_app(gen, Limits(memory_budget_mb=64))
    limits = app.state.limits
    assert limits.max_pixels == memory_limits(64 * 2**20, gen.bytes_per_pixel)[0] < 4096 * 4096
    with TestClient(app) as client:
        flat = png_bytes(Image.new("L", (4096, 4096), 255))  # ~40 KB on the wire, 16.7 M pixels
        assert len(flat) < 100_000
        r = post(client, flat)
        assert r.status_code == 413 and f"more than the limit of {limits.max_pixels}" in r.json()["error"]
        assert client.get("/health").json()["limits"]["max_pixels"] == limits.max_pixels


def _rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
@pytest.mark.parametrize("kind", ["resnet", 1])
def test_the_largest_admitted_image_runs_within_the_budget(files, kind):
    """Measured, not restated: the largest image the limits admit for a 256 MB budget, run through the file, raises
    the process's peak memory by less than the batch's share of the budget (3/4)."""
    gen = Generator.load(model=str(files[kind]))
    budget = 256 * 2**20
    limits = create_app(gen, Limits(memory_budget_mb=256)).state.limits
    multiple = gen.contract["input"]["size_multiple"]
    side = int(limits.max_pixels**0.5) // multiple * multiple
    nc = gen.contract["input"]["channels"]
    gen.run(torch.zeros(1, nc, 64, 64))  # the runtime's own start-up is not the image's cost
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    before = _rss("VmRSS")
    gen.run(torch.rand(1, nc, side, side) * 2 - 1)
    grew = _rss("VmHWM") - before
    assert side * side > 0.9 * limits.max_pixels and grew < budget * 3 / 4, (side, grew / 2**20)


def test_a_batch_holds_at_most_its_pixel_budget():
    gen = Generator(lambda x: x.numpy(), {"input": {"channels": 1, "size_multiple": 1}}, "test")
    batcher = Batcher(gen, max_batch=8, max_batch_pixels=3 * 64 * 64)
    from pix2pix_lit.serving.engine import _Job

    jobs = [_Job(torch.zeros(1, 64, 64), None) for _ in range(7)] + [_Job(torch.zeros(1, 128, 128), None)]
    groups = batcher._groups(jobs)
    assert sorted(len(g) for g in groups) == [1, 1, 3, 3]  # 7 small ones in 3 + 3 + 1, the big one alone


def test_a_full_service_answers_503_with_retry_after_and_a_slow_one_504(files):
    gen = slow(Generator.load(model=str(files[1])), 1.5)
    app = create_app(gen, Limits(max_queue=1, max_wait_ms=0, timeout_s=30))
    small = png_bytes(drawing(32, 32))
    with TestClient(app) as client:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=post(client, small)))
        t.start()
        time.sleep(0.5)  # the first request is in progress
        r = post(client, small)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]
        t.join()
        assert first["r"].status_code == 200
        assert post(client, small).status_code == 200  # admitted again once the first is done
        assert client.get("/health").json()["batching"]["in_progress"] == 0
    app = create_app(gen, Limits(timeout_s=0.3))
    with TestClient(app) as client:
        r = post(client, small)
        assert r.status_code == 504 and "longer than the limit of 0.3 s" in r.json()["error"]
        time.sleep(1.6)  # the batch still running ends; its pixels are given back
        assert client.get("/health").json()["batching"]["pending_pixels"] == 0


def test_a_failing_batch_answers_500_and_the_service_keeps_serving(files):
    real = Generator.load(model=str(files[1]))
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("cannot allocate 9 GB")
        return real.run(x)

    app = create_app(Generator(flaky, real.contract, "/secret/path/g.onnx"))
    with TestClient(app) as client:
        r = post(client, png_bytes(drawing(32, 32)))
        assert r.status_code == 500 and "9 GB" not in r.text and "MemoryError" not in r.text
        assert post(client, png_bytes(drawing(32, 32))).status_code == 200
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["batching"]["failed_batches"] == 1
        assert "/secret/path" not in health.text  # no file paths in responses
        batcher = app.state.batcher

        def stop_loop():  # the loop down for good (restarts: test_restart_after_an_unexpected_loop_error)
            batcher._stopping = True
            batcher._task.cancel()

        client.portal.call(stop_loop)
        time.sleep(0.2)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["batching"]["alive"] is False


def test_restart_after_an_unexpected_loop_error():
    gen = Generator(lambda x: x.numpy(), {"input": {"channels": 1, "size_multiple": 1}}, "test")

    async def scenario():
        batcher = Batcher(gen)
        await batcher.start()
        original = batcher._collect

        async def broken():
            batcher._collect = original
            raise RuntimeError("bug")

        batcher._collect = broken
        await batcher.translate(torch.zeros(1, 4, 4))  # queued before the loop runs: it fails, restarts, answers
        return batcher

    async def run():
        batcher = await asyncio.wait_for(scenario(), 10)
        restarts = batcher.stats.restarts
        await batcher.stop()
        return restarts

    assert asyncio.run(run()) == 1


def test_admission_counts_requests_and_pixels():
    gen = Generator(lambda x: x.numpy(), {"input": {"channels": 1, "size_multiple": 1}}, "test")
    batcher = Batcher(gen, max_queue=3, max_pending_pixels=1000)
    a = batcher.admit(600)
    with pytest.raises(Overloaded, match="1000"):
        batcher.admit(500)
    b = batcher.admit(400)
    a.release()
    a.release()  # twice: counted once
    assert (batcher.admitted, batcher.pending_pixels) == (1, 400)
    b.release()
    assert (batcher.admitted, batcher.pending_pixels) == (0, 0)


def test_images_are_read_as_viewers_show_them(files):
    """16-bit PNGs, EXIF-rotated phone JPEGs, MPO, and alpha for a 4-channel model: as predict reads the file."""
    from pix2pix_lit.data.datasets import SingleImageDataset

    app = create_app(Generator.load(model=str(files[1])))
    img8 = drawing(64, 48)
    a16 = (np.asarray(img8).astype(np.uint16) * 257)
    img16 = Image.fromarray(a16)
    assert Image.open(io.BytesIO(png_bytes(img16))).mode.startswith("I")
    with TestClient(app) as client:
        want = np.asarray(Image.open(io.BytesIO(post(client, png_bytes(img8)).content))).astype(int)
        got = np.asarray(Image.open(io.BytesIO(post(client, png_bytes(img16)).content))).astype(int)
        assert np.abs(got - want).max() <= 1  # not the translation of a white page
        assert np.abs(got - expected(files[1], Image.new("L", (64, 48), 255)).astype(int)).max() > 1
        # a phone photo stored 64x48 with EXIF orientation 6 is shown 48x64
        exif = Image.Exif()
        exif[0x0112] = 6
        buf = io.BytesIO()
        img8.convert("RGB").save(buf, "JPEG", quality=95, exif=exif)
        r = client.post("/v1/translate", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (48, 64)
        # MPO (most phones' JPEGs): its first frame
        buf = io.BytesIO()
        img8.convert("RGB").save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48))])
        assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
        r = client.post("/v1/translate", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 48)
    # the same files through predict's dataset
    folder = files[1].parent / "phone"
    folder.mkdir(exist_ok=True)
    img16.save(folder / "deep.png")
    img8.convert("RGB").save(folder / "turned.jpg", quality=95, exif=exif)
    ds = SingleImageDataset(sorted(folder.iterdir()), folder, input_nc=1)
    items = {ds[i]["name"]: ds[i]["source"] for i in range(len(ds))}
    assert torch.allclose(items["deep.png"], to_tensor(img8), atol=1 / 127.5 + 1e-6)
    assert items["turned.jpg"].shape[-2:] == (64, 48)

    # 4 channels: the alpha reaches the model in serve as in predict
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :20, 3] = 255
    rgba = Image.fromarray(rgba, "RGBA")
    run, contract = load_exported(files[4])
    x, box = pad_to_multiple(to_tensor(rgba)[None], contract["input"]["size_multiple"])
    want = np.asarray(to_pil(crop_box(torch.from_numpy(run(x)), box)[0])).astype(int)
    with TestClient(create_app(Generator.load(model=str(files[4])))) as client:
        got = np.asarray(Image.open(io.BytesIO(post(client, png_bytes(rgba)).content))).astype(int)
    assert np.abs(got - want).max() <= 1


def test_odd_sizes_below_the_resnet_minimum_are_padded(files):
    gen = Generator.load(model=str(files["resnet"]))
    assert (gen.size_multiple, gen.min_size) == (4, 8)
    with TestClient(create_app(gen)) as client:
        for w, h in ((5, 3), (8, 4), (13, 9)):
            img = Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8))
            r = post(client, png_bytes(img))
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (w, h), (w, h, r.text)


def test_a_real_server_serves_only_its_host_names(files):
    assert "localhost" in default_allowed_hosts("127.0.0.1") and "evil.example" not in default_allowed_hosts("127.0.0.1")
    proc, url = start_server(["--model", str(files[1])], files[1].parent)
    try:
        port = url.rsplit(":", 1)[1]
        rebound = httpx.get(f"{url}/health", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 400 and "model" not in rebound.text
        health = httpx.get(f"{url}/health", headers={"Host": f"localhost:{port}"})
        assert health.status_code == 200 and str(files[1].parent) not in health.text
        r = httpx.post(f"{url}/v1/translate", content=png_bytes(drawing(32, 32)), headers={"Content-Type": "image/png"},
                       timeout=60)
        assert r.status_code == 200
    finally:
        out = stop_server(proc)
    assert "hosts served" in out
