"""``pix2pix-lit import-official``: official junyanz network files as checkpoints. The fixture holds small
generators built by the official ``networks.py``, their state dicts as the official code saves them and their
outputs (``experiments/official_import_check.py --fixture``), so these tests need no official code."""

import json

import pytest
import torch

from pix2pix_lit.checkpoints import load_checkpoint
from pix2pix_lit.errors import CheckpointError, ConfigError
from pix2pix_lit.models import resolve_model_class
from pix2pix_lit.nets import define_G
from pix2pix_lit.official import import_official
from pix2pix_lit.serving.export import ExportError, export_checkpoint

from conftest import REPO, run, run_in_process, tiny

FIXTURE = torch.load(REPO / "tests" / "fixtures" / "official" / "junyanz_generators.pt", weights_only=True)


def official_file(tmp_path, case: str, name: str = "latest_net_G.pth"):
    path = tmp_path / name
    torch.save(FIXTURE[case]["state_dict"], path)
    return path


def imported_model(ckpt, mode: str):
    c = load_checkpoint(str(ckpt))
    h = {k: v for k, v in c["hyper_parameters"].items() if k not in ("_class_path", "inference_mode")}
    model = resolve_model_class(c["hyper_parameters"]["_class_path"])(**h, inference_mode=mode, fid=False, kid=False)
    model.load_state_dict(c["state_dict"])
    model.on_load_checkpoint(c)
    return model


@pytest.mark.parametrize("case, model, options", [
    ("unet5_batch_dropout", "pix2pix", {"netG": "unet", "num_downs": 5, "ngf": 4, "norm": "batch", "no_dropout": False}),
    ("resnet2_instance", "cyclegan", {"netG": "resnet", "n_blocks": 2, "ngf": 4, "norm": "instance", "no_dropout": True}),
    ("resnet2_instance_pre04", "cyclegan", {"netG": "resnet", "n_blocks": 2, "norm": "instance"}),
    ("resnet2_instance_dropout_1to3", "cyclegan", {"netG": "resnet", "no_dropout": False, "input_nc": 1, "output_nc": 3}),
    ("cut_resnet6_antialiased", "cut", {"netG": "resnet_6blocks", "ngf": 4, "antialias": True, "antialias_up": True}),
])
def test_an_imported_generator_gives_the_official_outputs(tmp_path, case, model, options):
    out = tmp_path / "imported.ckpt"
    info = import_official(model, official_file(tmp_path, case), out)
    hparams = torch.load(out, weights_only=True)["hyper_parameters"]
    assert {k: hparams[k] for k in options} == options  # read from the file's keys and shapes
    assert info["untrained"] == {"pix2pix": ["D"], "cyclegan": ["G_B", "D_A", "D_B"], "cut": ["D", "F"]}[model]
    x = FIXTURE[case]["input"]
    for mode in ("eval", "paper"):  # the official --eval test, and its default (train-mode, batch 1, seed 0)
        model = imported_model(out, mode)
        torch.manual_seed(0)
        ours = model.generate(x)
        # the official outputs were computed elsewhere (other threads, other kernels, paper mode one image at a
        # time): the same weights, summation in another order; a wrong layer or name differs by ~0.1
        assert (ours - FIXTURE[case][mode]).abs().max() <= 1e-5, mode


def test_both_cyclegan_generators_and_the_direction_of_one(tmp_path):
    a = official_file(tmp_path, "resnet2_instance_dropout_1to3", "latest_net_G_A.pth")
    one = tmp_path / "one.ckpt"
    import_official("cyclegan", a, one, direction="BtoA")  # the file maps 1 -> 3 channels: B has 1, A has 3
    h = torch.load(one, weights_only=True)["hyper_parameters"]
    assert (h["input_nc"], h["output_nc"], h["predict_direction"]) == (3, 1, "BtoA")
    model = imported_model(one, "eval")
    x = FIXTURE["resnet2_instance_dropout_1to3"]["input"]
    assert (model.generate(x, "BtoA") - FIXTURE["resnet2_instance_dropout_1to3"]["eval"]).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match=r"^G_A \(AtoB\) was not in the official files"):
        model.generate(torch.zeros(1, 3, 32, 32), "AtoB")
    with pytest.raises(ExportError, match=r"G_A \(AtoB\) was not in the official files it was imported from"):
        export_checkpoint(str(one), "onnx", str(tmp_path / "g.onnx"), direction="AtoB")
    assert not (tmp_path / "g.onnx").exists()
    pair, b_file = tmp_path / "pair.ckpt", tmp_path / "latest_net_G_B.pth"
    torch.save(FIXTURE["resnet2_instance"]["state_dict"], b_file)  # without the dropout G_A's file has
    with pytest.raises(CheckpointError, match=r"latest_net_G_B.pth: model.10.conv_block.6.weight is missing for the "):
        import_official("cyclegan", a, pair, other=b_file)
    assert not pair.exists()
    torch.manual_seed(0)
    back = define_G(3, 4, 4, "resnet", "instance", True, n_blocks=2)  # 3 -> 4: not the way back either
    torch.save(back.state_dict(), b_file)
    with pytest.raises(CheckpointError, match=r"model.19.weight is \(4, 4, 7, 7\) but .* has \(1, 4, 7, 7\)"):
        import_official("cyclegan", a, pair, other=b_file)
    back = define_G(3, 1, 4, "resnet", "instance", True, n_blocks=2)  # the same layers and names as the official
    torch.save(back.state_dict(), b_file)
    assert import_official("cyclegan", a, pair, other=b_file)["untrained"] == ["D_A", "D_B"]
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert (imported_model(pair, "eval").generate(y, "BtoA") - back.eval()(y)).abs().max() <= 1e-6


def test_cut_with_its_discriminator_and_heads_and_what_is_refused(tmp_path):
    """CUT's D and F files load under their names; a plain-ResNet file is CUT without anti-aliasing; a ResNet
    depth CUT does not have and a D of the wrong layout are one line, nothing written."""
    from pix2pix_lit.models.cut import CUT

    torch.manual_seed(0)
    donor = CUT(netG="resnet_6blocks", ngf=4, ndf=4, fid=False, kid=False)  # the official names (cut_check.py)
    g = official_file(tmp_path, "cut_resnet6_antialiased")
    d, f = tmp_path / "latest_net_D.pth", tmp_path / "latest_net_F.pth"
    torch.save(donor.D.state_dict(), d)
    torch.save(donor.F.state_dict(), f)
    info = import_official("cut", g, tmp_path / "full.ckpt", discriminator=d, sampler=f)
    assert info["untrained"] == [] and info["ndf"] == 4  # ndf read from D's first layer
    full = imported_model(tmp_path / "full.ckpt", "eval")
    assert all(torch.equal(full.D.state_dict()[k], v) for k, v in donor.D.state_dict().items())
    with pytest.raises(CheckpointError, match=r"latest_net_D.pth: model.14.filt is missing for the n_layers "
                                              r"discriminator \(this file has 13 tensors"):
        import_official("cut", g, tmp_path / "x.ckpt", discriminator=d, netD="n_layers", n_layers_D=4)
    assert not (tmp_path / "x.ckpt").exists()
    with pytest.raises(CheckpointError, match="a ResNet of 2 blocks; CUT's generators are resnet_9blocks and "
                                              "resnet_6blocks"):
        import_official("cut", official_file(tmp_path, "resnet2_instance", "two.pth"), tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match="--sampler is CUT's PatchNCE heads"):
        import_official("pix2pix", g, tmp_path / "x.ckpt", sampler=f)
    plain = CUT(netG="resnet_6blocks", ngf=4, antialias=False, antialias_up=False, fid=False, kid=False)
    torch.save(plain.G.state_dict(), tmp_path / "plain.pth")
    torch.save(plain.F.state_dict(), f)  # F's heads take the channels of the G layers they see
    import_official("cut", tmp_path / "plain.pth", tmp_path / "plain.ckpt", sampler=f)
    h = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    assert (h["hyper_parameters"]["antialias"], h["hyper_parameters"]["antialias_up"]) == (False, False)
    assert h["pix2pix_lit"]["imported"]["untrained"] == ["D"]
    assert torch.equal(h["state_dict"]["F.mlp_4.0.weight"], plain.F.state_dict()["mlp_4.0.weight"])


@pytest.mark.parametrize("break_it, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), r"cannot be read .*truncated or not a \.pth"),
    (lambda p: torch.save({"state_dict": {}, "epoch": 1}, p), "is a Lightning checkpoint, not an official network"),
    (lambda p: torch.save({"net.0.weight": torch.zeros(4, 3, 3, 3)}, p), r"net\.0\.weight \(4, 3, 3, 3\) fits no official"),
    (lambda p: torch.save({**torch.load(p, weights_only=True), "model.9.weight": torch.zeros(2)}, p),
     r"model\.9\.weight does not belong to the unet generator"),
])
def test_a_file_that_is_not_an_official_network_is_one_line_and_writes_nothing(tmp_path, break_it, message):
    src = official_file(tmp_path, "unet5_batch_dropout")
    break_it(src)
    with pytest.raises(CheckpointError, match=message):
        import_official("pix2pix", src, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists() and [p.name for p in tmp_path.iterdir()] == [src.name]


def test_import_official_on_the_command_line_then_predict_and_fine_tune(tmp_path, cli_env):
    src = official_file(tmp_path, "unet5_batch_dropout")
    # the commands whose subject is not the process run in this one (a new Python's start-up each saved); the
    # import and the fine-tuning run as users type them
    proc = run_in_process(["import-official", str(src), str(tmp_path / "munit.ckpt"), "--model", "munit"], cli_env,
                          tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'munit'" in proc.stderr
    ckpt = tmp_path / "facades.ckpt"
    proc = run(["import-official", str(src), str(ckpt), "--model", "pix2pix"], cli_env, tmp_path)
    assert "unet, ngf 4, norm batch, 3 -> 3 channels, dropout on" in proc.stdout and "freshly initialised: D" in proc.stdout
    again = run_in_process(["import-official", str(src), str(ckpt), "--model", "pix2pix"], cli_env, tmp_path)
    assert again.returncode == 2 and "nothing is overwritten" in again.stderr
    args = tiny(tmp_path / "run", tmp_path / "syn", "--trainer.logger", "false", "--model.kid", "false",
                "--model.fid", "false")
    run_in_process(["predict", *args, "--ckpt_path", str(ckpt), "--model.inference_mode", "eval",
                    "--predict_writer.output_dir", str(tmp_path / "pred")], cli_env, tmp_path, check=True)
    assert len(list((tmp_path / "pred").glob("*.png"))) == 4
    # fine-tuning: the ckpt's architecture (ngf 4 over tiny()'s 8), its weights, step 0, fresh optimizers
    run(["fit", *args, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "1"], cli_env, tmp_path)
    tuned = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    start = torch.load(ckpt, weights_only=True)["state_dict"]
    assert tuned["global_step"] == 2 and tuned["hyper_parameters"]["ngf"] == 4
    assert "imported" not in tuned["pix2pix_lit"]  # a trained checkpoint: every network trained
    moved = [k for k in start if k.startswith("G.") and k.endswith("weight") and not torch.equal(start[k], tuned["state_dict"][k])]
    assert moved
    report = run_in_process(["test", *args, "--ckpt_path", str(ckpt), "--test_report.output_dir",
                             str(tmp_path / "rep")], cli_env, tmp_path)
    assert report.returncode == 0
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["protocol"]["generator"] == "G"


HD = torch.load(REPO / "tests" / "fixtures" / "official" / "pix2pixhd_generators.pt", weights_only=True)


@pytest.mark.parametrize("netG, sizes", [
    ("global", {"ngf": 4, "n_downsample_global": 2, "n_blocks_global": 1}),
    ("local", {"ngf": 4, "n_downsample_global": 2, "n_blocks_global": 1, "n_local_enhancers": 1, "n_blocks_local": 1}),
])
def test_a_pix2pixhd_generator_and_its_discriminator_give_the_official_outputs(tmp_path, netG, sizes):
    """NVIDIA/pix2pixHD's G (5 label ids + instance edges -> RGB) and its 2-scale feature-matching D, written by
    its networks.py: the sizes read from the keys, the channels from --label_nc, the outputs equal."""
    case = HD[netG]
    g, d = tmp_path / "latest_net_G.pth", tmp_path / "latest_net_D.pth"
    torch.save(case["state_dict"], g)
    torch.save(case["D"], d)
    with pytest.raises(ConfigError, match=r"takes 6 channels but --label_nc 35 gives 36; give the options it was "):
        import_official("pix2pixhd", g, tmp_path / "x.ckpt")  # the official default label_nc 35 does not fit
    assert not (tmp_path / "x.ckpt").exists()
    info = import_official("pix2pixhd", g, tmp_path / "hd.ckpt", discriminator=d, label_nc=5)
    assert info["untrained"] == [] and info["ndf"] == 4
    h = torch.load(tmp_path / "hd.ckpt", weights_only=True)["hyper_parameters"]
    assert {k: h[k] for k in sizes} == sizes and h["netG"] == netG and h["label_nc"] == 5
    assert (h["num_D"], h["n_layers_D"], h["padding_D"], h["gan_scales"], h["lambda_L1"]) == (2, 2, 2, "sum", 0.0)
    model = imported_model(tmp_path / "hd.ckpt", "eval")
    x = case["input"]
    assert (model.generate(x) - case["output"]).abs().max() <= 1e-5
    with torch.no_grad():
        scores = model.D.eval()(torch.cat([x, case["output"]], 1))
    assert max((a - b).abs().max() for a, b in zip(scores, case["D_outputs"])) <= 1e-5


def test_the_pix2pixhd_recipe_of_an_import_is_the_shipped_configs():
    """What an imported pix2pixHD generator is fine-tuned with is configs/pix2pixhd/cityscapes_1024x512.yaml's."""
    import yaml

    from pix2pix_lit.official import PIX2PIXHD_RECIPE

    config = yaml.safe_load((REPO / "configs" / "pix2pixhd" / "cityscapes_1024x512.yaml").read_text())
    assert {k: config["model"]["init_args"][k] for k in PIX2PIXHD_RECIPE} == PIX2PIXHD_RECIPE


def _experiment():
    import importlib.util

    spec = importlib.util.spec_from_file_location("official_import_check",
                                                  REPO / "experiments" / "official_import_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["labels", "vae"])
def test_spade_generator_discriminator_and_encoder_give_the_official_outputs(tmp_path, case):
    """NVlabs/SPADE's G, D (and VAE encoder E) in the official names and layouts, run by the official code on
    weights drawn from seeds (experiments/official_import_check.py --spade-fixture): imported, the same outputs."""
    experiment = _experiment()
    fixture = torch.load(REPO / "tests" / "fixtures" / "official" / "spade_networks.pt", weights_only=True)[case]
    files = {}
    for i, name in enumerate(("G", "D", "E")):
        if name in fixture["shapes"]:
            files[name] = tmp_path / f"latest_net_{name}.pth"
            torch.save(experiment.seeded_state_dict(fixture["shapes"][name], i), files[name])
    options = fixture["options"]
    with pytest.raises(ConfigError, match="a SPADE generator's weights do not say its data: give --preset"):
        import_official("spade", files["G"], tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match=r"takes 6 label channels but --label_nc 35 with.*gives 36"):
        import_official("spade", files["G"], tmp_path / "x.ckpt", spade_options={**options, "label_nc": 35})
    assert not (tmp_path / "x.ckpt").exists()
    info = import_official("spade", files["G"], tmp_path / "s.ckpt", discriminator=files["D"],
                           encoder=files.get("E"), spade_options=options)
    assert info["untrained"] == [] and info["ndf"] == 4
    h = torch.load(tmp_path / "s.ckpt", weights_only=True)["hyper_parameters"]
    assert (h["ngf"], h["norm_G"], h["use_vae"], h["num_D"], h["n_layers_D"], h["label_nc"]) == (
        4, "spectralspadesyncbatch3x3", case == "vae", 2, 2, 5)
    model = imported_model(tmp_path / "s.ckpt", "eval")
    inputs = experiment.seeded_inputs(options["crop_size"] // 2, options["crop_size"])
    x = inputs["input"]
    extra = {"z": inputs["z"]} if case == "vae" else {}
    # 0 difference in the experiment; here one thread per test worker may sum the convolutions in another order
    assert (model.generate(x, **extra) - fixture["output"]).abs().max() <= 1e-5
    with torch.no_grad():
        scores = model.D.eval().features(torch.cat([x, fixture["output"]], 1))
        assert max((a[-1] - b).abs().max() for a, b in zip(scores, fixture["D_outputs"])) <= 1e-5
        if case == "vae":
            assert max((a - b).abs().max() for a, b in zip(model.E.eval()(inputs["photo"]), fixture["E_outputs"])) <= 1e-5


@pytest.mark.parametrize("preset", ["cityscapes", "ade20k"])
def test_the_spade_presets_are_the_shipped_configs(preset):
    """import-official --preset and configs/spade/<preset>.yaml say the same of the official data."""
    import yaml

    from pix2pix_lit.official import SPADE_PRESETS

    config = yaml.safe_load((REPO / "configs" / "spade" / f"{preset}.yaml").read_text())
    given = {**config["data"]["init_args"], **config["model"]["init_args"]}
    expected = SPADE_PRESETS[preset]
    assert {k: given.get(k, {"aspect_ratio": 1.0}.get(k)) for k in expected} == expected
