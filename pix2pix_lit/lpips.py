"""LPIPS (Zhang et al., 2018) with a backbone from a local file: torchmetrics' implementation and linear heads.

torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` always builds its backbone from torchvision's ImageNet
weights, downloaded at construction, which no machine here can do. :class:`LPIPS` builds torchmetrics' own LPIPS
network with a random backbone (``pnet_rand``: nothing downloaded; the small linear heads ship inside the
torchmetrics package and are loaded as usual), loads the user's torchvision AlexNet or VGG-16 state dict into that
backbone, checked (:mod:`pix2pix_lit.weights`), and scores with torchmetrics' update and compute. Without the
file there is no LPIPS, never a number from random weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Optional

import torch
from torchmetrics import Metric

from pix2pix_lit.errors import check_choice
from pix2pix_lit.precision import autocast_off
from pix2pix_lit.weights import load_features

LpipsNet = Literal["alex", "vgg"]
# torchmetrics' name of each backbone -> torchvision's builder and the file torchvision itself would download
BACKBONES = {"alex": ("alexnet", "download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
             "vgg": ("vgg16", "download.pytorch.org/models/vgg16-397923af.pth")}


def weights_source(net: str) -> str:
    builder, url = BACKBONES[net]
    return (f"torchvision's ImageNet {builder}: torchvision.models.{builder}(weights='IMAGENET1K_V1').state_dict() "
            f"saved with torch.save on a machine with internet (the file torchvision fetches is {url})")


class LPIPS(Metric):
    """Mean LPIPS between fake and real images in [-1, 1] (lower is closer), on a backbone from ``weights``."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, weights: str, net: LpipsNet = "alex", sha256: Optional[str] = None) -> None:
        super().__init__()
        import torchvision
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        check_choice("--lpips_net", net, tuple(BACKBONES))
        builder, _ = BACKBONES[net]
        features = getattr(torchvision.models, builder)(weights=None).features
        state = load_features(weights, features.state_dict(), "--lpips_weights", builder, weights_source(net), sha256)
        self.net = _NoTrainLpips(pretrained=True, net=net, pnet_rand=True)  # the heads from the package
        # torchmetrics' backbone holds torchvision's feature layers under their indices, grouped in slices
        owner = {index: slice_name for slice_name, part in self.net.net.named_children()
                 for index, _ in part.named_children()}
        self.net.net.load_state_dict({f"{owner[k.split('.')[0]]}.{k}": v for k, v in state.items()
                                      if k.split(".")[0] in owner})
        # the backbone's digest for the report (read once: checked against ``sha256`` above when given)
        self.net_name = net
        self.weights_sha256 = sha256.lower() if sha256 else hashlib.sha256(Path(weights).read_bytes()).hexdigest()
        self.add_state("sum_scores", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        from torchmetrics.functional.image.lpips import _lpips_update

        with autocast_off(fake.device):  # fp32 whatever the caller's precision, as every score here
            scores = _lpips_update(fake.float().clamp(-1, 1), real.float().clamp(-1, 1), self.net, normalize=False)
        self.sum_scores += scores.double().sum()
        self.total += scores.numel()

    def compute(self) -> torch.Tensor:
        return (self.sum_scores / self.total).float()
