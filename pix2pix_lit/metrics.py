"""Image-quality metrics: FID/KID/MiFID on torch-fidelity's Inception features, SSIM and PSNR (torchmetrics).

The Inception network is a tool, not part of the model: it is kept out of the module's state_dict
(so out of checkpoints), runs in fp32 whatever the training precision, and its weights are found
offline (``pix2pix_lit/inception.py``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

import torch
import torch.nn as nn
from torchmetrics import MeanAbsoluteError
from torchmetrics.image import (
    FrechetInceptionDistance,
    KernelInceptionDistance,
    PeakSignalNoiseRatio,
    StructuralSimilarityIndexMeasure,
)
from torchmetrics.utilities.data import dim_zero_cat

from pix2pix_lit.data.io import to_uint8
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.fid_stats import RealStats, check_image_size
from pix2pix_lit.inception import (  # noqa: F401 - the weights' finding and loading, re-exported
    CONVERTED_FILENAME,
    FEATURE_DIM,
    HUB_FILENAME,
    WEIGHTS_ENV,
    convert_fid_helper_weights,
    default_cache_dir,
    fid_helper_file,
    fidelity_skeleton,
    find_inception_weights,
    load_inception,
)
from pix2pix_lit.precision import autocast_off

log = logging.getLogger(__name__)

# What FID/KID features are, recorded with every score and every stored statistics file
FID_FEATURES = "torch-fidelity InceptionV3 (TF inception-2015-12-05), 2048-d pool, 8-bit images"

def kid_subset_for(n: int, kid_subset_size: int) -> int:
    """The KID subset size for ``n`` images: ``kid_subset_size`` when there are more images than that,
    else half of them (at least 2), so that random subsets differ; all of them below 4 images."""
    if n > kid_subset_size:
        return kid_subset_size
    return n // 2 if n >= 4 else n


class _PrecomputedFeatures(nn.Module):
    """Lets torchmetrics' FID/KID take 2048-d features computed once for both (Inception runs once per image)."""

    num_features = FEATURE_DIM

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _is_zero_broadcast(t: torch.Tensor) -> bool:
    return t.numel() > 1 and all(step == 0 for step in t.stride())


class CompactFID(FrechetInceptionDistance):
    """torchmetrics' FID whose feature sums hold no memory while they are zero.

    An FID keeps four float64 sums, two of them 2048x2048 (32 MB each), and torchmetrics keeps a zero copy
    of each as its reset value: 256 MB for a model's val and test metrics, nearly all zeros through
    training (the test metrics are never updated during ``fit``, the generated-image sums only during a
    pass). Here a zero sum is one zero broadcast to its shape, made a real tensor by the first update that
    adds to it (across processes torchmetrics' gather sends each sum contiguous: real zeros from a process that
    saw no images). The sums, means and covariances are torchmetrics' own; the distance is :func:`frechet_distance`'s
    (the same value, 1.2-2.5x sooner on a CPU: experiments/fid_compute.py).
    """

    _SUMS = {"real": ("real_features_sum", "real_features_cov_sum"), "fake": ("fake_features_sum", "fake_features_cov_sum")}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for names in self._SUMS.values():
            for name in names:
                self._defaults[name] = self._zero_broadcast(self._defaults[name])
        self._release_zero_sums()

    @staticmethod
    def _zero_broadcast(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=t.dtype, device=t.device).expand(t.shape)

    def _release_zero_sums(self) -> None:
        for kind, names in self._SUMS.items():
            if int(getattr(self, f"{kind}_features_num_samples")) == 0:
                for name in names:
                    setattr(self, name, self._zero_broadcast(getattr(self, name)))

    def _materialize(self, kinds=("real", "fake")) -> None:
        for kind in kinds:
            for name in self._SUMS[kind]:
                t = getattr(self, name)
                if _is_zero_broadcast(t):
                    setattr(self, name, torch.zeros(t.shape, dtype=t.dtype, device=t.device))

    def reset(self) -> None:
        super().reset()
        self._release_zero_sums()

    def update(self, imgs: torch.Tensor, real: bool) -> None:
        self._materialize(("real",) if real else ("fake",))  # FID adds in place
        super().update(imgs, real)

    def compute(self) -> torch.Tensor:
        # torchmetrics' own means and covariances from the sums; the distance by frechet_distance (why: there)
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            raise RuntimeError("More than one sample is required for both the real and fake distributed to compute FID")
        stats = []
        for kind in ("real", "fake"):
            n = getattr(self, f"{kind}_features_num_samples")
            mean = getattr(self, f"{kind}_features_sum") / n
            stats += [mean, (getattr(self, f"{kind}_features_cov_sum") - n * torch.outer(mean, mean)) / (n - 1)]
        return frechet_distance(*stats).to(self.orig_dtype)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), the last term from symmetric eigenproblems.

    torchmetrics (and scipy's sqrtm in the TF/pytorch-fid code) take tr sqrt(S1 S2) from the general,
    non-symmetric 2048 x 2048 matrix S1 S2: ~3.5 s on one CPU core per score, and for a set of fewer than 2048
    images (most val sets) the round-off in its zero eigenvalues adds 1e-7 to 1e-5 of the score. Here S1 = U U^T
    on S1's range (U = V sqrt(w), V, w its eigenvectors and values above the round-off), so S1 S2 has the
    eigenvalues of the symmetric U^T S2 U: one 2048 eigh and one of S1's rank (<= images - 1): ~1.4 s, and
    equal to the exact value from the features themselves (tests/test_metrics.py; experiments/fid_compute.py)."""
    w, v = torch.linalg.eigh(sigma1)
    kept = w > w.max() * w.numel() * torch.finfo(w.dtype).eps  # numpy's matrix_rank tolerance
    u = v[:, kept] * w[kept].sqrt()
    tr_sqrt = torch.linalg.eigvalsh(u.T @ sigma2 @ u).clamp(min=0).sqrt().sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt


class OrderFreeKID(KernelInceptionDistance):
    """KID whose random subsets do not depend on the order the features arrived in.

    The features gathered from several processes come rank by rank, not image by image; sorted into
    one canonical order before the subsets are drawn, KID equals a 1-process run's.
    """

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        # runs after torchmetrics has gathered every process's features; they are restored afterwards
        for name in ("real_features", "fake_features"):
            feats = dim_zero_cat(getattr(self, name))
            order = torch.argsort(feats[:, 0], stable=True)
            order = order[torch.argsort(feats[order].sum(1), stable=True)]  # by sum, ties by the first feature
            setattr(self, name, [feats[order]])
        return super().compute()


# Images per forward of the FID Inception. On the CPU (fp32, NHWC, one process): 20.9 img/s one at a time,
# 24.6 in pairs, 26.3 by 4 (+88 MB peak), 27.0 by 8 (+202 MB): 4 takes most of the gain for little memory.
INCEPTION_BATCH = 4


def memorization_distance(fake_features: torch.Tensor, real_features: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """MiFID's memorization term as Kaggle computes it: for each generated image the smallest cosine distance
    ``1 - |cos|`` to any real image, averaged; 1 when that mean is not below ``eps`` (no memorization).

    torchmetrics' MiFID takes the minimum the other way round (for each real image over the generated ones),
    which is not the Kaggle metric; its FID part is used as is.
    """
    f = fake_features.double()
    r = real_features.double()
    f = f[f.sum(1) != 0]
    r = r[r.sum(1) != 0]
    f = f / f.norm(dim=1, keepdim=True)
    r = r / r.norm(dim=1, keepdim=True)
    d = (1.0 - (f @ r.T).abs()).min(dim=1).values.mean()
    return d if d < eps else torch.ones_like(d)


class ImageQualityMetrics(nn.Module):
    """FID, KID, SSIM and PSNR over a whole split; states sync across processes (torchmetrics).

    ``update`` takes images in [-1, 1]; SSIM/PSNR use them mapped to [0, 1] (``data_range=1``, PSNR
    averaged per image), FID/KID the Inception features of their 8-bit versions (as if saved to PNG).
    Real-image features are kept across :meth:`reset` (``reset_real_features=False``) and computed
    only while :attr:`real_cached` is False: once per real set, not at every validation. The set is
    named by :meth:`use_real_set` (a fingerprint of the files and how they are read); another set
    makes them computed anew.

    KID is the mean over random subsets of ``kid_subset_size`` images; with fewer images, subsets of
    half the images (so the subsets differ and ``kid_std`` measures a spread), and with fewer than 4
    images KID is the whole-set estimate with no ``kid_std``.

    Unpaired models feed the two sets apart: :meth:`update_fake`, :meth:`update_real`, and
    :meth:`update_pairs` where a generated image has a true counterpart (SSIM/PSNR/L1 are reported only
    then). ``mifid``: also MiFID against the *training* images, ``mifid_train`` (Kaggle's memorization-informed
    FID: FID / :func:`memorization_distance` of the generated images to the images the generator was trained on,
    which :meth:`set_training_reference` gives; the real set of the split would never show memorization).
    ``clean_fid``: also clean-FID (``clean_fid``) of the same 8-bit images with the features
    :meth:`set_extractor`'s ``clean`` callable gives (``pix2pix_lit.clean_fid``: its resize and network); ``fid``
    off and ``clean_fid`` on computes no legacy Inception features at all.
    """

    def __init__(self, fid: bool = True, kid: bool = True, kid_subset_size: int = 1000, kid_subsets: int = 100,
                 mifid: bool = False, mifid_eps: float = 0.1, clean_fid: bool = False):
        super().__init__()
        self.mifid, self.mifid_eps = mifid and fid, mifid_eps
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.l1 = MeanAbsoluteError()  # on [-1, 1] images: the pix2pix L1 term without lambda
        self.fid = CompactFID(feature=_PrecomputedFeatures(), reset_real_features=False) if fid else None
        self.clean_fid = CompactFID(feature=_PrecomputedFeatures(), reset_real_features=False) if clean_fid else None
        self.kid = None
        if kid:
            with warnings.catch_warnings():  # "will save all extracted features": 2048 floats an image, as FID needs
                warnings.filterwarnings("ignore", message=".*will save all extracted features")
                self.kid = OrderFreeKID(
                    feature=_PrecomputedFeatures(), reset_real_features=False, subset_size=kid_subset_size,
                    subsets=kid_subsets,
                )
        self.kid_subset_size = kid_subset_size
        self.pairs_seen = False  # SSIM/PSNR/L1 are reported once a pair was seen (unpaired data has none)
        self.num_fake = 0
        self.real_cached = False
        self.real_key: Optional[str] = None
        self.real_stats: Optional[tuple[RealStats, str]] = None  # stored statistics and their file (use_real_stats)
        # MiFID's reference: Inception features of the training images (not a state: kept across passes)
        self.training_features: Optional[torch.Tensor] = None
        self.training_key: Optional[str] = None
        self._extractor: list[nn.Module] = []  # a list, so the network is not a submodule (not in state_dict)
        self._clean_extractor: list = []  # 8-bit images -> clean-FID features (set_extractor's clean)
        # images waiting for the Inception, real and generated apart: it runs on INCEPTION_BATCH at a time
        # whatever the loader's batch size (paper-mode evaluation feeds one image per step)
        self._pending: dict[bool, list[torch.Tensor]] = {False: [], True: []}

    def use_real_stats(self, stats: RealStats, path: str, holds_them: bool) -> None:
        """FID's real side from stored statistics (:mod:`pix2pix_lit.fid_stats`): no real image goes through the
        Inception. ``holds_them``: this process holds the sums; the others hold zeros, so the sums torchmetrics adds
        across processes are the file's (rank 0 holds them)."""
        if self.fid is None or self.kid is not None or self.clean_fid is not None:
            raise ConfigError("stored FID statistics give FID's real side only: they need FID on, KID off and the "
                              "legacy FID protocol")
        total, outer, n = stats.feature_sums() if holds_them else (None, None, 0)
        fid, device = self.fid, self.fid.real_features_num_samples.device
        if holds_them:
            fid.real_features_sum = total.to(device)
            fid.real_features_cov_sum = outer.to(device)
        fid.real_features_num_samples = torch.tensor(n, dtype=fid.real_features_num_samples.dtype, device=device)
        fid._release_zero_sums()
        self._pending[True].clear()
        self.real_stats, self.real_key, self.real_cached = (stats, path), f"stats:{path}", True

    def real_feature_sums(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """FID's sums over the real images given so far (features, their outer products) and their count."""
        self._flush(real=True)
        self.fid._materialize(("real",))
        return self.fid.real_features_sum, self.fid.real_features_cov_sum, int(self.fid.real_features_num_samples)

    def use_real_set(self, key: str) -> None:
        """Name the real images of the coming pass; cached real features of another set are dropped."""
        if self.real_stats is not None:
            return  # the stored statistics are the real side of every pass
        if key != self.real_key:
            if self.real_cached:
                log.info("the evaluated real images changed: computing their Inception features anew")
            self.reset_real()
            self.real_key = key

    @property
    def needs_inception(self) -> bool:
        """The legacy FID/KID Inception is needed (``load_inception``)."""
        return self.fid is not None or self.kid is not None

    @property
    def needs_features(self) -> bool:
        return self.needs_inception or self.clean_fid is not None

    def set_extractor(self, extractor: Optional[nn.Module], clean=None) -> None:
        """The feature network (``load_inception``) and, for clean-FID, a callable of 8-bit images to its features
        (``CleanFID.image_features``); ``None`` lets go of them between passes."""
        self._extractor[:] = [extractor] if extractor is not None else []
        self._clean_extractor[:] = [clean] if clean is not None else []

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """2048-d Inception features of images in [-1, 1], computed in fp32 outside autocast."""
        if not self._extractor:
            raise RuntimeError("ImageQualityMetrics.set_extractor() was not called before FID/KID updates")
        net = self._extractor[0]
        # on the CPU the Inception runs in NHWC: oneDNN's fp32 convolutions are ~40% faster so
        # (experiments/RESULTS.md, validation); the features equal NCHW's to float rounding
        fmt = torch.channels_last if images.device.type == "cpu" else torch.contiguous_format
        weight = next(net.parameters())
        if weight.device != images.device or not weight.is_contiguous(memory_format=fmt):
            net.to(images.device, memory_format=fmt)
        u8 = to_uint8(images)
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        elif u8.shape[1] == 4:
            u8 = u8[:, :3]
        with autocast_off(images.device):
            return net(u8.contiguous(memory_format=fmt))[0].float()

    @torch.no_grad()
    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        # metrics are computed in fp32 whatever the training precision (SSIM's convs under bf16
        # autocast would be off by percents)
        with autocast_off(fake.device):
            self._update(fake, real)

    def _update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        self._update_pairs(fake, real)
        self._update_set(fake, real=False)
        self._update_set(real, real=True)

    @staticmethod
    def _clean(x: torch.Tensor) -> torch.Tensor:
        return x.detach().float().clamp(-1, 1).contiguous()

    def _update_pairs(self, fake: torch.Tensor, target: torch.Tensor) -> None:
        fake, target = self._clean(fake), self._clean(target)
        fake01, target01 = (fake + 1) / 2, (target + 1) / 2
        self.ssim.update(fake01, target01)
        self.psnr.update(fake01, target01)
        self.l1.update(fake, target)
        self.pairs_seen = True

    def _update_set(self, images: torch.Tensor, real: bool) -> None:
        """Generated (``real=False``) or real images for FID/KID (reals only until cached), queued for the
        Inception until INCEPTION_BATCH of one size are there (all are flushed before :meth:`compute`)."""
        if not self.needs_features or (real and self.real_cached):
            return
        if not real and self.real_stats is not None and self.num_fake == 0:
            check_image_size(self.real_stats[0], self.real_stats[1], images.shape[-1], images.shape[-2])
        pending = self._pending[real]
        if pending and pending[0].shape[1:] != images.shape[1:]:
            self._flush(real)
        pending.append(self._clean(images))
        if not real:
            self.num_fake += images.shape[0]
        if sum(x.shape[0] for x in pending) >= INCEPTION_BATCH:
            self._flush(real)

    def _flush(self, real: bool) -> None:
        pending = self._pending[real]
        if not pending:
            return
        images = torch.cat(pending)
        pending.clear()
        if self.needs_inception:
            feats = self.features(images)
            for metric in (self.fid, self.kid):
                if metric is not None:
                    metric.update(feats, real=real)
        if self.clean_fid is not None:
            if not self._clean_extractor:
                raise RuntimeError("ImageQualityMetrics.set_extractor(clean=...) was not called before clean-FID updates")
            u8 = to_uint8(images)
            u8 = u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8[:, :3]
            self.clean_fid.update(self._clean_extractor[0](u8), real=real)

    @torch.no_grad()
    def update_pairs(self, fake: torch.Tensor, target: torch.Tensor) -> None:
        """SSIM/PSNR/L1 of generated images against their true counterparts."""
        with autocast_off(fake.device):
            self._update_pairs(fake, target)

    @torch.no_grad()
    def update_fake(self, fake: torch.Tensor) -> None:
        with autocast_off(fake.device):
            self._update_set(fake, real=False)

    @torch.no_grad()
    def update_real(self, real: torch.Tensor) -> None:
        with autocast_off(real.device):
            self._update_set(real, real=True)

    @torch.no_grad()
    def compute(self) -> dict[str, torch.Tensor]:
        self._flush(real=False)
        self._flush(real=True)
        out = {}
        if self.pairs_seen:
            out.update(ssim=self.ssim.compute(), psnr=self.psnr.compute(), l1=self.l1.compute())
        if self.needs_features and self.num_fake < 2 and not torch.distributed.is_initialized():
            raise ConfigError("FID/KID need at least 2 evaluation images; add images or set model.fid=false model.kid=false")
        if self.fid is not None:
            out["fid"] = self.fid.compute()
            if self.mifid:
                if self.training_features is None:
                    raise ConfigError("MiFID needs the training images' features (set_training_reference); "
                                      "set model.mifid: false or use a data module with training_references()")
                # the features of every process: torchmetrics gathers the KID/FID states only inside compute
                fake = self._gathered(self.kid.fake_features if self.kid is not None else None, "fake")
                distance = memorization_distance(fake, self.training_features.to(fake.device), self.mifid_eps)
                out["mifid_train"] = out["fid"] / (distance + 1e-15).to(out["fid"])
        if self.clean_fid is not None:
            out["clean_fid"] = self.clean_fid.compute()
        if self.kid is not None:
            # KID's list states sync element by element (dist_reduce_fx=None): processes that saw a
            # different number of batches would issue different numbers of collectives and hang.
            # One tensor per process makes the sync line up.
            for name in ("real_features", "fake_features"):
                feats = getattr(self.kid, name)
                if len(feats) > 1:
                    setattr(self.kid, name, [dim_zero_cat(feats)])
            with self.kid.sync_context():  # sample counts over all processes
                n = min(dim_zero_cat(self.kid.real_features).shape[0], dim_zero_cat(self.kid.fake_features).shape[0])
            subset = kid_subset_for(n, self.kid_subset_size)
            if subset != self.kid.subset_size:
                log.info("KID: %d samples, not more than kid_subset_size=%d: using subsets of %d", n,
                         self.kid_subset_size, subset)
                self.kid.subset_size = subset
            # KID draws random subsets: a fixed seed makes it repeatable and leaves the training RNG alone
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                out["kid_mean"], kid_std = self.kid.compute()
            if subset < n:  # with subsets of all the images every subset is the same: no spread to report
                out["kid_std"] = kid_std
        if self.needs_features:
            self.real_cached = True
        return out

    def _gathered(self, feats: Optional[list], which: str) -> torch.Tensor:
        if feats is None:
            raise ConfigError("model.mifid needs model.kid (MiFID reads the stored Inception features KID keeps)")
        local = dim_zero_cat(feats) if isinstance(feats, list) else feats
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from torchmetrics.utilities.distributed import gather_all_tensors

            local = torch.cat(gather_all_tensors(local))
        return local

    @torch.no_grad()
    def dataset_features(self, dataset, device: torch.device, rank: int = 0, world: int = 1) -> torch.Tensor:
        """:meth:`features` of every ``image`` of ``dataset`` (each of ``world`` processes a share, gathered)."""
        share = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
        loader = torch.utils.data.DataLoader(share, batch_size=8, num_workers=0)
        feats = [self.features(batch["image"].to(device)) for batch in loader]
        return self._gathered(torch.cat(feats) if feats else torch.zeros(0, 2048, device=device), "training")

    @torch.no_grad()
    def set_training_reference(self, features: torch.Tensor, key: str) -> None:
        """The Inception features of the training images MiFID compares the generated ones with (``key``: a
        fingerprint of those images, see :attr:`training_key`)."""
        self.training_features, self.training_key = features.detach().float().cpu(), key

    def reset(self) -> None:
        for m in (self.ssim, self.psnr, self.l1, self.fid, self.kid, self.clean_fid):
            if m is not None:
                m.reset()
        self.pairs_seen = False
        self.num_fake = 0
        self._pending[False].clear()

    def reset_real(self) -> None:
        """Forget the cached real-image features (e.g. when the real split changes)."""
        self._pending[True].clear()
        for m in (self.fid, self.kid, self.clean_fid):
            if m is not None:
                m.reset_real_features = True
                m.reset()
                m.reset_real_features = False
        self.real_cached = False
