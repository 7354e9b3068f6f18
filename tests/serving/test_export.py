"""Export to TorchScript and ONNX: outputs equal the PyTorch generator's, the contract is in the file."""

import json

import numpy as np
import pytest
import torch

from pix2pix_lit import Pix2Pix
from pix2pix_lit.serving.export import ExportError, export_generator, load_exported

CASES = [
    ("unet_256", dict(netG="unet_256"), 3, "eval"),
    ("unet-6", dict(netG="unet", num_downs=6), 1, "eval"),
    ("resnet_9blocks", dict(netG="resnet_9blocks"), 3, "eval"),
    ("resnet_9blocks-paper", dict(netG="resnet_9blocks", no_dropout=True), 1, "paper"),
    ("unet-6-paper", dict(netG="unet", num_downs=6, no_dropout=True), 3, "paper"),
]


def model_for(arch: dict, nc: int, mode: str) -> Pix2Pix:
    torch.manual_seed(0)
    model = Pix2Pix(input_nc=nc, output_nc=3, ngf=8, ndf=8, fid=False, kid=False, inference_mode=mode, **arch)
    for name, buf in model.G.named_buffers():  # running statistics that are not the identity
        if name.endswith("running_mean"):
            buf.uniform_(-0.2, 0.2)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name,arch,nc,mode", CASES, ids=[c[0] for c in CASES])
def test_exported_generator_equals_pytorch(tmp_path, fmt, name, arch, nc, mode):
    model = model_for(arch, nc, mode)
    path = tmp_path / ("g.onnx" if fmt == "onnx" else "g.pt")
    contract = export_generator(model.G, path, fmt, mode, nc, 3, model.size_multiple, {"direction": "AtoB"})
    assert max(contract["parity"]["max_abs_diff"]) <= 1e-4
    run, stored = load_exported(path)
    assert stored["input"] == {"name": "source", "layout": "NCHW", "dtype": "float32", "channels": nc,
                               "value_range": [-1, 1], "size_multiple": model.size_multiple, "min_size": model.min_size}
    assert stored["inference_mode"] == mode and stored["direction"] == "AtoB"
    # a third shape, checked against the inference path validation and predict use
    m = model.size_multiple
    side = max(m, 64 // m * m)
    x = torch.rand(3, nc, 2 * side, side, generator=torch.Generator().manual_seed(5)) * 2 - 1
    ref = model.generate(x).numpy()
    out = run(x)
    assert out.shape == ref.shape == (3, 3, 2 * side, side)
    assert float(np.abs(out - ref).max()) <= 1e-4


def test_paper_mode_with_dropout_is_refused_and_writes_nothing(tmp_path):
    model = model_for(dict(netG="unet", num_downs=6), 3, "paper")
    with pytest.raises(ExportError, match="inference_mode=paper keeps dropout on"):
        export_generator(model.G, tmp_path / "g.onnx", "onnx", "paper", 3, 3, model.size_multiple)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_parity_check_leaves_no_file(tmp_path, monkeypatch):
    from pix2pix_lit.serving import export

    model = model_for(dict(netG="unet", num_downs=6), 3, "eval")
    real_load = export.load_exported

    def off_by_a_bit(path):
        run, contract = real_load(path)
        return (lambda x: run(x) + 1e-3), contract

    monkeypatch.setattr(export, "load_exported", off_by_a_bit)
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to 1\.00e-03"):
        export_generator(model.G, tmp_path / "g.pt", "torchscript", "eval", 3, 3, model.size_multiple)
    assert list(tmp_path.iterdir()) == []


def test_contract_is_plain_json_in_the_files(tmp_path):
    import onnx

    model = model_for(dict(netG="unet", num_downs=6), 3, "eval")
    export_generator(model.G, tmp_path / "g.onnx", "onnx", "eval", 3, 3, 64, {"config_sha256": "abc"})
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}
    assert json.loads(props["pix2pix_lit"])["config_sha256"] == "abc"
    export_generator(model.G, tmp_path / "g.pt", "torchscript", "eval", 3, 3, 64, {"config_sha256": "abc"})
    files = {"pix2pix_lit.json": ""}
    torch.jit.load(str(tmp_path / "g.pt"), _extra_files=files)
    assert json.loads(files["pix2pix_lit.json"])["input"]["size_multiple"] == 64
