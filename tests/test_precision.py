"""Mixed precision: 16-mixed (GradScaler, both optimizers through it) as far as a CPU allows, bf16 on real maps."""

import math

import pytest
import torch

from pix2pix_lit import PairedDataModule, Pix2Pix, SyntheticPairedDataModule
from pix2pix_lit.precision import cpu_bf16_support, cpu_precision_fallback

from conftest import MAPS, REPO, TINY_MODEL, quiet_trainer

NO_BF16_KERNELS = cpu_bf16_support() == "none"


def _changed(before: dict, net: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in net.named_parameters())


@pytest.mark.parametrize("precision,kind", [("16-mixed", "pix2pix"), ("bf16-mixed", "pix2pix"), ("32", "pix2pix"),
                                            ("16-mixed", "spade"), ("bf16-mixed", "spade")])
def test_mixed_precision_steps_update_both_networks(tmp_path, precision, kind):
    torch.manual_seed(0)
    if kind == "spade":  # spectral norm, SPADE's batch norm and the hinge loss under autocast / a GradScaler
        from pix2pix_lit.data import SyntheticLabelDataModule
        from pix2pix_lit.models import SPADE

        # small: a CPU has no fp16 convolution backward kernels (reference code, ~0.4 s a call at 64x64 batch 4)
        dm = SyntheticLabelDataModule(str(tmp_path / "syn"), num_train=16, num_val=2, num_test=2, image_size=36,
                                      load_size=36, crop_size=32, batch_size=2, num_workers=0)
        model = SPADE(ngf=4, ndf=4, norm_G="spectralspadebatch3x3", label_nc=5, fid=False, kid=False)
    else:
        dm = SyntheticPairedDataModule(str(tmp_path / "syn"), num_train=16, num_val=2, num_test=2, image_size=36,
                                       load_size=36, crop_size=32, batch_size=4, num_workers=0)
        model = Pix2Pix(**TINY_MODEL)
    g0 = {k: v.clone() for k, v in model.G.named_parameters()}
    d0 = {k: v.clone() for k, v in model.D.named_parameters()}
    if precision == "16-mixed":
        # Lightning swaps 16-mixed for bf16 on CPUs; given explicitly, its plugin runs fp16 autocast and
        # a GradScaler on the CPU: the same code path a GPU takes
        from lightning.pytorch.plugins import MixedPrecision

        # (its first scale is 2**10, not 2**16: a scaler skips the steps whose fp16 gradients overflow until
        # its scale has come down, which could take all 4 steps of this test)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
        trainer = quiet_trainer(max_steps=4, limit_val_batches=0, plugins=[plugin])
    else:
        trainer = quiet_trainer(max_steps=4, limit_val_batches=0, precision=precision)
    trainer.fit(model, dm)
    assert trainer.global_step == 4
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if precision == "16-mixed":
        # the GradScaler saw both optimizers' steps ("no inf checks recorded" would have raised)
        assert scaler is not None and scaler.get_scale() > 0
    assert _changed(g0, model.G) and _changed(d0, model.D)
    assert model.nonfinite_total == 0
    for k in ("train/loss_D", "train/loss_G_GAN", "train/loss_G_feat" if kind == "spade" else "train/loss_G_L1"):
        assert math.isfinite(float(trainer.callback_metrics[k]))


@pytest.mark.slow
@pytest.mark.skipif(not MAPS.is_dir(), reason="needs ../shared/datasets/maps")
@pytest.mark.skipif(NO_BF16_KERNELS, reason="this CPU has no bf16 kernels: 300 bf16 steps at 256x256 take hours here "
                    "(~1 min each, see experiments/RESULTS.md)")
def test_bf16_300_steps_on_real_maps_stay_finite():
    dm = PairedDataModule(str(MAPS), direction="BtoA", batch_size=1, num_workers=2)
    torch.manual_seed(0)
    model = Pix2Pix(fid=False, kid=False, inference_mode="eval")  # the official unet_256 + basic D at 256x256
    dm.setup("validate")
    held_out = [dm.val_dataset[i] for i in range(8)]

    def val_l1() -> float:  # G's L1 on 8 held-out pairs, in fp32
        with torch.no_grad():
            return float(sum((model.generate(s["source"][None]) - s["target"][None]).abs().mean() for s in held_out) / 8)

    untrained = val_l1()
    trainer = quiet_trainer(max_steps=300, limit_val_batches=0, precision="bf16-mixed", log_every_n_steps=1)
    trainer.fit(model, dm)
    assert trainer.global_step == 300 and model.nonfinite_total == 0
    for k in ("train/loss_D", "train/loss_G_GAN", "train/loss_G_L1"):
        assert math.isfinite(float(trainer.callback_metrics[k]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # bf16 training learned: the held-out L1 fell well below the untrained network's (a run whose updates were
    # lost or skipped would stay at it)
    trained = val_l1()
    assert trained < 0.7 * untrained, (untrained, trained)


@pytest.mark.parametrize("accelerator,precision,support,expected", [
    ("cpu", "bf16-mixed", "none", "32-true"),
    ("cpu", "16-mixed", "none", "32-true"),  # Lightning runs 16-mixed as bf16-mixed on CPUs
    ("cpu", "bf16-true", "none", "32-true"),
    ("cpu", "32", "none", None),
    ("cpu", "bf16-mixed", "emulated", None),
    ("cpu", "bf16-mixed", "native", None),
    ("gpu", "bf16-mixed", "none", None),
    ("cuda", "16-mixed", "none", None),
])
def test_cpu_precision_fallback_rule(accelerator, precision, support, expected):
    assert cpu_precision_fallback(accelerator, precision, support) == expected


def _cli_trainer(monkeypatch, support, *extra):
    from pix2pix_lit import cli, precision

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: support)
    monkeypatch.setattr("sys.argv", ["pix2pix-lit"])  # pytest's own arguments are not the CLI's
    args = ["-c", str(REPO / "configs" / "quickstart.yaml"), "--trainer.logger", "false", "--model.fid", "false",
            "--model.kid", "false", *extra]
    return cli.build_cli(args, args, run=False).trainer


def test_cli_falls_back_to_fp32_on_cpus_without_bf16_kernels(monkeypatch, caplog):
    with caplog.at_level("WARNING"):
        trainer = _cli_trainer(monkeypatch, "none")
    assert trainer.precision == "32-true"
    assert "trainer.precision=bf16-mixed: this CPU has no bf16 kernels" in caplog.text
    assert "--precision_fallback false" in caplog.text
    assert _cli_trainer(monkeypatch, "none", "--precision_fallback", "false").precision == "bf16-mixed"
    assert _cli_trainer(monkeypatch, "native").precision == "bf16-mixed"


@pytest.mark.parametrize("precision,expected", [("32", False), ("bf16-mixed", True)])
def test_channels_last_follows_precision_unless_set(tmp_path, precision, expected):
    dm = SyntheticPairedDataModule(str(tmp_path / "syn"), num_train=4, num_val=2, num_test=2, image_size=36,
                                   load_size=36, crop_size=32, batch_size=4, num_workers=0)
    conv = lambda m: next(x for x in m.G.modules() if isinstance(x, torch.nn.Conv2d))  # noqa: E731
    for setting, want in ((None, expected), (True, True), (False, False)):
        model = Pix2Pix(**{**TINY_MODEL, "channels_last": setting})
        quiet_trainer(max_steps=1, limit_val_batches=0, precision=precision).fit(model, dm)
        assert model.use_channels_last is want, setting
        assert conv(model).weight.is_contiguous(memory_format=torch.channels_last) is want, setting


def test_evaluation_under_autocast_casts_the_weights_once_per_pass_with_the_same_outputs(tmp_path):
    """Inside a validation/test/predict pass, generate() runs a copy of G whose conv weights are already bf16:
    the paper-mode outputs equal autocast's own casting to the bit, the copy is made once and dropped after."""
    import torch.nn as nn

    from pix2pix_lit.precision import autocast_ready_copy

    model = Pix2Pix(**TINY_MODEL)
    x = torch.rand(2, 3, 64, 64) * 2 - 1

    def run():
        torch.manual_seed(0)  # paper mode keeps dropout on
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.generate(x)

    plain = run()
    model.runner.pass_weights.begin()
    cached, again = run(), run()
    (copy,) = model.runner.pass_weights.copies.values()
    model.runner.pass_weights.end()
    assert torch.equal(plain, cached) and not cached.isnan().any()
    assert len(model.runner.pass_weights.copies or {}) == 0 and again.shape == plain.shape
    convs = [m for m in copy.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norms = [m for m in copy.modules() if isinstance(m, nn.BatchNorm2d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)  # autocast leaves batch norm in fp32
    assert all(p.dtype == torch.float32 for p in model.G.parameters())  # the trained G is untouched
    # outside a pass (serving, a notebook) nothing is cached: weights may change between calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.generate(x)
    assert model.runner.pass_weights.copies is None
    # a net that derives its weights at every call is not copied
    assert autocast_ready_copy(nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 3, 3)), torch.bfloat16) is None


def test_a_bf16_validation_pass_ends_with_no_cached_copy(tmp_path):
    dm = SyntheticPairedDataModule(str(tmp_path / "data"), num_train=2, num_val=3, num_test=1, image_size=64,
                                   load_size=64, crop_size=64, batch_size=1, num_workers=0)
    model = Pix2Pix(**{**TINY_MODEL, "fid": False, "kid": False})
    seen = []
    generate = model.generate

    def spy(*a, **k):
        seen.append(model.runner.pass_weights.copies is not None and len(model.runner.pass_weights.copies))
        return generate(*a, **k)

    model.generate = spy
    quiet_trainer(default_root_dir=str(tmp_path), precision="bf16-mixed").validate(model, dm, verbose=False)
    assert seen and all(seen[1:]) and model.runner.pass_weights.copies is None
