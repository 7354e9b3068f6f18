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


_READ_ONE_TENSOR = """
import sys, torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from pix2pix_lit.checkpoint_io import StreamingCheckpointIO

def rss():
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmRSS:")).split()[1]) * 1024

for io in (StreamingCheckpointIO(), TorchCheckpointIO()):  # ours first: Lightning's copies would stay resident
    before = rss()
    ckpt = io.load_checkpoint(sys.argv[1], weights_only=True)
    w = ckpt["state_dict"]["w"].clone()  # what validate/test/predict read: the weights, not the optimizer's moments
    print((rss() - before) / 2**20, float(w.sum()))
"""


def test_reading_maps_the_file_so_unused_tensors_take_no_memory(tmp_path):
    """Adam's moments in a checkpoint cost nothing to a run that never uses them (predict), and overwriting the
    file after reading it leaves what was read intact."""
    import subprocess
    import sys

    w = torch.arange(1000, dtype=torch.float32)
    state = {"state_dict": {"w": w}, "optimizer_states": [{"exp_avg": torch.ones(50_000_000)}], "global_step": 3}
    path = tmp_path / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint(state, path)  # a 200 MB file
    out = subprocess.run([sys.executable, "-c", _READ_ONE_TENSOR, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    grown = {"ours": float(out[0]), "lightning": float(out[2])}  # MiB
    assert float(out[1]) == float(out[3]) == float(w.sum())
    assert grown["lightning"] > 180 and grown["ours"] < 50, grown
    loaded = StreamingCheckpointIO().load_checkpoint(path, weights_only=True)
    StreamingCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 4}, path)
    assert torch.equal(loaded["state_dict"]["w"], w) and loaded["global_step"] == 3
    assert torch.load(path, weights_only=True)["global_step"] == 4


def test_staged_file_replaces_whole_or_leaves_the_earlier_file(tmp_path):
    """atomic.staged_file, the one helper every file writer uses: the target appears only complete; an error in
    the block leaves the earlier file as it was and no temporary file; the suffix is kept (savefig, np.savez)."""
    from pix2pix_lit.atomic import staged_file

    out = tmp_path / "sub" / "plot.png"
    with staged_file(out) as tmp:
        assert tmp.parent == out.parent and tmp.suffix == ".png" and not out.exists()
        tmp.write_bytes(b"first")
    assert out.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with staged_file(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer failed")
    assert out.read_bytes() == b"first" and [p.name for p in out.parent.iterdir()] == ["plot.png"]
