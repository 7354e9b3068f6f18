"""clean-FID: ``pix2pix-lit eval --fid clean|both`` and ``model.fid_protocol`` equal to the Fréchet distance of the
clean-fid package's own features of the same files. NVIDIA's TorchScript Inception cannot be downloaded here, so the
network is a small TorchScript module of random weights with its interface (``layers``), saved to a file: what is
under test is the reading, the resize and the statistics around it, and the loading path of the file users bring."""

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
    """eval's clean_fid against the Fréchet distance, by hand, of the package's own features of the two folders
    (``get_files_features``: its reading, resize and network wrapper; what its ``compute_fid`` feeds its
    ``fid_from_feats``, which eval calls)."""
    fake, real, weights = folders
    expected = _frechet(*(_package_features(sorted(d.iterdir()), weights) for d in (fake, real)))
    out = tmp_path / "scores.json"
    # --fid clean alone (--fid both adds the legacy FID, the Inception pass the FID tests check)
    proc = run_in_process(["eval", fake, real, "--fid", "clean", "--clean-fid-weights", weights, "--no-kid",
                           "--output", out], cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["metrics"]["clean_fid"] == pytest.approx(expected, rel=1e-5) and expected > 0
    assert "fid" not in result["metrics"] and result["protocol"]["fid_implementation"] is None
    about = result["protocol"]["clean_fid"]
    assert about["weights"] == "my-inception.pt" and len(about["weights_sha256"]) == 64
    assert "PIL bicubic" in about["protocol"]
    # --unpaired: the two folders as sets (other names, another count), as the package's compute_fid takes them
    other = tmp_path / "translated"
    other.mkdir()
    for f in sorted(fake.iterdir())[:9]:
        (other / f"x_{f.name}").write_bytes(f.read_bytes())
    expected = _frechet(*(_package_features(sorted(d.iterdir()), weights) for d in (other, real)))
    run_in_process(["eval", other, real, "--unpaired", "--fid", "clean", "--clean-fid-weights", weights, "--no-kid",
                    "--output", out], cli_env, tmp_path, check=True)
    result = json.loads(out.read_text())
    assert result["metrics"] == {"clean_fid": pytest.approx(expected, rel=1e-5)} and result["num_real_images"] == 12


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


def _as_tensor(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1


def _package_features(files, weights) -> np.ndarray:
    """The clean-fid package's own features of image files (its reading, resize and network wrapper)."""
    from cleanfid.fid import get_files_features

    from pix2pix_lit.clean_fid import CleanFID

    return get_files_features([str(f) for f in files], CleanFID(weights).network, num_workers=0, batch_size=4,
                              device=torch.device("cpu"), mode="clean", verbose=False)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """By hand: |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2), in float64. With centred features X_a,
    X_b of n_a and n_b images, S_a S_b's non-zero eigenvalues are the squared singular values of
    X_a X_b^T / sqrt((n_a - 1)(n_b - 1)), so the last trace is that small matrix's nuclear norm."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    xa, xb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a), len(b)
    root_trace = np.linalg.svd(xa @ xb.T / np.sqrt((na - 1) * (nb - 1)), compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (xa ** 2).sum() / (na - 1) + (xb ** 2).sum() / (nb - 1)
                 - 2 * root_trace)


def test_validation_features_are_the_packages_features_of_the_same_images(tmp_path, folders):
    """What validation/test compute of tensors (model.fid_protocol clean) is what the package computes of the same
    images saved as PNG (features to 1e-5), and the FID of them the Fréchet distance computed by hand; the next
    pass keeps the real features."""
    from pix2pix_lit.clean_fid import CleanFID
    from pix2pix_lit.metrics import ImageQualityMetrics

    fake, real, weights = folders
    names = sorted(p.name for p in fake.iterdir())
    fake_feats, real_feats = (_package_features([d / n for n in names], weights) for d in (fake, real))
    clean = CleanFID(weights).image_features
    ours = clean(torch.stack([(_as_tensor(fake / n) + 1).mul(127.5).round().to(torch.uint8) for n in names]))
    np.testing.assert_allclose(ours.numpy(), fake_feats, rtol=1e-5, atol=1e-5)
    metrics = ImageQualityMetrics(fid=False, kid=False, clean_fid=True)
    metrics.set_extractor(None, clean)
    for chunk in (names[:5], names[5:]):  # two batches of different sizes
        metrics.update(torch.stack([_as_tensor(fake / n) for n in chunk]),
                       torch.stack([_as_tensor(real / n) for n in chunk]))
    out = metrics.compute()
    assert out["clean_fid"].item() == pytest.approx(_frechet(fake_feats, real_feats), rel=1e-4) and "fid" not in out
    metrics.reset()  # the next pass keeps the real images' features: only its generated images are computed
    assert metrics.real_cached and int(metrics.clean_fid.real_features_num_samples) == len(names)


def test_a_test_run_reports_clean_fid_of_its_outputs_and_names_it(tmp_path, folders, cli_env):
    """``test --model.fid_protocol clean``: metrics.json's ``clean_fid`` equals the package's clean-FID of the
    outputs it wrote against the targets it wrote, and names its protocol and weights; no legacy FID is computed
    (``both`` adds it: the same metrics object, each FID its own features, see the test above)."""
    from conftest import write_folders

    _, _, weights = folders
    data = tmp_path / "pairs"
    write_folders(data, "train", [f"t{i}" for i in range(2)], size=(32, 32))
    write_folders(data, "test", [f"v{i}" for i in range(6)], size=(32, 32), seed=1)
    rep = tmp_path / "rep"
    args = ["test", "--model", "pix2pix_lit.models.Pix2Pix", "--model.netG", "unet", "--model.num_downs", "5",
            "--model.ngf", "8", "--model.ndf", "8", "--model.kid", "false", "--model.fid_protocol", "clean",
            "--model.clean_fid_weights", str(weights), "--model.inference_mode", "eval",
            "--data", "pix2pix_lit.data.PairedDataModule", "--data.root", str(data), "--data.layout", "folders",
            "--data.load_size", "32", "--data.crop_size", "32", "--data.num_workers", "0", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--test_report.output_dir", str(rep)]
    run_in_process(args, cli_env, tmp_path, check=True)
    report = json.loads((rep / "metrics.json").read_text())
    assert "clean_fid" in report["metrics"] and "fid" not in report["metrics"], report["metrics"]
    for kind in ("output", "target"):
        (tmp_path / kind).mkdir()
        for f in (rep / "images").glob(f"*_{kind}.png"):
            (tmp_path / kind / f.name.replace(f"_{kind}", "")).symlink_to(f)
    assert len(list((tmp_path / "output").iterdir())) == 6
    out, real = (_package_features(sorted((tmp_path / d).iterdir()), weights) for d in ("output", "target"))
    expected = _frechet(out, real)
    assert report["metrics"]["clean_fid"] == pytest.approx(expected, rel=1e-4) and expected > 0
    about = report["protocol"]["clean_fid"]
    assert about["weights"] == "my-inception.pt" and "PIL bicubic" in about["protocol"]
    assert "fid_weights" not in report["protocol"]


def test_fid_protocol_refusals_are_one_line(tmp_path):
    from pix2pix_lit.errors import ConfigError
    from pix2pix_lit.models import Pix2Pix

    with pytest.raises(ConfigError, match=r"model.fid_protocol='tf' is not known; choose one of: legacy, clean, both"):
        Pix2Pix(fid_protocol="tf")
    with pytest.raises(ConfigError, match=r"holds legacy FID statistics; clean-FID \(model.fid_protocol both\)"):
        Pix2Pix(fid_protocol="both", kid=False, fid_real_stats=str(tmp_path / "real.npz"))
    # MiFID divides the legacy FID: under clean alone it would be silently missing from the scores
    with pytest.raises(ConfigError, match=r"model.mifid divides the legacy FID .* model.fid_protocol both"):
        Pix2Pix(fid_protocol="clean", mifid=True)
    assert Pix2Pix(fid_protocol="both", mifid=True).evaluator.metrics["val"]["out"].mifid
