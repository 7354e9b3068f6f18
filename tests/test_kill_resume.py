"""A training process killed with SIGKILL resumes from its last checkpoint; no checkpoint is ever truncated."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow


MODELS = {  # each model's config, with small networks
    "pix2pix": ("quickstart.yaml", ["--model.num_downs", "5", "--model.ngf", "16", "--model.ndf", "16",
                                    "--data.batch_size", "4"]),
    "cyclegan": ("cyclegan/quickstart.yaml", ["--model.ngf", "8", "--model.ndf", "8", "--data.batch_size", "4"]),
}


def fit_cmd(tmp, model, *extra):
    config, model_args = MODELS[model]
    return [
        sys.executable, "-m", "pix2pix_lit", "fit", "-c", str(REPO / "configs" / config), *model_args,
        "--trainer.default_root_dir", str(tmp / "run"), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--data.root", str(tmp / "syn"), "--data.num_train", "16", "--data.num_val", "2", "--data.num_test", "2",
        "--data.image_size", "36", "--data.load_size", "36", "--data.crop_size", "32", "--data.num_workers", "0",
        "--model.fid", "false",
        "--model.kid", "false", "--trainer.max_epochs", "30", "--periodic_checkpoint.every_n_train_steps", "3",
        "--image_grid.every_n_epochs", "0", *extra,
    ]


def load_all(ckpt_dir):
    steps = {}
    for path in ckpt_dir.glob("*.ckpt"):
        steps[path.name] = torch.load(path, weights_only=True, map_location="cpu")["global_step"]
    return steps


@pytest.mark.parametrize("model", list(MODELS))
def test_sigkill_then_resume(tmp_path, model):
    env = dict(os.environ, PYTHONWARNINGS="ignore", WANDB_MODE="offline")
    proc = subprocess.Popen(fit_cmd(tmp_path, model), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    seen, deadline = 0, time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if (ckpt_dir / "last.ckpt").exists():
                steps = load_all(ckpt_dir)  # every checkpoint on disk loads, even while it is being rewritten
                seen = max(seen, steps.get("last.ckpt", 0))
                if seen >= 15:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_all(ckpt_dir)["last.ckpt"]
    assert killed_at >= 15 and killed_at < 120
    # seeded otherwise than the killed fit: a fit that ignored the checkpoint could not pass for a resumed one
    done = subprocess.run(fit_cmd(tmp_path, model, "--ckpt_path", "last", "--seed_everything", "1"), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {ckpt_dir / 'last.ckpt'}" in done.stdout + done.stderr
    assert load_all(ckpt_dir)["last.ckpt"] == 120  # 30 epochs x 4 batches: the run finished
