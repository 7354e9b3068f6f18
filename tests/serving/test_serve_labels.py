"""Models of label maps exported and served: the class ids go in (one-hot and boundaries made inside the file, as
``predict`` makes them in PyTorch), the paint-with-labels page sends id maps, bad maps get a one-line 400."""

import io
import shutil

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.data import SyntheticLabelDataModule
from pix2pix_lit.data.labels import DONTCARE_ID, LabelMapsForPredict, one_hot
from pix2pix_lit.data.synthetic import CLASSES
from pix2pix_lit.models import SPADE, Pix2Pix
from pix2pix_lit.serving.export import ExportError, LabelMapInput, export_checkpoint, load_exported

from conftest import png_bytes, quiet_trainer, start_server, stop_server


def trained_checkpoint(tmp_path, model_class, **options):
    """A checkpoint as the CLI writes it (its data's options inside) after 2 steps on the built-in label maps."""
    torch.manual_seed(0)
    dm = SyntheticLabelDataModule(str(tmp_path / "data"), num_train=4, num_val=2, num_test=2, image_size=40,
                                  load_size=40, crop_size=32, batch_size=2, num_workers=0)
    model = model_class(ngf=8, ndf=8, fid=False, kid=False, label_nc=5, n_epochs=1, n_epochs_decay=1, **options)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, dm)
    path = tmp_path / "labels.ckpt"
    trainer.save_checkpoint(path)  # the model class is recorded by the model itself (built in Python here)
    return path, model.eval(), dm


def painted_map(w=70, h=45, seed=0) -> np.ndarray:
    """A map of the 5 built-in classes in rectangles (regions and boundaries, odd sizes)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((h, w), np.uint8)
    for _ in range(8):
        y, x = rng.integers(0, h, 2), rng.integers(0, w, 2)
        ids[min(y):max(y) + 1, min(x):max(x) + 1] = rng.integers(0, 5)
    return ids


def predicted(model, folder, ids: np.ndarray) -> np.ndarray:
    """What ``predict`` writes for the map: its dataset, the model's predict_step, the output as an 8-bit image."""
    Image.fromarray(ids).save(folder / "map.png")
    dataset = LabelMapsForPredict([folder / "map.png"], folder, 5, False, edges=not model.hparams.no_instance)
    batch = {k: (v[None] if torch.is_tensor(v) else [v]) for k, v in dataset[0].items()}
    fake = model.predict_step(batch, 0)["fake"][0]
    return ((fake.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_label_input_inside_the_file_equals_one_hot_and_edges():
    """The comparisons traced into the file against F.one_hot and a numpy loop over each pixel's 4 neighbours."""
    ids = torch.tensor(np.random.default_rng(1).integers(0, 6, (2, 1, 9, 13)), dtype=torch.long)
    ids[ids == 5] = DONTCARE_ID
    encode = LabelMapInput(5, contain_dontcare_label=True, edges=True)
    encoded = ids.clone()
    encoded[encoded == DONTCARE_ID] = 5  # the data's encoding: don't-care as class label_nc
    a = ids.numpy()
    edges = np.zeros(a.shape, np.float32)
    for n, y, x in np.ndindex(a.shape[0], a.shape[2], a.shape[3]):
        neighbours = [(y + dy, x + dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                      if 0 <= y + dy < a.shape[2] and 0 <= x + dx < a.shape[3]]
        edges[n, 0, y, x] = any(a[n, 0, v, u] != a[n, 0, y, x] for v, u in neighbours)
    want = torch.cat([one_hot(encoded, 6), torch.from_numpy(edges)], 1)
    assert torch.equal(encode(ids.float()), want)


@pytest.mark.parametrize("model_class,options,fmt", [
    (SPADE, dict(num_upsampling_layers="normal", norm_G="spectralspadebatch3x3"), "onnx"),
    (Pix2Pix, dict(netG="resnet_6blocks", no_dropout=True), "torchscript"),
], ids=["spade-onnx", "pix2pix-torchscript"])
def test_exported_label_model_gives_what_predict_gives(tmp_path, model_class, options, fmt):
    ckpt, model, _ = trained_checkpoint(tmp_path, model_class, **options)
    mode = model.hparams.inference_mode  # pix2pix: paper (per-image statistics), SPADE: eval
    path, contract = export_checkpoint(str(ckpt), fmt, str(tmp_path / f"g.{fmt}"), inference_mode=mode)
    labels = contract["labels"]
    assert contract["input"]["channels"] == 1 and contract["input"]["values"] == "class ids"
    assert [c["name"] for c in labels["classes"]] == list(CLASSES) and labels["input_ids"] == [0, 1, 2, 3, 4]
    assert labels["edges"] is not None  # the built-in maps come with instance maps: the file makes the boundaries
    run, stored = load_exported(path)
    assert stored["labels"] == labels
    ids = painted_map(64, 32)  # sides the generators take: no padding
    got = run(torch.from_numpy(ids.astype(np.float32))[None, None])[0]
    got = ((np.clip(got, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    assert np.abs(got.astype(int) - predicted(model, tmp_path, ids).astype(int)).max() <= 1


def test_export_of_a_style_encoder_model_is_refused_in_one_line(tmp_path):
    model = SPADE(ngf=4, ndf=4, label_nc=5, use_vae=True, z_dim=8, crop_size=64, fid=False, kid=False)
    path = tmp_path / "vae.ckpt"
    hparams = {**model.hparams, "_class_path": "pix2pix_lit.models.spade.SPADE"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    expected = r"^checkpoint vae.ckpt: its generator takes more than the source \(z: a style code of 8 numbers"
    with pytest.raises(ExportError, match=expected):
        export_checkpoint(str(path), "onnx", str(tmp_path / "g.onnx"))
    assert not (tmp_path / "g.onnx").exists()


@pytest.fixture(scope="module")
def label_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labels")
    ckpt, model, _ = trained_checkpoint(tmp, SPADE, num_upsampling_layers="normal", norm_G="spectralspadebatch3x3")
    path, _ = export_checkpoint(str(ckpt), "onnx", str(tmp / "spade.onnx"))
    proc, url = start_server(["--model", str(path), "--max-wait-ms", "0"], tmp)
    yield url, model, tmp
    stop_server(proc)


def post(url, body: bytes, content_type="image/png"):
    return httpx.post(f"{url}/v1/translate", content=body, headers={"Content-Type": content_type}, timeout=60)


def test_served_label_map_gives_what_predict_gives(label_server, tmp_path):
    url, model, _ = label_server
    health = httpx.get(f"{url}/health").json()
    assert [c["name"] for c in health["model"]["labels"]["classes"]] == list(CLASSES)
    for mode in ("L", "P", "I;16"):  # 8-bit grey, palette (the indices are the ids), 16-bit
        ids = painted_map(70, 45, seed=2)  # odd sizes: padded to the generator's multiple and cropped back
        img = Image.fromarray(ids.astype(np.uint16) if mode == "I;16" else ids)
        if mode == "P":
            img = img.convert("P")
            img.putpalette([v for i in range(256) for v in (i * 7 % 256, i, 255 - i)])
        r = post(url, png_bytes(img))
        assert r.status_code == 200, r.text
        out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        assert out.shape == (45, 70, 3)
        assert np.abs(out.astype(int) - predicted(model, tmp_path, ids).astype(int)).max() <= 1, mode


def test_bad_label_maps_get_one_line_400s(label_server):
    url = label_server[0]
    ids = painted_map(40, 40)
    colour = Image.fromarray(np.stack([ids * 40] * 3, -1))
    cases = [
        (png_bytes(colour), "image/png", "this model takes label maps: send a PNG of class ids"),
        (png_bytes(Image.fromarray(ids), "JPEG"), "image/jpeg", "not a JPEG L image"),
        (png_bytes(Image.fromarray(np.where(ids == 3, 9, ids).astype(np.uint8))), "image/png",
         "class id 9 at pixel (x="),
    ]
    for body, content_type, message in cases:
        r = post(url, body, content_type)
        assert r.status_code == 400 and message in r.json()["error"], r.text
        assert "\n" not in r.json()["error"] and "/" not in r.json()["error"].split(":")[0]
    assert "of this model's 5 classes (ids 0-4)" in post(url, cases[2][0]).json()["error"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_paint_with_labels_page_in_a_real_browser(label_server, tmp_path):
    """A brush per class, fill, undo and clear; after each the page sends the id map and shows the photo the
    server makes of exactly that map."""
    from playwright.sync_api import sync_playwright

    url = label_server[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()

        def sent_after(action) -> np.ndarray:
            """The id map the page sends after ``action``, checked to be what its photo shows."""
            with page.expect_response("**/v1/translate", timeout=60000) as answer:
                action()
            response = answer.value
            assert response.status == 200
            body = response.request.post_data_buffer
            img = Image.open(io.BytesIO(body))
            assert img.format == "PNG" and img.mode == "L"  # ids, not a colour picture
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('done')")
            shown = page.evaluate("""async () => {
                const b = await (await fetch(document.getElementById('result').src)).arrayBuffer();
                return Array.from(new Uint8Array(b)); }""")
            assert bytes(shown) == post(url, body).content  # the photo of exactly the map sent
            return np.asarray(img)

        first = sent_after(lambda: page.goto(url + "/"))  # the page paints the first class and sends it
        assert first.shape == (32, 32) and (first == 0).all()
        names = page.locator("#classes button").all_inner_texts()
        assert [n.strip() for n in names] == list(CLASSES)
        box = page.locator("#canvas").bounding_box()
        scale = box["width"] / 32

        def stroke():
            page.mouse.move(box["x"] + 4 * scale, box["y"] + 16 * scale)
            page.mouse.down()
            for x in np.linspace(4, 28, 10):
                page.mouse.move(box["x"] + x * scale, box["y"] + 16 * scale)
            page.mouse.up()

        page.click("#classes button[data-id='4']")  # car
        painted = sent_after(stroke)
        assert set(np.unique(painted)) == {0, 4} and (painted[16, 6:27] == 4).all() and (painted[:5] == 0).all()
        page.click("#classes button[data-id='3']")  # road
        page.check("#fill")
        filled = sent_after(lambda: page.mouse.click(box["x"] + 2 * scale, box["y"] + 2 * scale))
        # the stroke crosses the whole canvas: the sky above it (the region clicked) became road, below it stays
        assert np.array_equal(filled == 4, painted == 4) and (filled[:5] == 3).all() and (filled[-3:] == 0).all()
        assert set(np.unique(filled)) == {0, 3, 4}
        undone = sent_after(lambda: page.click("#undo"))
        assert np.array_equal(undone, painted)
        page.click("#classes button[data-id='1']")  # building
        cleared = sent_after(lambda: page.click("#clear"))
        assert (cleared == 1).all()
        page.screenshot(path=str(tmp_path / "paint.png"))
        browser.close()
    assert (tmp_path / "paint.png").stat().st_size > 3000


def test_a_checkpoint_serves_label_maps_as_its_export_does(label_server):
    """``serve --ckpt_path`` (the PyTorch generator) answers what the exported file answers, and refuses
    ``--preprocess edges`` (it makes images) in one line."""
    from starlette.testclient import TestClient

    from pix2pix_lit.errors import ConfigError
    from pix2pix_lit.serving.app import Limits, create_app
    from pix2pix_lit.serving.engine import Generator

    url, _, tmp = label_server
    generator = Generator.load(ckpt_path=str(tmp / "labels.ckpt"))
    assert generator.labels["label_nc"] == 5
    body = png_bytes(Image.fromarray(painted_map(50, 38, seed=3)))
    with TestClient(create_app(generator, Limits(memory_budget_mb=256))) as client:
        page = client.get("/")
        assert "Paint with labels" in page.text and client.get("/translate.js").status_code == 200
        served = client.post("/v1/translate", content=body, headers={"Content-Type": "image/png"})
    assert served.status_code == 200
    from_file = np.asarray(Image.open(io.BytesIO(post(url, body).content))).astype(int)
    assert np.abs(np.asarray(Image.open(io.BytesIO(served.content))).astype(int) - from_file).max() <= 1
    with pytest.raises(ConfigError, match="--preprocess edges makes images, but this model takes label maps"):
        create_app(generator, preprocess="edges")
