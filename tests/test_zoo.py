"""The local model zoo (``configs/zoo.yaml``, ``pix2pix-lit zoo``, ``predict --zoo``): downloads from a server on
127.0.0.1 serving an official-format generator file (the import fixture), never from the internet."""

import hashlib
import http.server
import threading

import pytest
import torch
import yaml

from pix2pix_lit.zoo import ZooError, fetch, load_catalogue, predict_arguments

from conftest import REPO, free_port, run, run_in_process, tiny

OFFICIAL = torch.load(REPO / "tests" / "fixtures" / "official" / "junyanz_generators.pt", weights_only=True)


@pytest.fixture
def served(tmp_path):
    """A folder on an HTTP server on 127.0.0.1 holding G.pth (an official U-Net file); yields (url, sha256)."""
    folder = tmp_path / "www"
    folder.mkdir()
    torch.save(OFFICIAL["unet5_batch_dropout"]["state_dict"], folder / "G.pth")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256((folder / "G.pth").read_bytes()).hexdigest()
    server.shutdown()


def catalogue(tmp_path, url, sha):
    entries = {
        "good": {"model": "pix2pix", "url": f"{url}/G.pth", "sha256": sha, "config": "configs/quickstart.yaml",
                 "what": "a tiny official U-Net"},
        "wrong_sha": {"model": "pix2pix", "url": f"{url}/G.pth", "sha256": "0" * 64, "config": "configs/quickstart.yaml"},
        "gone": {"model": "pix2pix", "url": f"{url}/missing.pth", "config": "configs/quickstart.yaml"},
        "offline": {"model": "pix2pix", "url": f"http://127.0.0.1:{free_port()}/G.pth", "config": "configs/quickstart.yaml"},
        "by_hand": {"model": "spade", "url": None, "page": "https://example.org/spade#models", "what": "SPADE's G",
                    "import": {"preset": "cityscapes"}, "config": "configs/spade/cityscapes.yaml"},
    }
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return load_catalogue(path)


def test_fetch_downloads_checks_and_imports_once(tmp_path, served):
    zoo = catalogue(tmp_path, *served)
    root = tmp_path / "zoo"
    ckpt = fetch("good", zoo, root)
    assert ckpt == root / "good.ckpt" and (root / "good.pth").read_bytes() == (tmp_path / "www" / "G.pth").read_bytes()
    imported = torch.load(ckpt, weights_only=True)
    assert imported["pix2pix_lit"]["imported"]["from"]["G"] == str(root / "good.pth")
    assert torch.equal(imported["state_dict"]["G.model.model.0.weight"],
                       OFFICIAL["unet5_batch_dropout"]["state_dict"]["model.model.0.weight"])
    stamp = ckpt.stat().st_mtime_ns
    assert fetch("good", zoo, root) == ckpt and ckpt.stat().st_mtime_ns == stamp  # imported once


@pytest.mark.parametrize("name, message", [
    ("wrong_sha", r"has sha256 [0-9a-f]{64}, not the 0{64} the zoo pins: not the published file, removed"),
    ("gone", r"missing.pth: HTTP 404 .*put it at .*gone.pth"),
    ("offline", r"cannot reach http://127.0.0.1:\d+/G.pth .*put it at .*offline.pth, then run `pix2pix-lit zoo "
                r"fetch offline` again"),
    ("by_hand", r"by_hand \(SPADE's G\) has no direct download: get its generator file from "
                r"https://example.org/spade#models and put it at .*by_hand.pth"),
    ("nope", r"'nope' is not in the zoo; `pix2pix-lit zoo list` shows them"),
])
def test_what_cannot_be_fetched_is_one_line_and_leaves_nothing(tmp_path, served, name, message):
    zoo = catalogue(tmp_path, *served)
    root = tmp_path / "zoo"
    with pytest.raises(ZooError, match=message):
        fetch(name, zoo, root)
    assert not root.exists() or list(root.iterdir()) == []  # no partial download, no checkpoint


def test_a_file_put_there_by_hand_is_checked_and_imported(tmp_path, served):
    url, sha = served
    zoo = catalogue(tmp_path, url, sha)
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "offline.pth").write_bytes((tmp_path / "www" / "G.pth").read_bytes())  # downloaded elsewhere
    with pytest.raises(ZooError, match=r"offline.pth has sha256 .* not the pinned 1{64}: remove it"):
        fetch("offline", zoo, root, sha256="1" * 64)
    assert (root / "offline.pth").exists() and not (root / "offline.ckpt").exists()  # the user's file is kept
    assert fetch("offline", zoo, root, sha256=sha) == root / "offline.ckpt"


def test_the_shipped_zoo_names_every_official_model():
    """configs/zoo.yaml: junyanz's 5 pix2pix and 18 CycleGAN generators under their official names (the CycleGAN
    ones that share a pix2pix name prefixed), pix2pixHD's Cityscapes model, SPADE's three, CUT's; every config
    file it names exists."""
    zoo = load_catalogue()
    by_model = {m: sorted(n for n, e in zoo.items() if e["model"] == m) for m in ("pix2pix", "cyclegan")}
    assert by_model["pix2pix"] == sorted(["facades_label2photo", "sat2map", "map2sat", "edges2shoes", "day2night"])
    official_cyclegan = ["apple2orange", "orange2apple", "summer2winter_yosemite", "winter2summer_yosemite",
                         "horse2zebra", "zebra2horse", "monet2photo", "style_monet", "style_cezanne", "style_ukiyoe",
                         "style_vangogh", "sat2map", "map2sat", "cityscapes_photo2label", "cityscapes_label2photo",
                         "facades_photo2label", "facades_label2photo", "iphone2dslr_flower"]
    assert [zoo[n]["url"].rsplit("/", 1)[1][:-4] for n in by_model["cyclegan"]] == sorted(
        official_cyclegan, key=lambda n: n if n not in by_model["pix2pix"] else f"cyclegan_{n}")
    assert {"label2city_1024p", "spade_cityscapes", "spade_ade20k", "spade_coco", "horse2zebra_cut"} <= set(zoo)
    assert all((REPO / e["config"]).is_file() for e in zoo.values())


def test_predict_with_a_zoo_name_imports_on_first_use(tmp_path, served, cli_env):
    catalogue(tmp_path, *served)
    env = {**cli_env, "PIX2PIX_LIT_ZOO": str(tmp_path / "zoo"), "PIX2PIX_LIT_ZOO_CATALOGUE": str(tmp_path / "zoo.yaml")}
    args = tiny(tmp_path / "run", tmp_path / "syn", "--trainer.logger", "false")[2:]  # the zoo entry gives -c
    assert predict_arguments(["fit", "--zoo", "good"]) == ["fit", "--zoo", "good"]  # predict, test, validate only
    proc = run(["predict", "--zoo", "good", *args, "--model.inference_mode", "eval",
                "--predict_writer.output_dir", str(tmp_path / "pred")], env, tmp_path)
    assert proc.returncode == 0 and len(list((tmp_path / "pred").glob("*.png"))) == 4
    assert (tmp_path / "zoo" / "good.ckpt").exists()
    gone = run_in_process(["predict", "--zoo", "gone", *args], env, tmp_path)
    assert gone.returncode == 2 and "pix2pix-lit: error: " in gone.stderr and "HTTP 404" in gone.stderr
