"""Segmentation scores: the scores against a hand-computed confusion matrix (and torchmetrics), Cityscapes' train ids
against the official table, label maps only ever resized nearest, a torchvision segmenter loaded from a file,
`eval --labels` and what it refuses, and a Segmenter checkpoint resuming exactly."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from pix2pix_lit.data import SyntheticLabelDataModule
from pix2pix_lit.data.labels import CITYSCAPES, CITYSCAPES_TRAIN_CLASSES, CITYSCAPES_TRAIN_IDS
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.evaluate import main as eval_main
from pix2pix_lit.models import Segmenter
from pix2pix_lit.models.segmenter import load_scorer
from pix2pix_lit.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationScores,
    build_torchvision,
    map_classes,
    read_label_classes,
    scores_from_confmat,
)

from conftest import quiet_trainer, scored_folders, step_at_start


def test_scores_equal_a_hand_computed_confusion_matrix():
    # 4 classes; 255 ignored; class 3 is only predicted (never labelled), no class is absent from both
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 255, 255, 0]])
    preds = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 0, 3, 0]])
    # rows labels, columns predictions, the two ignored pixels left out:
    #   0: [3, 1, 0, 0]   1: [0, 1, 1, 0]   2: [0, 0, 1, 1]   3: [0, 0, 0, 0]
    confmat = np.array([[3, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], float)
    tp = np.diag(confmat)
    iou = tp / (confmat.sum(0) + confmat.sum(1) - tp)  # [3/4, 1/3, 1/3, 0]
    scores = SegmentationScores(4)
    scores.update(preds[:, :5], target[:, :5])  # two updates accumulate
    scores.update(preds[:, 5:], target[:, 5:])
    out = scores.compute()
    assert torch.equal(scores.confmat, torch.tensor(confmat, dtype=torch.long))
    assert out["iou"].tolist() == pytest.approx(iou.tolist())
    assert float(out["miou"]) == pytest.approx(iou.mean())  # class 3 was predicted: its IoU 0 counts
    assert float(out["pixel_acc"]) == pytest.approx(5 / 8)
    assert float(out["class_acc"]) == pytest.approx(np.mean([3 / 4, 1 / 2, 1 / 2]))  # over the labelled classes
    # torchmetrics' own mIoU and pixel accuracy agree (its macro accuracy would count class 3 as 0: not used)
    assert float(out["miou"]) == pytest.approx(float(MulticlassJaccardIndex(4, ignore_index=255)(preds, target)))
    micro = MulticlassAccuracy(4, average="micro", ignore_index=255)(preds, target)
    assert float(out["pixel_acc"]) == pytest.approx(float(micro))


def test_a_class_neither_labelled_nor_predicted_is_left_out_of_the_mean():
    scores = SegmentationScores(3)
    scores.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
    out = scores.compute()
    assert torch.isnan(out["iou"][2]) and float(out["miou"]) == pytest.approx((1 / 2 + 1 / 2) / 2)


# cityscapesScripts/helpers/labels.py: (name, id, trainId) of every label with an id in 0..33
OFFICIAL_CITYSCAPES = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]


def test_cityscapes_train_ids_are_the_official_table():
    assert [name for name, _ in CITYSCAPES] == [name for name, _, _ in OFFICIAL_CITYSCAPES]
    assert list(CITYSCAPES_TRAIN_IDS) == [t for _, _, t in OFFICIAL_CITYSCAPES]
    by_train_id = sorted((t, name) for name, _, t in OFFICIAL_CITYSCAPES if t != 255)
    assert list(CITYSCAPES_TRAIN_CLASSES) == [name for _, name in by_train_id]
    ids = torch.tensor([[7, 26, 33, 0, 9, 255, 34]])
    assert map_classes(ids, "cityscapes_train_ids").tolist() == [[0, 13, 18, 255, 255, 255, 255]]
    assert map_classes(ids, None).tolist() == ids.tolist()


def _scorer(num_classes, mapping=None):
    from pix2pix_lit.segmentation import Scorer

    return Scorer(net=None, num_classes=num_classes, class_mapping=mapping, class_names=[])


def test_label_maps_are_only_ever_resized_nearest(tmp_path):
    ids = np.zeros((9, 9), np.uint8)
    ids[::2, ::2] = 4  # a checkerboard of 0 and 4: any interpolation makes 1, 2 or 3
    Image.fromarray(ids, "L").save(tmp_path / "a.png")
    out = read_label_classes(tmp_path / "a.png", _scorer(5), "ids", (14, 6))
    expected = np.asarray(Image.fromarray(ids, "L").resize((14, 6), Image.Resampling.NEAREST))
    assert out.shape == (6, 14) and set(out.unique().tolist()) <= {0, 4}
    assert np.array_equal(out.numpy(), expected)
    # ADE20K's storage: 0 is unlabelled, classes stored + 1
    Image.fromarray(np.array([[0, 1, 5]], np.uint8), "L").save(tmp_path / "b.png")
    assert read_label_classes(tmp_path / "b.png", _scorer(5), "ade20k", None).tolist() == [[255, 0, 4]]


def test_an_id_the_segmenter_does_not_know_names_file_and_pixel(tmp_path):
    Image.fromarray(np.array([[0, 1], [7, 0]], np.uint8), "L").save(tmp_path / "a.png")
    with pytest.raises(Exception, match=r"a\.png: class 7 at pixel \(x=0, y=1\) is not one of the segmenter's 5"):
        read_label_classes(tmp_path / "a.png", _scorer(5), "ids", None)


def test_a_torchvision_segmenter_loads_from_a_local_state_dict(tmp_path):
    torch.manual_seed(0)
    model = build_torchvision("lraspp_mobilenet_v3_large", 7).eval()
    torch.save(model.state_dict(), tmp_path / "lraspp.pth")
    scorer = load_scorer("torchvision:lraspp_mobilenet_v3_large", str(tmp_path / "lraspp.pth"))
    assert scorer.num_classes == 7 and scorer.class_names[0] == "class 0" and len(scorer.about["weights_sha256"]) == 64
    images = torch.rand(2, 3, 40, 48) * 2 - 1
    by_hand = ((images + 1) / 2 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(scorer.net.predict(images), model(by_hand)["out"].argmax(1))
    # refused in one line: no weights, a file of another network
    with pytest.raises(ConfigError, match="needs its weights: pass --segmenter_weights FILE"):
        load_scorer("torchvision:lraspp_mobilenet_v3_large")
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="is not a torchvision lraspp_mobilenet_v3_large state dict"):
        load_scorer("torchvision:lraspp_mobilenet_v3_large", str(tmp_path / "other.pth"))
    with pytest.raises(ConfigError, match="not known; choose one of"):
        load_scorer("torchvision:nonet", str(tmp_path / "other.pth"))


def _tiny_segmenter_data(root, **kw):
    return SyntheticLabelDataModule(str(root), **{**dict(num_train=6, num_val=2, num_test=2, image_size=40, load_size=40,
                                                         crop_size=32, batch_size=2, num_workers=0), **kw})


class _StopAfterFirstEpoch(Callback):
    """An interruption: the same run (the poly schedule spans its 2 epochs) stops after epoch 0, as if killed."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _train_segmenter(ckpt_dir, data_dir, interrupted=False, ckpt_path=None, seed=0):
    ckpt, start = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0), step_at_start()
    callbacks = [_StopAfterFirstEpoch(), ckpt, start] if interrupted else [ckpt, start]
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=callbacks, limit_val_batches=0,
                            deterministic=True)
    trainer.step_at_start = start
    torch.manual_seed(seed)  # a resumed fit is seeded otherwise: only its checkpoint can make it equal
    # DeepLabV3: its head's dropout draws from the global RNG, which the checkpoint must carry
    model = Segmenter(arch="deeplabv3_resnet50", aux_loss=True, label_nc=5)
    trainer.fit(model, _tiny_segmenter_data(data_dir), ckpt_path=ckpt_path)
    return model, trainer


def test_a_segmenter_checkpoint_resumes_exactly(tmp_path):
    straight, t1 = _train_segmenter(tmp_path / "a", tmp_path / "data")
    _, stopped = _train_segmenter(tmp_path / "b", tmp_path / "data", interrupted=True)
    resumed, t2 = _train_segmenter(tmp_path / "b", tmp_path / "data", ckpt_path="last", seed=1)
    assert stopped.global_step == 3 and t2.step_at_start.step == 3
    assert t1.global_step == t2.global_step == 6
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k  # batch-norm statistics and the poly learning rate's steps included
    torch.manual_seed(0)
    start = Segmenter(arch="deeplabv3_resnet50", aux_loss=True, label_nc=5).state_dict()
    assert not torch.equal(straight.state_dict()["net.model.classifier.4.weight"], start["net.model.classifier.4.weight"])


def test_segmenter_options_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="use a data module of label maps"):
        Segmenter(label_nc=0)
    with pytest.raises(ConfigError, match="has no auxiliary classifier"):
        Segmenter(arch="lraspp_mobilenet_v3_large", aux_loss=True, label_nc=5)
    with pytest.raises(ConfigError, match="maps Cityscapes' 34 label ids"):
        Segmenter(arch="lraspp_mobilenet_v3_large", class_mapping="cityscapes_train_ids", label_nc=5)
    with pytest.raises(ConfigError, match="model.arch='unet' is not known"):
        Segmenter(arch="unet", label_nc=5)


def test_eval_labels_refusals_are_one_line(tmp_path, capsys):
    (tmp_path / "fake").mkdir()
    (tmp_path / "labels").mkdir()
    cases = [
        (["--labels", str(tmp_path / "labels")], "--labels needs --segmenter"),
        (["--segmenter", "x.ckpt"], "pass --labels LABEL_DIR too"),
        (["--labels", str(tmp_path / "labels"), "--segmenter", str(tmp_path / "none.ckpt")], "none.ckpt does not exist"),
        (["--labels", str(tmp_path / "nothere"), "--segmenter", "x.ckpt"], "is not a folder"),
        ([], "give REAL_DIR"),
    ]
    for args, message in cases:
        assert eval_main([str(tmp_path / "fake"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "pix2pix_lit.models.Pix2Pix"}}, tmp_path / "g.ckpt")
    assert eval_main([str(tmp_path / "fake"), "--labels", str(tmp_path / "labels"), "--segmenter",
                      str(tmp_path / "g.ckpt")]) == 2
    assert "is not a Segmenter checkpoint" in capsys.readouterr().err


def test_eval_scores_a_folder_against_label_maps_with_a_torchvision_segmenter(tmp_path, capsys):
    scored_folders(tmp_path, classes=3, n=3, fake_hw=(24, 32), label_hw=(48, 64), fake_suffix="_fake.png")
    out = tmp_path / "scores.json"
    code = eval_main([str(tmp_path / "fake"), "--labels", str(tmp_path / "labels"), "--segmenter",
                      "torchvision:lraspp_mobilenet_v3_large", "--segmenter_weights", str(tmp_path / "seg.pth"),
                      "--fake-suffix", "_fake.png", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"miou", "pixel_acc", "class_acc"} and result["num_labelled_images"] == 3
    assert set(result["per_class_iou"]) == {"class 0", "class 1", "class 2"}
    protocol = result["protocol"]["segmentation"]
    assert protocol["resolution"] == "each label map's own" and protocol["ignore_index"] == 255
    assert protocol["segmenter"] == "torchvision:lraspp_mobilenet_v3_large"
    # by hand: each 32x24 image resized bicubic to its 64x48 label map, segmented, one confusion matrix
    scorer = load_scorer("torchvision:lraspp_mobilenet_v3_large", str(tmp_path / "seg.pth"))
    confmat = torch.zeros(3, 3)
    for i in range(3):
        img = Image.open(tmp_path / "fake" / f"{i}_fake.png").resize((64, 48), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float()[None] / 127.5 - 1
        pred = scorer.net.predict(x)[0]
        truth = torch.from_numpy(np.asarray(Image.open(tmp_path / "labels" / f"{i}.png"))).long()
        confmat += torch.bincount(truth.flatten() * 3 + pred.flatten(), minlength=9).view(3, 3)
    assert result["metrics"]["pixel_acc"] == pytest.approx(float(confmat.diag().sum() / confmat.sum()), rel=1e-6)


def test_the_segmenter_scores_images_as_saved_and_in_fp32_whatever_the_trainers_precision():
    """In-training ``val/miou`` must be what ``eval --segmenter`` gives for the same outputs: the segmenter sees the
    images rounded to 8 bits (as read back from the PNGs) and runs outside the trainer's autocast."""
    from pix2pix_lit.data.io import to_uint8
    from pix2pix_lit.segmentation import SegmentationNet

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.seen = torch.nn.Conv2d(3, 4, 1), []

        def forward(self, x):
            out = self.conv(x)
            self.seen.append((x.clone(), out.dtype))
            return {"out": out}

    torch.manual_seed(0)
    net = SegmentationNet(Tiny())
    fake = torch.rand(2, 3, 8, 8) * 2 - 1  # a generator's unquantised output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = net.predict(fake)
    x, dtype = net.model.seen[-1]
    assert dtype == torch.float32
    saved = to_uint8(fake).float() / 127.5 - 1  # what eval reads back from the written PNG
    expected = ((saved + 1) / 2 - net.mean) / net.std
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    assert torch.equal(under_autocast, net.predict(saved))


def fcn_get_scores(hist: np.ndarray):
    """pix2pix's scripts/eval_cityscapes/util.py ``get_scores``: every class in the means, a class the images lack
    scoring 0 through its ``+ 1e-12``."""
    acc = np.diag(hist).sum() / (hist.sum() + 1e-12)
    cl_acc = np.diag(hist) / (hist.sum(1) + 1e-12)
    iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist) + 1e-12)
    return acc, np.nanmean(cl_acc), np.nanmean(iu)


def test_absent_classes_count_as_zero_under_the_fcn_rule_and_are_left_out_under_cityscapes():
    # 4 classes: 3 never labelled nor predicted, 2 predicted but never labelled
    preds, target = torch.tensor([[0, 0, 1, 2, 1]]), torch.tensor([[0, 1, 1, 1, 0]])
    scores = SegmentationScores(4)
    scores.update(preds, target)
    acc, cl_acc, miou = fcn_get_scores(scores.confmat.numpy().astype(float))
    fcn = scores_from_confmat(scores.confmat, "zero")
    assert float(fcn["pixel_acc"]) == pytest.approx(acc) and float(fcn["class_acc"]) == pytest.approx(cl_acc)
    assert float(fcn["miou"]) == pytest.approx(miou)  # (1/3 + 1/4 + 0 + 0) / 4
    kept = scores.compute()  # the cityscapes rule, as in training
    assert float(kept["miou"]) == pytest.approx((1 / 3 + 1 / 4 + 0) / 3)  # class 3 left out, class 2 predicted: 0
    assert float(kept["class_acc"]) == pytest.approx((1 / 2 + 1 / 3) / 2)  # over the two labelled classes


@pytest.mark.parametrize("protocol", ["pix2pix-fcn", "generated-size"])
def test_eval_seg_protocols_score_where_they_say_and_name_themselves(tmp_path, protocol):
    """pix2pix-fcn: photos upsampled bilinear to the label map's size, lacking classes 0; generated-size: label maps
    resized nearest to each photo's size. The JSON names the protocol and its rule for absent classes."""
    scored_folders(tmp_path, classes=3, n=2, fake_hw=(24, 32), label_hw=(48, 64), fake_suffix="_fake.png")
    out = tmp_path / "scores.json"
    args = [str(tmp_path / "fake"), "--labels", str(tmp_path / "labels"), "--segmenter",
            "torchvision:lraspp_mobilenet_v3_large", "--segmenter_weights", str(tmp_path / "seg.pth"),
            "--fake-suffix", "_fake.png", "--output", str(out), "--seg_protocol", protocol]
    assert eval_main(args) == 0
    result = json.loads(out.read_text())
    seg = result["protocol"]["segmentation"]
    assert seg["name"] == protocol and ("count as 0" in seg["absent_classes"]) == (protocol == "pix2pix-fcn")
    scorer = load_scorer("torchvision:lraspp_mobilenet_v3_large", str(tmp_path / "seg.pth"))
    scores = SegmentationScores(3)
    for i in range(2):
        img, labels = Image.open(tmp_path / "fake" / f"{i}_fake.png"), Image.open(tmp_path / "labels" / f"{i}.png")
        if protocol == "pix2pix-fcn":
            img = img.resize(labels.size, Image.Resampling.BILINEAR)
        else:
            labels = labels.resize(img.size, Image.Resampling.NEAREST)
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float()[None] / 127.5 - 1
        scores.update(scorer.net.predict(x), torch.from_numpy(np.asarray(labels)).long()[None])
    expected = scores_from_confmat(scores.confmat, "zero" if protocol == "pix2pix-fcn" else "left_out")
    for k in ("miou", "pixel_acc", "class_acc"):
        assert result["metrics"][k] == pytest.approx(float(expected[k]), rel=1e-6), k
    refused = eval_main([*args[:-2], "--seg_protocol", "generated-size", "--seg_size", "64x48"])
    assert refused == 2  # two answers to where to score: refused
