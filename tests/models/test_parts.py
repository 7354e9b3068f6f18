"""The parts a model is composed of, each without a Trainer: the generator runner, the evaluator, the training
state (models/runner.py, models/evaluator.py, models/training_state.py)."""

import pytest
import torch
import torch.nn as nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models.evaluator import Evaluator
from pix2pix_lit.models.runner import GeneratorRunner
from pix2pix_lit.models.training_state import TrainingState


def _bn_dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.Conv2d(8, 3, 1),
                         nn.Tanh())


def test_paper_mode_is_the_official_test_one_image_at_a_time_and_changes_no_buffer():
    net, x = _bn_dropout_net(), torch.randn(3, 3, 8, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(5)
    together = GeneratorRunner("paper").generate(net, x)
    torch.manual_seed(5)  # the official test.py: batch size 1, train-mode batch norm and dropout, in this order
    net.train()
    with torch.no_grad():
        alone = torch.cat([net(x[i:i + 1]) for i in range(3)])
    for k, v in net.state_dict().items():  # the reference's forward moved the running statistics: put back
        v.copy_(before[k])
    assert torch.allclose(together, alone, atol=1e-6)
    torch.manual_seed(5)
    GeneratorRunner("paper").generate(net, x)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net.training  # given back as it came


def test_eval_mode_is_the_official_eval_flag():
    net, x = _bn_dropout_net(), torch.randn(2, 3, 8, 8)
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 8, 8))  # running statistics away from their start
        expected = net.eval()(x)
    net.train()
    assert torch.equal(GeneratorRunner("eval").generate(net, x), expected)


def test_the_runner_picks_the_ema_copy_unless_told_not_to():
    g, ema = nn.Conv2d(1, 1, 1), torch.optim.swa_utils.AveragedModel(nn.Conv2d(1, 1, 1))
    assert GeneratorRunner(use_ema_for_eval=True).pick(g, ema) is ema.module
    assert GeneratorRunner(use_ema_for_eval=False).pick(g, ema) is g
    assert GeneratorRunner().pick(g, None) is g


def test_predict_pads_any_size_and_tiles_agree_with_the_whole_image():
    net = nn.Conv2d(3, 3, 1)  # pointwise: a tile's output is the whole image's there
    runner = GeneratorRunner("eval", predict_tile=16, predict_tile_overlap=4)
    batch = {"source": torch.rand(1, 3, 37, 45) * 2 - 1}
    def run(x):
        return runner.generate(net, x)
    def encode(b):
        return b["source"]
    tiled = runner.predict(batch, run, encode, size_multiple=8, min_size=8, label_maps=False)
    whole = GeneratorRunner("eval").predict(batch, run, encode, size_multiple=8, min_size=8, label_maps=False)
    with torch.no_grad():
        expected = net(batch["source"])
    assert tiled.shape == whole.shape == (1, 3, 37, 45)
    assert torch.allclose(whole, expected, atol=1e-6) and torch.allclose(tiled, expected, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"predict_fit": "resize", "predict_tile": 64}, "model.predict_tile=64: give a tile side"),
    ({"predict_tile": 64, "predict_tile_overlap": 40}, "model.predict_tile_overlap=40 must be between 0 and half"),
    ({"inference_mode": "train"}, "model.inference_mode"),
])
def test_runner_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        GeneratorRunner(**options)


def test_the_evaluator_scores_each_domain_as_torchmetrics_does():
    torch.manual_seed(0)
    ev = Evaluator({"B": "_B", "A": "_A"}, {"B": "B", "A": "A"}, fid=False, kid=False)
    fake, real = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    ev.begin("val", {})
    ev.metrics["val"]["B"].update(fake, real)
    ev.metrics["val"]["A"].update(real, real)
    scores = ev.take("val")
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0)((fake + 1) / 2, (real + 1) / 2)
    psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))((fake + 1) / 2, (real + 1) / 2)
    assert torch.isclose(scores["val/ssim_B"], ssim, atol=1e-5) and torch.isclose(scores["val/psnr_B"], psnr)
    assert torch.isclose(scores["val/l1_B"], (fake - real).abs().mean())
    assert float(scores["val/l1_A"]) == 0.0 and float(scores["val/ssim_A"]) > 0.999
    ev.metrics["val"]["B"].update(real, real)  # taken means reset: the next pass starts empty
    assert float(ev.take("val")["val/l1_B"]) == 0.0
    assert not ev.needs_inception("fit") and ev.needs_inception("predict") is False


@pytest.mark.parametrize("options, message", [
    ({"mifid": True, "kid": False}, "model.mifid needs model.fid and model.kid"),
    ({"fid_real_stats": "s.npz"}, "model.fid_real_stats s.npz gives FID's real side for one output domain"),
    ({"segmenter": "seg.ckpt"}, "model.segmenter scores generated photos against the label maps"),
])
def test_evaluator_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        Evaluator({"out": ""}, {"out": "target"}, **options)


def test_the_test_protocol_names_the_segmenter_a_generator_was_scored_with():
    """metrics.json's protocol.segmentation comes from the evaluator's loaded segmenter (model.segmenter)."""
    from types import SimpleNamespace

    from pix2pix_lit.callbacks.outputs import evaluation_protocol

    model = SimpleNamespace(hparams={"fid": False, "kid": False},
                            evaluator=Evaluator({"out": ""}, {"out": "target"}, fid=False, kid=False))
    assert "segmentation" not in evaluation_protocol(SimpleNamespace(datamodule=None, ckpt_path=None), model)
    model.evaluator.__dict__["scorer"] = SimpleNamespace(about={"segmenter": "seg.ckpt"}, class_mapping=None)
    seg = evaluation_protocol(SimpleNamespace(datamodule=None, ckpt_path=None), model)["segmentation"]
    assert seg["segmenter"] == "seg.ckpt" and seg["class_mapping"] == "label ids as stored"


class _Model:
    _trainer = None


def test_the_training_state_gives_back_the_rng_where_it_was_saved():
    torch.manual_seed(3)
    checkpoint: dict = {}
    TrainingState.save(checkpoint, _Model(), nonfinite_total=2)
    expected = torch.rand(5)
    assert checkpoint["hyper_parameters"]["_class_path"].endswith("test_parts._Model")
    torch.manual_seed(99)  # a new process, seeded otherwise
    state = TrainingState()
    assert state.load(checkpoint)["nonfinite_total"] == 2
    torch.rand(3)  # the sanity check draws before training starts
    state.resume()
    assert torch.equal(torch.rand(5), expected)
    assert state.rng_to_restore is None


def test_the_official_network_options_are_declared_once_with_each_models_official_defaults():
    """Pix2Pix and CycleGAN take their generator/discriminator options from models/networks.py; CycleGAN declares
    again only the five its official options set otherwise (junyanz cycle_gan_model.py / train_options.py)."""
    import inspect

    from pix2pix_lit.models import CycleGAN, Pix2Pix
    from pix2pix_lit.models.networks import OfficialNetworksModel

    def own(cls):
        return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}

    network = own(OfficialNetworksModel)
    assert {"input_nc", "netG", "ngf", "netD", "ndf", "n_layers_D", "norm", "init_type", "gan_mode"} <= network
    assert not own(Pix2Pix) & network
    assert own(CycleGAN) & network == {"netG", "no_dropout", "norm", "gan_mode", "pool_size"}
    p, c = Pix2Pix().hparams, CycleGAN().hparams
    # the official defaults: pix2pix --netG unet_256 --norm batch --gan_mode vanilla --pool_size 0, dropout on;
    # cycle_gan --netG resnet_9blocks --norm instance --gan_mode lsgan --pool_size 50 --no_dropout
    keys = ("netG", "norm", "gan_mode", "pool_size", "no_dropout")
    assert [p[k] for k in keys] == ["unet_256", "batch", "vanilla", 0, False]
    assert [c[k] for k in keys] == ["resnet_9blocks", "instance", "lsgan", 50, True]
    assert p["ndf"] == c["ndf"] == 64 and p["init_gain"] == c["init_gain"] == 0.02
