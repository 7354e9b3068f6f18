"""CUT and FastCUT against the official taesungp/contrastive-unpaired-translation code: the parameter counts, the first
training step's losses from the official code's starting point (``tests/fixtures/official/cut_steps.pt``, written by
``experiments/cut_check.py``), PatchNCE by hand and by finite differences, exact resume (F's heads included), and
the model through fit, test, predict, export and serve."""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader

from pix2pix_lit.data import SyntheticUnpairedDataModule
from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models.cut import CUT
from pix2pix_lit.nets.cut import patch_nce_loss

from conftest import REPO, quiet_trainer, run, run_in_process, same_kernels, step_at_start

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "cut_steps.pt"
MODES = {"CUT": dict(nce_idt=True, lambda_NCE=1.0, flip_equivariance=False),
         "FastCUT": dict(nce_idt=False, lambda_NCE=10.0, flip_equivariance=True)}
TINY = dict(ngf=4, ndf=4, netF_nc=8, num_patches=8, netG="resnet_6blocks", fid=False, kid=False)


def test_parameter_counts_are_the_official_ones():
    """The official define_G/define_D/define_F (anti-aliased, the defaults) on 3-channel images: G 11,378,179,
    D 2,764,737, F 560,384 (its heads built at the first batch, 256 channels)."""
    model = CUT(fid=False, kid=False)
    counts = [sum(p.numel() for p in getattr(model, n).parameters()) for n in ("G", "D", "F")]
    assert counts == [11_378_179, 2_764_737, 560_384]


@pytest.mark.parametrize("mode", ["CUT", "FastCUT"])
def test_three_steps_equal_the_official_code(mode):
    """From the official code's starting weights, batch and patch locations (FastCUT's batches flipped), the losses of
    3 steps (D's, then G's and F's on the updated D) equal the official ``optimize_parameters``'s — the official
    networks built with an instance norm whose backward is right at batch 1 (torch's is not, see
    ``experiments/cut_check.py``; :func:`test_instance_norm_gradients_are_right_whatever_layout_reaches_them`)."""
    ref = torch.load(OFFICIAL, weights_only=True)
    small, case = ref["small"], ref["modes"][mode]
    model = CUT(ngf=small["ngf"], ndf=small["ndf"], netF_nc=small["netF_nc"], num_patches=small["num_patches"],
                fid=False, kid=False, **MODES[mode])
    model.load_state_dict(ref["start"])
    perms = iter(case["perms"])
    forward = model.F.forward
    model.F.forward = lambda feats, n, ids=None: forward(feats, n, ids if ids is not None else [next(perms) for _ in feats])
    model.flip_this_batch = lambda: True
    seen: list[dict] = []
    d_loss, g_loss = model.discriminator_loss, model.generator_loss
    model.discriminator_loss = lambda *a: (lambda r: (seen.append(dict(r[1])), r)[1])(d_loss(*a))
    model.generator_loss = lambda *a: (lambda r: (seen[-1].update(r[1]), r)[1])(g_loss(*a))
    batch, steps = case["batch"], len(case["losses"])
    assert steps == 3
    quiet_trainer(max_steps=steps, limit_val_batches=0).fit(
        model, DataLoader([{"A": batch["A"][0], "B": batch["B"][0], "name": "x"}] * steps, batch_size=1))
    # D is saturated here (loss_D_fake ~1e-9), and Adam scales its near-0 gradients to lr-sized steps: on kernels
    # other than the recording's, rounding grows to ~3 % by step 3 (AVX2), so there only step 1 is exact (the
    # later steps within 5 %, or 1e-3 for a loss near 0)
    exact = same_kernels(ref["kernels"])
    for step, (official, ours) in enumerate(zip(case["losses"], seen, strict=True)):
        for k, v in official.items():
            tolerance = dict(abs=1e-5, rel=1e-6) if exact or step == 0 else dict(rel=0.05, abs=1e-3)
            assert float(ours[k].detach()) == pytest.approx(v, **tolerance), (step, k)


def test_instance_norm_gradients_are_right_whatever_layout_reaches_them():
    """PatchSampleF reads G's features through ``permute(0, 2, 3, 1)``, so their gradient comes back laid out
    channels-last; torch 2.14's ``nn.InstanceNorm2d`` backward is wrong for one image in that case (which the official
    CUT code trains with), ours (one image as batch norm) is right: gradcheck, batches of 1 and 2, both layouts."""
    from pix2pix_lit.nets.norm import InstanceNorm2d

    def sparse(f):
        idx = torch.arange(0, f.shape[2] * f.shape[3], 16)
        return f.permute(0, 2, 3, 1).flatten(1, 2)[:, idx, :].pow(2).sum()

    torch.manual_seed(0)
    for batch in (1, 2):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.rand(batch, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
            assert torch.autograd.gradcheck(lambda t: sparse(InstanceNorm2d(3)(t)), (x,)), (batch, fmt)


def test_patch_nce_is_the_papers_cross_entropy_and_its_gradient_the_derivative():
    """PatchNCE of 3 patches by hand: -log(exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_{j != i} exp(q_i.k_j / t)));
    and its gradient against central finite differences."""
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    k = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    t = 0.07
    by_hand = []
    for i in range(3):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ k[j]) / t) for j in range(3) if j != i)
        by_hand.append(-math.log(pos / (pos + neg + 0 * math.exp(-10 / t))))
    got = patch_nce_loss(q, k, batch_size=1, tau=t)
    # the official masks a patch's own similarity among the negatives with -10 (exp(-10/t) ~ 0 in the sum)
    assert got.tolist() == pytest.approx(by_hand, rel=1e-5)
    qq = q.clone().requires_grad_(True)
    loss = lambda x: patch_nce_loss(x, k, 1, t).double().sum()  # noqa: E731 - computed in fp32: steps of 1e-3
    (grad,) = torch.autograd.grad(loss(qq), qq)
    eps = 1e-3
    for idx in [(0, 0), (1, 2), (2, 3)]:
        step = torch.zeros_like(q)
        step[idx] = eps
        fd = (loss(q + step) - loss(q - step)) / (2 * eps)
        assert float(grad[idx]) == pytest.approx(float(fd), rel=2e-2, abs=2e-2)


def data(root, **kw):
    return SyntheticUnpairedDataModule(str(root), num_train=6, num_val=2, num_test=2, image_size=36, load_size=36,
                                       crop_size=32, batch_size=2, num_workers=0, **kw)


def _fit(tmp_path, ckpt_dir, steps, ckpt_path=None, seed=0, **kw):
    ckpt, start = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0), step_at_start()
    torch.manual_seed(seed)
    model = CUT(**TINY, **kw)
    quiet_trainer(max_steps=steps, limit_val_batches=0, enable_checkpointing=True, callbacks=[ckpt, start],
                  deterministic=True).fit(model, data(tmp_path / "syn"), ckpt_path=ckpt_path)
    return model, start.step


@pytest.mark.parametrize("mode", ["CUT", "FastCUT"])
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, mode):
    """G, D, F (its heads in every checkpoint) and Adam's state; FastCUT's coins and the patch locations come from
    the RNG the checkpoint restores."""
    whole, _ = _fit(tmp_path, tmp_path / "a", 5, **MODES[mode])
    _fit(tmp_path, tmp_path / "b", 2, **MODES[mode])
    resumed, start = _fit(tmp_path, tmp_path / "b", 5, ckpt_path=str(tmp_path / "b" / "last.ckpt"), seed=1,
                          **MODES[mode])
    assert start == 2
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("F.mlp_4.") for k in saved)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_refusals_are_one_line():
    with pytest.raises(ConfigError, match="model.nce_layers=.*ascending indices of G's layers"):
        CUT(**TINY, nce_layers=[4, 0])
    with pytest.raises(ConfigError, match="model.nce_idt needs as many channels"):
        CUT(**TINY, input_nc=1)
    with pytest.raises(ConfigError, match="model.netG"):
        CUT(**{**TINY, "netG": "unet_256"})
    with pytest.raises(ConfigError, match="translates one way"):
        CUT(**TINY).generator_for("BtoA")


def cut_cli(root, data_root, *extra):
    return ["-c", str(REPO / "configs" / "cut" / "quickstart.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--data.root", str(data_root), "--data.num_train", "6",
            "--data.num_val", "4", "--data.num_test", "4", "--data.image_size", "36", "--data.load_size", "36",
            "--data.crop_size", "32", "--data.num_workers", "0", "--model.ngf", "8", "--model.ndf", "8",
            "--model.netF_nc", "16", "--model.num_patches", "16", "--model.kid_subset_size", "4",
            "--trainer.log_every_n_steps", "1", *extra]


@pytest.mark.slow
def test_fit_test_predict_export_serve(tmp_path, cli_env):
    """The quickstart config (shrunk) through the command line: val/fid_B from the untrained G on, a test report
    in one direction, predict of any photo, export of G to ONNX equal to the checkpoint, and serving it."""
    root, syn = tmp_path / "run", tmp_path / "syn"
    run(["fit", *cut_cli(root, syn, "--trainer.max_epochs", "2")], cli_env, tmp_path)
    rows = list(csv.DictReader(open(root / "csv" / "version_0" / "metrics.csv")))
    fid_B = [float(r["val/fid_B"]) for r in rows if r.get("val/fid_B")]
    assert len(fid_B) == 3 and not any(r.get("val/fid_A") for r in rows)  # one direction
    assert any(r.get("train/loss_NCE_Y") for r in rows)
    last = str(root / "checkpoints" / "last.ckpt")
    run_in_process(["test", *cut_cli(root, syn), "--ckpt_path", last], cli_env, tmp_path, check=True)  # saves a start-up
    report = json.loads((root / "checkpoints" / "metrics.json").read_text())
    assert {"fid_B", "kid_mean_B", "ssim_B"} <= set(report["metrics"]) and "fid_A" not in report["metrics"]
    assert report["num_images"] == 4

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(photos / "p.png")
    run_in_process(["predict", *cut_cli(root, syn), "--ckpt_path", last, "--data.predict_dir", str(photos),
                    "--predict_writer.output_dir", str(tmp_path / "pred")], cli_env, tmp_path, check=True)
    assert Image.open(tmp_path / "pred" / "p.png").size == (50, 30)

    export = run_in_process(["export", "--ckpt_path", last, "--format", "onnx"], cli_env, tmp_path, check=True)
    onnx_path = root / "checkpoints" / "last.G.eval.onnx"
    assert onnx_path.is_file(), export.stdout
    import onnxruntime as ort

    model = CUT.load_from_checkpoint(last, map_location="cpu").eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model.G(x).numpy()
    got = ort.InferenceSession(str(onnx_path)).run(None, {ort.InferenceSession(str(onnx_path)).get_inputs()[0].name:
                                                          x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)

    from starlette.testclient import TestClient

    from pix2pix_lit.serving.app import Limits, create_app
    from pix2pix_lit.serving.engine import Generator

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    answers = []
    for generator in (Generator.load(ckpt_path=last), Generator.load(model=str(onnx_path))):
        with TestClient(create_app(generator, Limits(memory_budget_mb=256))) as client:
            served = client.post("/v1/translate", content=buf.getvalue(), headers={"Content-Type": "image/png"})
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        answers.append(np.asarray(Image.open(io.BytesIO(served.content))).astype(int))
    assert np.abs(answers[0] - answers[1]).max() <= 1  # the checkpoint and its export answer alike


def test_a_head_that_outputs_zero_gives_finite_gradients():
    """A patch whose MLP head outputs exactly 0 (every ReLU off, the biases 0 as initialised): its normalised
    embedding is 0 and the gradient stays finite (sqrt(sum(x^2))'s would be inf, and the weights NaN)."""
    from pix2pix_lit.nets.cut import PatchSampleF

    heads = PatchSampleF([3], nc=4)
    torch.nn.init.zeros_(heads.mlp_0[2].weight)
    torch.nn.init.zeros_(heads.mlp_0[2].bias)
    feats = [torch.rand(1, 3, 4, 4, requires_grad=True)]
    (q,), ids = heads(feats, 4)
    loss = patch_nce_loss(q, q.detach() + 1, 1).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in heads.parameters() if p.grad is not None)
