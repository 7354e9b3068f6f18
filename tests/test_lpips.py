"""LPIPS on a backbone the user brings: equal to torchmetrics' own LPIPS built with the same backbone, refused in
one line without a right file, and in ``pix2pix-lit eval``. The backbones here are randomly initialised and saved
to a file (no ImageNet weights can be downloaded), which is exactly the loading path a real file takes."""

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pix2pix_lit.errors import ConfigError
from pix2pix_lit.evaluate import main as evaluate
from pix2pix_lit.lpips import LPIPS


def saved_backbone(tmp_path, builder: str, features_only: bool = False):
    torch.manual_seed(0)
    model = getattr(torchvision.models, builder)(weights=None)
    path = tmp_path / f"{builder}.pth"
    torch.save(model.features.state_dict() if features_only else model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("net,builder,features_only", [("alex", "alexnet", False), ("vgg", "vgg16", True)])
def test_lpips_equals_torchmetrics_with_the_same_backbone(tmp_path, monkeypatch, net, builder, features_only):
    model, path = saved_backbone(tmp_path, builder, features_only)
    gen = torch.Generator().manual_seed(1)
    fake, real = (torch.rand(3, 3, 64, 64, generator=gen) * 2 - 1 for _ in range(2))
    ours = LPIPS(str(path), net)
    ours.update(fake[:2], real[:2])
    ours.update(fake[2:], real[2:])  # a mean over images, whatever the batches
    # the reference: torchmetrics' public metric, its torchvision builder handing it the same backbone
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    monkeypatch.setattr(torchvision.models, builder, lambda weights=None: model)
    reference = LearnedPerceptualImagePatchSimilarity(net_type=net)
    assert float(ours.compute()) == pytest.approx(float(reference(fake, real)), rel=1e-5)
    assert float(ours.compute()) > 0


@pytest.mark.parametrize("net,builder,features_only", [("alex", "alexnet", False), ("vgg", "vgg16", True)])
def test_lpips_equals_the_official_lpips_package(tmp_path, net, builder, features_only):
    """An independent reference: Zhang's own ``lpips`` package (its scaling layer, unit normalisation, linear
    heads and spatial average), its backbone given the same file's tensors."""
    import warnings

    import lpips

    model, path = saved_backbone(tmp_path, builder, features_only)
    gen = torch.Generator().manual_seed(2)
    fake, real = (torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1 for _ in range(2))
    ours = LPIPS(str(path), net)
    ours.update(fake, real)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lpips asks torchvision with its old `pretrained` argument
        official = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    owner = {index: name for name, part in official.net.named_children() for index, _ in part.named_children()}
    features = model.features.state_dict()
    official.net.load_state_dict({f"{owner[k.split('.')[0]]}.{k}": v for k, v in features.items()
                                  if k.split(".")[0] in owner})
    with torch.no_grad():
        reference = official(fake, real, normalize=False).mean()
    assert float(ours.compute()) == pytest.approx(float(reference), rel=1e-5)


def test_lpips_without_a_right_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"--lpips_weights=.*none.pth does not exist; it must be torchvision's "
                                          r"ImageNet alexnet: .*download.pytorch.org/models/alexnet-owt-7be5be79.pth"):
        LPIPS(str(tmp_path / "none.pth"))
    _, vgg = saved_backbone(tmp_path, "vgg16", features_only=True)
    with pytest.raises(ConfigError, match=r"vgg16.pth is not alexnet: features.0.weight is \(64, 3, 3, 3\), "
                                          r"expected \(64, 3, 11, 11\)"):
        LPIPS(str(vgg), "alex")
    _, alex = saved_backbone(tmp_path, "alexnet")
    with pytest.raises(ConfigError, match="has sha256 .*, not the expected 0000000000000000"):
        LPIPS(str(alex), sha256="0" * 64)


def test_eval_reports_lpips_and_refuses_a_missing_backbone(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for folder in ("real", "same", "other"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        photo = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(photo).save(tmp_path / "real" / f"{i}.png")
        Image.fromarray(photo).save(tmp_path / "same" / f"{i}.png")
        Image.fromarray(255 - photo).save(tmp_path / "other" / f"{i}.png")
    _, alex = saved_backbone(tmp_path, "alexnet")
    scores = {}
    for fake in ("same", "other"):
        out = tmp_path / f"{fake}.json"
        assert evaluate([str(tmp_path / fake), str(tmp_path / "real"), "--no-fid", "--no-kid", "--lpips_weights",
                         str(alex), "--output", str(out)]) == 0
        result = json.loads(out.read_text())
        scores[fake] = result["metrics"]["lpips"]
        assert result["protocol"]["lpips"]["net"] == "alex" and len(result["protocol"]["lpips"]["backbone_sha256"]) == 64
    assert scores["same"] == pytest.approx(0, abs=1e-6) and scores["other"] > 0.01
    assert evaluate([str(tmp_path / "other"), str(tmp_path / "real"), "--no-fid", "--no-kid", "--lpips_weights",
                     str(tmp_path / "alexnet-missing.pth"), "--output", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pix2pix-lit eval: error: --lpips_weights=") and "alexnet-owt-7be5be79.pth" in err[-1]
    assert not (tmp_path / "none.json").exists()
