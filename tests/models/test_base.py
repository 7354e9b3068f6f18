"""The contract with a model (``ImageTranslationModel``): the README's example model works end to end through the
CLI, and a model that breaks the contract is told how at construction or setup, not deep inside a run."""

import json
import re

import pytest
import torch
import torch.nn as nn

from pix2pix_lit.models import Pix2Pix
from pix2pix_lit.models.base import ImageTranslationModel

from conftest import REPO, TINY_MODEL, run, run_in_process, tiny


def readme_blocks(language: str, heading: str = "Add your own model") -> list[str]:
    section = (REPO / "docs" / "development.md").read_text().split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_the_readme_model_trains_evaluates_resumes_and_predicts(tmp_path, cli_env, monkeypatch):
    (code,) = readme_blocks("python")
    (config,) = readme_blocks("yaml")
    (tmp_path / "l1_baseline.py").write_text(code)
    # the README's config, with the module where this test saved it
    (tmp_path / "l1.yaml").write_text(config.replace("pix2pix_lit.models.l1_baseline.", "l1_baseline."))
    env = dict(cli_env, PYTHONPATH=f"{tmp_path}:{cli_env.get('PYTHONPATH', '')}")
    small = ["-c", str(tmp_path / "l1.yaml"), "--model.netG", "unet", "--model.num_downs", "5", "--model.ngf", "8",
             "--model.ema_decay", "0.9", "--model.fid", "false", "--model.kid", "false", "--trainer.logger", "false"]
    args = [*tiny(tmp_path / "run", tmp_path / "syn"), *small]
    run(["fit", *args, "--trainer.max_epochs", "1"], env, tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["_class_path"] == "l1_baseline.L1Baseline"
    assert any(k.startswith("G_ema.") for k in ckpt["state_dict"])
    assert any(n.startswith("best-") for n in (p.name for p in last.parent.iterdir()))  # by val/ssim (no FID)
    run(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", str(last)], env, tmp_path)
    assert torch.load(last, weights_only=True)["global_step"] == 4
    # test and predict in this process (the training and the resume ran as users type them)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_in_process(["test", *args, "--ckpt_path", str(last)], env, tmp_path, check=True)
    report = json.loads((last.parent / "metrics.json").read_text())
    assert report["protocol"]["generator"] == "G_ema" and {"ssim", "psnr"} <= set(report["metrics"])
    run_in_process(["predict", *args, "--ckpt_path", str(last), "--predict_writer.output_dir", str(tmp_path / "pred")],
                   env, tmp_path, check=True)
    assert len(list((tmp_path / "pred").glob("*.png"))) == 4


def test_the_second_example_a_label_map_model_takes_its_runtime_option_from_the_command_line(tmp_path, cli_env,
                                                                                          monkeypatch):
    """docs/development.md's label-map model: trained on the built-in label maps; its runtime option given at
    predict wins over the checkpoint's (flip averaging changes the pictures), its generator sees one-hot maps."""
    from pix2pix_lit.data.labels import semantic_channels
    from pix2pix_lit.data.synthetic import CLASSES

    (code,) = readme_blocks("python", "A label-map model with a runtime option")
    (config,) = readme_blocks("yaml", "A label-map model with a runtime option")
    (tmp_path / "labels_l1.py").write_text(code)
    (tmp_path / "labels.yaml").write_text(config.replace("pix2pix_lit.models.labels_l1.", "labels_l1."))
    env = dict(cli_env, PYTHONPATH=f"{tmp_path}:{cli_env.get('PYTHONPATH', '')}")
    args = ["-c", str(tmp_path / "labels.yaml"), "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.root", str(tmp_path / "syn"),
            "--data.num_train", "4", "--data.num_val", "2", "--data.num_test", "2", "--data.image_size", "36",
            "--data.load_size", "36", "--data.crop_size", "32", "--data.num_workers", "0", "--data.batch_size", "2",
            "--model.ngf", "4", "--model.num_downs", "5", "--model.fid", "false", "--model.kid", "false",
            "--model.inference_mode", "eval"]
    run(["fit", *args, "--trainer.max_epochs", "1"], env, tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["hyper_parameters"]["flip_average"] is False
    first = next(v for k, v in ckpt["state_dict"].items() if k.startswith("G.") and v.dim() == 4)
    assert first.shape[1] == semantic_channels(len(CLASSES), False, True)  # one-hot classes + the edges
    outputs = {}
    monkeypatch.syspath_prepend(str(tmp_path))  # the predictions in this process (the training ran as typed)
    for flip in ("false", "true"):
        run_in_process(["predict", *args, "--ckpt_path", str(last), "--model.flip_average", flip,
                        "--predict_writer.output_dir", str(tmp_path / flip)], env, tmp_path, check=True)
        outputs[flip] = [p.read_bytes() for p in sorted((tmp_path / flip).glob("*.png"))]
    assert len(outputs["true"]) == 2 and outputs["true"] != outputs["false"]


class _Half(ImageTranslationModel):
    """A model that declares a generator; each test removes one part of the contract."""

    discriminator_names = ()

    def __init__(self, build: bool = True, finish: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if build:
            self.G = nn.Conv2d(3, 3, 1)
            self.G.size_multiple = 1
        if finish:
            self.finish_networks()

    def configure_optimizers(self):
        return self.adam(self.G.parameters())

    def training_step(self, batch, batch_idx):
        return None

    def generator_for(self, direction="AtoB"):
        return "G"

    def evaluate_batch(self, batch, metrics, dataloader_idx):
        return {}


class _Whole(_Half):
    def grid_rows(self, batch):
        return [], 0.0, ""


def test_a_model_that_breaks_the_contract_is_told_how():
    with pytest.raises(TypeError, match="_Half must write grid_rows"):
        _Half(fid=False, kid=False)
    with pytest.raises(TypeError, match="declares the network 'G' but has no nn.Module attribute"):
        _Whole(build=False, fid=False, kid=False)
    unfinished = _Whole(finish=False, fid=False, kid=False)
    with pytest.raises(TypeError, match=r"must end with self.finish_networks\(\)"):
        unfinished.setup("fit")
    whole = _Whole(fid=False, kid=False, ema_decay=0.9)
    assert isinstance(whole.G_ema.module, nn.Conv2d) and whole(torch.zeros(1, 3, 4, 4)).shape == (1, 3, 4, 4)


def test_model_call_means_inference_for_every_model():
    """``model(x)`` is what evaluation runs (the EMA generator in the inference mode), for every model."""
    torch.manual_seed(0)
    model = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.5, "inference_mode": "eval"})
    with torch.no_grad():
        for p in model.G_ema.module.parameters():
            p.add_(0.1)  # the EMA copy now differs from G
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model(x), model.generate(x))
    with torch.no_grad():
        raw = model.G.eval()(x)
    assert not torch.allclose(model(x), raw, atol=1e-4)



def test_every_option_of_every_model_has_its_help_text(tmp_path, cli_env):
    """``pix2pix-lit fit --model.help MODEL`` documents every option: jsonargparse reads each class's ``Args:``,
    so each class that declares an option in its ``__init__`` describes it there (the base: the shared ones)."""
    import inspect

    import docstring_parser

    from pix2pix_lit.models import SPADE, CycleGAN
    from pix2pix_lit.models.cut import CUT
    from pix2pix_lit.models.segmenter import Segmenter

    undocumented, stale = [], []
    for model in (Pix2Pix, CycleGAN, SPADE, CUT, Segmenter):
        for cls in [c for c in model.__mro__ if "__init__" in vars(c) and c.__module__.startswith("pix2pix_lit")]:
            params = inspect.signature(cls.__init__).parameters.values()
            options = {p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD}
            documented = {p.arg_name: p.description for p in docstring_parser.parse(cls.__doc__ or "").params}
            undocumented += [f"{cls.__name__}.{n}" for n in sorted(options) if not documented.get(n)]
            stale += [f"{cls.__name__}.{n}" for n in sorted(set(documented) - options)]
    assert undocumented == [] and stale == []
    out = run_in_process(["fit", "--model.help", "Pix2Pix"], cli_env, tmp_path)
    assert out.returncode == 0
    assert "the official test.py without --eval" in " ".join(out.stdout.split())  # the base's inference_mode
