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
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "auto"])
def test_ddp_ranks_agree_and_metrics_equal_single_process(tmp_path, strategy):
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(Path(__file__).parent))
    script = Path(__file__).with_name("ddp_script.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), strategy],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 3
    assert r0["world_size"] == r1["world_size"] == 2 and r0["strategy"] == "DDPStrategy"
    for net in ("G", "D", "G_ema"):
        for k in r0[net]:
            if "running_" in k or "num_batches_tracked" in k:
                # BN running stats are each rank's own until DDP broadcasts rank 0's at the next
                # forward (SyncBatchNorm, which keeps them equal, is GPU-only)
                continue
            assert torch.equal(r0[net][k], r1[net][k]), (net, k)
    init = __import__("ddp_script")
    fresh = init.Pix2Pix(**init.MODEL)
    assert not all(torch.equal(fresh.G.state_dict()[k], r0["G"][k]) for k in r0["G"])  # it did train

    # the same weights validated in one process, on the same 5 images (odd: uneven shards)
    fresh.G.load_state_dict(r0["G"])
    fresh.D.load_state_dict(r0["D"])
    fresh.G_ema.load_state_dict(r0["G_ema"])
    assert not torch.equal(r0["G_ema"]["module.model.model.0.weight"], r0["G"]["model.model.0.weight"])  # averaged
    single = quiet_trainer().validate(fresh, init.datamodule(str(tmp_path / "data")), verbose=False)[0]
    ddp = json.loads((tmp_path / "ddp_metrics.json").read_text())
    assert ddp["val/ssim"] == pytest.approx(single["val/ssim"], abs=1e-4)
    assert ddp["val/psnr"] == pytest.approx(single["val/psnr"], abs=1e-4)
    assert ddp["val/fid"] == pytest.approx(single["val/fid"], rel=1e-3)
    assert ddp["val/kid_mean"] == pytest.approx(single["val/kid_mean"], rel=1e-3, abs=1e-5)
