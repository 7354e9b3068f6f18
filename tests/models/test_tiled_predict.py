"""``model.predict_tile``: predict in overlapping tiles, blended. The arithmetic is checked on generators whose
answer is known by hand (a per-pixel network gives the whole-image result exactly; two constant tiles blend
linearly across their overlap); the real generators and the command line are checked for what users see."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from pix2pix_lit.errors import ConfigError
from pix2pix_lit.models import Pix2Pix

from conftest import TINY_MODEL, one_error_line, run, run_in_process, tiny


def _predict(model, x):
    return model.predict_step({"source": x, "name": [str(i) for i in range(len(x))]}, 0)["fake"]


def _per_pixel_generator():
    g = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh())
    g.size_multiple = 32  # what the U-Net it stands in for asks
    return g


@pytest.mark.parametrize("tile,overlap", [(64, 16), (64, 0), (96, 48), (32, None)])
def test_a_per_pixel_generator_gives_the_whole_image_result_in_tiles(tile, overlap):
    torch.manual_seed(0)
    model = Pix2Pix(**TINY_MODEL, predict_tile=tile, predict_tile_overlap=overlap)
    model.G = _per_pixel_generator()
    x = torch.rand(2, 3, 100, 150) * 2 - 1  # padded to 128x160: tiles that do not divide it, the last flush
    tiled = _predict(model, x)
    model.runner.tile = 0
    whole = _predict(model, x)
    assert tiled.shape == whole.shape == (2, 3, 100, 150)
    assert (tiled - whole).abs().max() < 1e-6


def test_label_maps_are_padded_as_ids_and_encoded_per_tile_with_the_same_result():
    """A label map is padded as ids and one-hot encoded per tile (never whole): the same as encoding the whole map
    and reflect-padding the one-hot, by hand; and in tiles the same again for a per-pixel generator."""
    import torch.nn.functional as F

    from pix2pix_lit.data.labels import one_hot

    torch.manual_seed(0)
    model = Pix2Pix(**{**TINY_MODEL, "label_nc": 5, "no_instance": False}, predict_tile=64, predict_tile_overlap=16)
    g = nn.Sequential(nn.Conv2d(6, 3, 1), nn.Tanh())  # 5 classes + the edge channel
    g.size_multiple = 32
    model.G = g
    ids = torch.randint(0, 5, (1, 1, 90, 140), dtype=torch.uint8)
    edges = (torch.rand(1, 1, 90, 140) > 0.9).float()
    batch = {"source": ids, "edges": edges, "name": ["x"]}
    tiled = model.predict_step(batch, 0)["fake"]
    model.runner.tile = 0
    whole = model.predict_step(batch, 0)["fake"]
    by_hand = torch.cat([one_hot(ids, 5), edges], 1)
    by_hand = F.pad(by_hand, (10, 10, 3, 3), mode="reflect")  # to 96x160, centred
    expected = g(by_hand)[..., 3:3 + 90, 10:10 + 140]
    assert whole.shape == (1, 3, 90, 140)
    assert (whole - expected).abs().max() < 1e-6 and (tiled - whole).abs().max() < 1e-6


class _CallNumber(nn.Module):
    """Returns its call count everywhere: tile k is all k."""
    size_multiple = 32

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.calls += 1
        return torch.full((x.shape[0], 3, *x.shape[-2:]), float(self.calls - 1))


def test_two_tiles_blend_linearly_across_their_overlap():
    model = Pix2Pix(**TINY_MODEL, predict_tile=64, predict_tile_overlap=32)
    model.G = _CallNumber()
    out = _predict(model, torch.zeros(1, 3, 64, 96))[0, 0]  # tiles at columns 0-63 (all 0) and 32-95 (all 1)
    assert model.G.calls == 2
    row = out[10].numpy()
    assert np.all(row[:32] == 0) and np.all(row[64:] == 1)
    # in the overlap (columns 32..63) tile 0's weight falls and tile 1's rises, by hand: w0 = (63 - c + 0.5) / 32,
    # w1 = (c - 32 + 0.5) / 32, value w1 / (w0 + w1)
    c = np.arange(32, 64)
    expected = (c - 32 + 0.5) / ((63 - c + 0.5) + (c - 32 + 0.5))
    assert np.allclose(row[32:64], expected, atol=1e-6)
    assert np.all(np.diff(row[32:64]) > 0)
    assert torch.equal(out, out[:1].expand_as(out))  # every row the same: the tiles split columns only


def test_the_resnet_generator_in_tiles_is_close_not_equal_and_one_tile_is_exact():
    torch.manual_seed(0)
    model = Pix2Pix(**{**TINY_MODEL, "netG": "resnet_9blocks", "norm": "instance", "no_dropout": True},
                    predict_tile=64)
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    model.runner.tile = 0
    whole = _predict(model, x)
    model.runner.tile = 128  # one tile covers the image: the whole-image path
    assert torch.equal(_predict(model, x), whole)
    model.runner.tile = 64
    tiled = _predict(model, x)
    # instance norm sees each tile's statistics and the receptive field ends at the tile: close, not the same
    diff = (tiled - whole).abs()
    assert 0 < diff.mean() < 0.5 and diff.max() < 2


def test_bad_tile_options_are_refused():
    with pytest.raises(ConfigError, match=r"model.predict_tile=48 must be a multiple of 32"):
        Pix2Pix(**TINY_MODEL, predict_tile=48)
    with pytest.raises(ConfigError, match=r"model.predict_tile=64: give a tile side in pixels \(with model.predict_fit pad"):
        Pix2Pix(**TINY_MODEL, predict_tile=64, predict_fit="resize")
    with pytest.raises(ConfigError, match=r"model.predict_tile_overlap=40 must be between 0 and half"):
        Pix2Pix(**TINY_MODEL, predict_tile=64, predict_tile_overlap=40)
    with pytest.raises(ConfigError, match="model.predict_tile=-1"):
        Pix2Pix(**TINY_MODEL, predict_tile=-1)


@pytest.mark.slow
def test_predict_in_tiles_from_the_command_line(tmp_path, cli_env):
    args = tiny(tmp_path / "run", tmp_path / "syn", "--trainer.max_steps", "1", "--trainer.logger", "false",
                "--model.fid", "false", "--model.kid", "false")
    run(["fit", *args], cli_env, tmp_path)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 130, 3), dtype=np.uint8)).save(big / "x.png")
    out = tmp_path / "tiles"
    run_in_process(["predict", *args, "--ckpt_path", ckpt, "--data.predict_dir", str(big), "--model.predict_tile", "64",
                    "--predict_writer.output_dir", str(out)], cli_env, tmp_path, check=True)  # fit ran as a process
    assert Image.open(out / "x.png").size == (130, 70)
    bad = run_in_process(["predict", *args, "--ckpt_path", ckpt, "--data.predict_dir", str(big),
                          "--model.predict_tile", "40", "--predict_writer.output_dir", str(tmp_path / "no")],
                         cli_env, tmp_path)
    assert bad.returncode == 2 and "model.predict_tile=40 must be a multiple of 32" in one_error_line(bad)
    assert not (tmp_path / "no").exists()
