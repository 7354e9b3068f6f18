"""clean-FID (Parmar et al., CVPR 2022) as the ``clean-fid`` package computes it, offline: each image resized to
299x299 by PIL's bicubic filter on float pixels (no 8-bit rounding after the resize), features of NVIDIA's
TorchScript Inception (``inception-2015-12-05.pt``, the same TF weights as the legacy FID's, exported by
StyleGAN2-ADA), the Fréchet distance of their statistics. The package's own reading, resize, network wrapper
and statistics run here (``cleanfid.fid.get_files_features``, ``fid_from_feats``); only its download is
replaced: the TorchScript file is one users bring (it is not the torch-fidelity weights the legacy FID and
validation use, and no wheel ships it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from pix2pix_lit.errors import InceptionWeightsError
from pix2pix_lit.inception import default_cache_dir, weights_sha256

FILENAME = "inception-2015-12-05.pt"
URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
ENV = "PIX2PIX_LIT_CLEAN_FID_WEIGHTS"
PROTOCOL = ("clean-fid mode clean: PIL bicubic resize of float pixels to 299x299, NVIDIA's TorchScript "
            "Inception (inception-2015-12-05.pt), 2048-d pool features")


def find_clean_fid_weights(explicit: Optional[str] = None) -> Path:
    """The TorchScript Inception: ``explicit``, ``$PIX2PIX_LIT_CLEAN_FID_WEIGHTS``, where clean-fid downloads it
    (``/tmp``), or ``~/.cache/pix2pix-lit``; else a one-line error saying what to download and where."""
    explicit = explicit or os.environ.get(ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(f"clean-FID weights {path} do not exist; give NVIDIA's TorchScript {FILENAME}")
        return path
    for path in (Path(tempfile.gettempdir()) / FILENAME, default_cache_dir() / FILENAME):
        if path.is_file():
            return path
    raise InceptionWeightsError(
        f"clean-FID needs NVIDIA's TorchScript Inception {FILENAME} (95 MB, {URL}; not the torch-fidelity weights the "
        f"legacy FID uses), which is not here: download it where the internet is reachable and pass "
        f"--clean-fid-weights PATH (or set ${ENV}, or put it at {default_cache_dir() / FILENAME})")


class CleanFID:
    """clean-FID of file lists with the TorchScript network at ``weights``."""

    def __init__(self, weights: Path, batch_size: int = 16, device: Optional[torch.device] = None) -> None:
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        self.weights = Path(weights)
        self.resize = build_resizer("clean")  # the package's per-file resize, for image_features
        self.batch_size, self.device = batch_size, device or torch.device("cpu")
        # clean-fid's wrapper loads <folder>/inception-2015-12-05.pt: a file of another name is linked under it
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / FILENAME).symlink_to(self.weights.resolve())
            try:
                self.network = InceptionV3W(folder, download=False).to(self.device).eval()
            except (RuntimeError, ValueError, AttributeError) as e:
                reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
                raise InceptionWeightsError(f"{weights} is not NVIDIA's TorchScript Inception ({reason}); give "
                                            f"{FILENAME} from {URL}") from None

    @property
    def about(self) -> dict[str, str]:
        import cleanfid

        return {"protocol": PROTOCOL, "package": f"clean-fid {getattr(cleanfid, '__version__', '')}".strip(),
                "weights": self.weights.name, "weights_sha256": weights_sha256(self.weights)}

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of 8-bit RGB images (N, 3, H, W) as :meth:`features` gives of the same images saved as PNG:
        each resized by the package's own clean resizer (``cleanfid.resize.build_resizer``, what
        ``get_files_features`` runs per file), then the network (validation and test, ``model.fid_protocol``)."""
        arrays = [self.resize(x) for x in images.permute(0, 2, 3, 1).cpu().numpy()]  # HWC uint8 -> 299x299x3 float32
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        device = images.device
        if next(self.network.parameters()).device != device:
            self.network.to(device)
        return self.network(batch.to(device)).float()

    def features(self, files: Sequence[Path]):
        from cleanfid.fid import get_files_features

        return get_files_features([str(f) for f in files], self.network, num_workers=0, batch_size=self.batch_size,
                                  device=self.device, mode="clean", verbose=False)

    def __call__(self, fake_files: Sequence[Path], real_files: Sequence[Path]) -> float:
        from cleanfid.fid import fid_from_feats

        return float(fid_from_feats(self.features(fake_files), self.features(real_files)))
