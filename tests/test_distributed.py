"""Real DDP on CPU: 2 processes over gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import quiet_trainer

pytestmark = pytest.mark.slow


# every way users spell multi-process training; "auto" with devices=2 lets Lightning choose
@pytest.mark.parametrize("strategy,kind", [("ddp", "pix2pix"), ("ddp_spawn", "pix2pix"),
                                           ("ddp_find_unused_parameters_true", "pix2pix"), ("auto", "pix2pix"),
                                           ("ddp", "cyclegan"), ("ddp", "spade")])
def test_ddp_ranks_agree_and_metrics_equal_single_process(tmp_path, strategy, kind):
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(Path(__file__).parent))
    script = Path(__file__).with_name("ddp_script.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), strategy, kind],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 3
    assert r0["world_size"] == r1["world_size"] == 2 and r0["strategy"] == "DDPStrategy"
    init = __import__("ddp_script")
    for net in init.networks(kind):
        for k in r0[net]:
            if "running_" in k or "num_batches_tracked" in k:
                # BN running stats are each rank's own until DDP broadcasts rank 0's at the next
                # forward (SyncBatchNorm, which keeps them equal, is GPU-only)
                continue
            assert torch.equal(r0[net][k], r1[net][k]), (net, k)
    fresh = init.make_model(kind)
    gen = init.networks(kind)[0]
    assert not all(torch.equal(getattr(fresh, gen).state_dict()[k], r0[gen][k]) for k in r0[gen])  # it did train

    # the same weights validated in one process, on the same 5 images (odd: uneven shards)
    for net in init.networks(kind):
        getattr(fresh, net).load_state_dict(r0[net])
    ema = r0[f"{gen}_ema"]
    assert not torch.equal(ema[next(k for k in ema if k.startswith("module."))],
                           r0[gen][next(iter(r0[gen]))])  # averaged, not a copy
    single = quiet_trainer().validate(fresh, init.datamodule(str(tmp_path / "data"), kind), verbose=False)[0]
    ddp = json.loads((tmp_path / "ddp_metrics.json").read_text())
    names = ("ssim_A", "ssim_B", "psnr_A", "fid_A", "fid_B", "kid_mean_B") if kind == "cyclegan" else (
        "ssim", "psnr", "fid", "kid_mean")
    for name in names:
        assert ddp[f"val/{name}"] == pytest.approx(single[f"val/{name}"], rel=1e-3, abs=1e-4), name
