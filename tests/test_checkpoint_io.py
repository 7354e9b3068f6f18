"""StreamingCheckpointIO: the file Lightning's writer would write, atomically, without an in-memory copy."""

import pickle

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pix2pix_lit.checkpoint_io import StreamingCheckpointIO


def test_writes_what_torch_save_writes_and_leaves_no_partial_file(tmp_path):
    state = {"state_dict": {"w": torch.randn(64, 64).to(memory_format=torch.contiguous_format)}, "global_step": 7}
    path = tmp_path / "sub" / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint(state, path)
    TorchCheckpointIO().save_checkpoint(state, tmp_path / "lightning.ckpt")
    for p in (path, tmp_path / "lightning.ckpt"):
        loaded = torch.load(p, weights_only=True)
        assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    assert sorted(x.name for x in path.parent.iterdir()) == ["last.ckpt"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint({"global_step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("cannot pickle this")

    with pytest.raises(pickle.PicklingError):
        StreamingCheckpointIO().save_checkpoint({"global_step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [x.name for x in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_cli_trains_with_it(tmp_path, monkeypatch):
    from pix2pix_lit import cli

    from conftest import REPO

    monkeypatch.setattr("sys.argv", ["pix2pix-lit"])  # pytest's own arguments are not the CLI's
    args = ["-c", str(REPO / "configs" / "quickstart.yaml"), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    trainer = cli.build_cli(args, args, run=False).trainer
    assert isinstance(trainer.strategy.checkpoint_io, StreamingCheckpointIO)
