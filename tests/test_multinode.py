"""Multi-node training as Lightning runs it, on this machine: 2 "nodes" of 1 process each (NODE_RANK 0/1,
MASTER_ADDR 127.0.0.1, gloo) end with the weights of a 1-node 2-process run; SLURM's requeue signal saves an HPC
checkpoint between batches and requeues, and the requeued job (the same command) finishes exactly as an
uninterrupted run."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, free_port, run, tiny

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent


def _ddp_env() -> dict:
    # one thread per process in both layouts: Lightning gives each process the CPUs / processes *of its node*
    # (1 thread with 2 processes on the node, 2 with 1), and another thread count sums convolutions in another order
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> Path:
    """A 1-node, 2-process run of tests/ddp_script.py: what the 2-node runs must equal."""
    out = tmp_path_factory.mktemp("one_node")
    proc = subprocess.run([sys.executable, str(TESTS / "ddp_script.py"), str(out), "ddp", "pix2pix", "1"],
                          env=_ddp_env(), capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("launcher", ["env", "torchrun"])
def test_two_nodes_train_as_one_node_with_two_processes(tmp_path, one_node, launcher):
    """Two processes started as nodes 0 and 1 (by hand as Lightning documents for a general cluster:
    NODE_RANK, MASTER_ADDR, MASTER_PORT; or by torchrun --nnodes 2) end with the 1-node run's weights."""
    script = [str(TESTS / "ddp_script.py"), str(tmp_path), "ddp", "pix2pix", "2"]
    port = str(free_port())
    commands = {
        "env": lambda rank: ([sys.executable, *script], dict(NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                                                             MASTER_PORT=port)),
        "torchrun": lambda rank: ([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                   "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                                   "--master-port", port, *script], {}),
    }
    nodes = []
    for rank in (0, 1):
        cmd, extra = commands[launcher](rank)
        nodes.append(subprocess.Popen(cmd, env=dict(_ddp_env(), **extra), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-4000:]
    ranks = {(where, r): torch.load(where / f"rank{r}.pt", weights_only=True) for where in (one_node, tmp_path)
             for r in (0, 1)}
    assert {v["world_size"] for v in ranks.values()} == {2} and {v["step"] for v in ranks.values()} == {3}
    reference = ranks[(one_node, 0)]
    for key, saved in ranks.items():
        for net in ("G", "D", "G_ema"):
            for name, value in reference[net].items():
                if "running_" in name or "num_batches_tracked" in name:
                    continue  # each rank's own batch-norm statistics (see test_distributed.py)
                assert torch.equal(saved[net][name], value), (key, net, name)
    one = json.loads((one_node / "ddp_metrics.json").read_text())
    two = json.loads((tmp_path / "ddp_metrics.json").read_text())
    assert one.keys() == two.keys() and all(two[k] == pytest.approx(one[k], rel=1e-6) for k in one)


def test_the_sbatch_template_asks_slurm_for_what_the_trainer_uses():
    """--ntasks-per-node must equal trainer.devices and --nodes trainer.num_nodes (Lightning silently uses fewer
    devices otherwise, Lightning-AI/pytorch-lightning#20391); the template passes SLURM's numbers to the trainer."""
    import yaml

    text = (REPO / "experiments" / "multinode.sbatch").read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", text, re.M))
    trainer = yaml.safe_load((REPO / "configs" / "trainer" / "multinode.yaml").read_text())["trainer"]
    assert int(sbatch["ntasks-per-node"]) == trainer["devices"] and int(sbatch["nodes"]) == trainer["num_nodes"]
    assert sbatch["signal"].startswith("SIGUSR1@") and "requeue" in re.findall(r"^#SBATCH --([a-z-]+)$", text, re.M)
    command = text[text.index("\nsrun "):]
    assert "configs/trainer/multinode.yaml" in command and "--ckpt_path" not in command  # resumes from hpc_ckpt
    assert '--trainer.devices "$SLURM_NTASKS_PER_NODE"' in text and '--trainer.num_nodes "$SLURM_JOB_NUM_NODES"' in text


def _slurm_env(tmp_path: Path) -> dict:
    """What SLURM sets for a 1-task job step, and an ``scontrol`` that records how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1",
                SLURM_JOB_ID="4242", SLURM_JOB_NAME="pix2pix", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                SLURM_NODELIST="localhost", SLURM_JOB_NUM_NODES="1")


def test_slurm_requeue_signal_saves_requeues_and_resumes_exactly(tmp_path):
    env = _slurm_env(tmp_path)
    args = tiny(tmp_path / "requeued", tmp_path / "syn", "--model.fid", "false", "--model.kid", "false",
                "--data.num_train", "12", "--data.batch_size", "2", "--trainer.max_epochs", "3",
                "--trainer.logger", "false", "--image_grid.every_n_epochs", "0")
    whole = run(["fit", *args, "--trainer.default_root_dir", str(tmp_path / "whole"), "--trainer.callbacks", "[]"],
                env, tmp_path)
    assert whole.returncode == 0 and not (tmp_path / "scontrol.log").exists()
    signal_at = ["--trainer.callbacks+=signal_at_step.SignalAtStep", "--trainer.callbacks.step=8"]
    stopped = run(["fit", *args, *signal_at], env, tmp_path, check=False)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "requeued SLURM job 4242" in stopped.stderr.strip().splitlines()[-1]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = torch.load(tmp_path / "requeued" / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["global_step"] == 9  # saved after the batch the signal came in, not in the middle of it
    # SLURM starts the same command again: Lightning resumes from the HPC checkpoint by itself
    again = run(["fit", *args, "--trainer.callbacks", "[]"], env, tmp_path)
    restored = [ln for ln in (again.stderr + again.stdout).splitlines() if "Restored all states from the checkpoint" in ln]
    assert restored and restored[0].rstrip().endswith("hpc_ckpt_1.ckpt"), again.stderr[-3000:]  # resumed, not anew
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "requeued" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 18 and a["epoch"] == b["epoch"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
