"""Run by test_distributed.py and test_multinode.py: k training steps + a validation with 2 CPU processes (gloo
DDP), on one node or as 2 nodes of 1 process.

Each rank saves its G/D weights; rank 0 saves the validation metrics. Lightning's DDP launcher
re-runs this script for rank 1, so it is a script and not a test function.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from pix2pix_lit import Pix2Pix, SyntheticPairedDataModule
from pix2pix_lit.data import SyntheticLabelDataModule, SyntheticUnpairedDataModule
from pix2pix_lit.models import SPADE, CycleGAN

# no dropout: validation runs in the default 'paper' inference mode (per-image batch statistics), and its
# numbers must then equal a 1-process run exactly, whatever the number of processes and eval batch size.
# With an EMA generator, which validation then scores, and which every rank must hold identically.
MODEL = dict(netG="unet", num_downs=5, ngf=8, ndf=8, kid_subset_size=5, n_epochs=1, n_epochs_decay=1, no_dropout=True,
             ema_decay=0.9)


# CycleGAN: instance norm and no dropout, so its metrics too must equal a 1-process run's
CYCLEGAN = dict(netG="resnet_6blocks", ngf=8, ndf=8, kid_subset_size=5, n_epochs=1, n_epochs_decay=1, pool_size=4,
                ema_decay=0.9)


# SPADE with its default synchronised batch norm (plain batch norm on CPU processes), scored in the paper mode
# (per-image statistics: the same on every rank, unlike each rank's running statistics)
SPADE_MODEL = dict(ngf=4, ndf=4, label_nc=5, kid_subset_size=5, n_epochs=1, n_epochs_decay=1, ema_decay=0.9,
                   inference_mode="paper")


def make_model(kind: str):
    return {"cyclegan": lambda: CycleGAN(**CYCLEGAN), "spade": lambda: SPADE(**SPADE_MODEL)}.get(
        kind, lambda: Pix2Pix(**MODEL))()


def networks(kind: str) -> tuple[str, ...]:
    return ("G_A", "G_B", "D_A", "D_B", "G_A_ema", "G_B_ema") if kind == "cyclegan" else ("G", "D", "G_ema")


def datamodule(root: str, kind: str = "pix2pix"):
    make = {"cyclegan": SyntheticUnpairedDataModule, "spade": SyntheticLabelDataModule}.get(kind, SyntheticPairedDataModule)
    size = dict(image_size=72, load_size=72, crop_size=64) if kind == "spade" else dict(image_size=36, load_size=36,
                                                                                      crop_size=32)
    return make(root, num_train=8, num_val=5, num_test=2, batch_size=2, num_workers=0, **size)


class SaveEachRank(pl.Callback):
    """Each process's G/D after training (a callback: with ddp_spawn only the main process returns from fit)."""

    def __init__(self, out: Path, kind: str) -> None:
        self.out, self.kind = out, kind

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({**{n: getattr(pl_module, n).state_dict() for n in networks(self.kind)},
                    "step": trainer.global_step,
                    "strategy": type(trainer.strategy).__name__, "world_size": trainer.world_size},
                   self.out / f"rank{trainer.global_rank}.pt")


def main(out: Path, strategy: str, kind: str, num_nodes: int = 1) -> None:
    pl.seed_everything(0)
    model = make_model(kind)
    trainer = pl.Trainer(  # 2 processes in all: 2 on one node, or 1 on each of 2 nodes (multi-node launch)
        accelerator="cpu", devices=2 // num_nodes, num_nodes=num_nodes, strategy=strategy, max_steps=3,
        check_val_every_n_epoch=100, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[SaveEachRank(out, kind)],
    )
    # each node its own copy of the data, as on a cluster's local disks (one node: the folder the tests read); the
    # trainer knows the node from NODE_RANK (set by hand) or GROUP_RANK (set by torchrun)
    node = trainer.node_rank
    dm = datamodule(str(out / ("data" if node == 0 else f"data-node{node}")), kind)
    trainer.fit(model, dm)
    metrics = trainer.validate(model, dm, verbose=False)[0]
    if trainer.global_rank == 0:
        (out / "ddp_metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "pix2pix",
         int(sys.argv[4]) if len(sys.argv) > 4 else 1)
