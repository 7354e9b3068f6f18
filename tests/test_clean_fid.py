"""clean-FID in ``pix2pix-lit eval --fid clean|both``: equal to the clean-fid package's own ``compute_fid`` on the same
folders. NVIDIA's TorchScript Inception cannot be downloaded here, so the network is a small TorchScript module of
random weights with its interface (``layers``), saved to a file: what is under test is the reading, the resize and
the statistics around it, and the loading path of the file users bring."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from pix2pix_lit.errors import InceptionWeightsError

from conftest import run_in_process


class _Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 7, stride=4)
        self.fc = nn.Linear(16 * 4 * 4, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4)
        return self.fc(x.flatten(1))


class _Inception(nn.Module):
    """NVIDIA's inception-2015-12-05.pt interface: ``layers`` on normalised 299x299 input (clean mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _Layers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers((x - 128) / 128)


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    fake, real = tmp_path / "fake", tmp_path / "real"
    for folder, shift in ((fake, 40), (real, 0)):
        folder.mkdir()
        for i in range(12):  # 64x48: clean-fid resizes each file to 299x299 itself
            a = rng.integers(0, 200, (48, 64, 3)) + shift * (i % 3)
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    torch.manual_seed(0)
    weights = tmp_path / "nets" / "my-inception.pt"  # any name: it is linked under the one clean-fid loads
    weights.parent.mkdir()
    torch.jit.script(_Inception().eval()).save(str(weights))
    return fake, real, weights


def test_clean_fid_equals_the_package_on_the_same_folders(tmp_path, folders, cli_env):
    from cleanfid.fid import compute_fid
    from cleanfid.inception_torchscript import InceptionV3W

    fake, real, weights = folders
    link = tmp_path / "pkg"
    link.mkdir()
    (link / "inception-2015-12-05.pt").symlink_to(weights)
    network = InceptionV3W(str(link), download=False).eval()
    expected = compute_fid(str(fake), str(real), mode="clean", custom_feat_extractor=network, num_workers=0,
                           batch_size=5, device=torch.device("cpu"), verbose=False)
    out = tmp_path / "scores.json"
    # --fid clean alone (--fid both adds the legacy FID, the Inception pass the FID tests check)
    proc = run_in_process(["eval", fake, real, "--fid", "clean", "--clean-fid-weights", weights, "--no-kid",
                           "--output", out], cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["metrics"]["clean_fid"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert "fid" not in result["metrics"] and result["protocol"]["fid_implementation"] is None
    about = result["protocol"]["clean_fid"]
    assert about["weights"] == "my-inception.pt" and len(about["weights_sha256"]) == 64
    assert "PIL bicubic" in about["protocol"]


def test_without_the_torchscript_file_the_error_says_what_to_download(tmp_path, folders, cli_env, monkeypatch):
    from pix2pix_lit import clean_fid

    fake, real, weights = folders
    monkeypatch.setattr(clean_fid.tempfile, "gettempdir", lambda: str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(clean_fid.ENV, raising=False)
    with pytest.raises(InceptionWeightsError, match=r"clean-FID needs NVIDIA's TorchScript Inception "
                                                    r"inception-2015-12-05.pt \(95 MB, https://nvlabs-fi-cdn"):
        clean_fid.find_clean_fid_weights()
    monkeypatch.undo()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a TorchScript file")
    proc = run_in_process(["eval", fake, real, "--fid", "clean", "--clean-fid-weights", bad], cli_env, tmp_path)
    assert proc.returncode == 2 and "is not NVIDIA's TorchScript Inception" in proc.stderr
