"""Callbacks: image grids, prediction files, test reports, the save on SIGTERM and on SLURM's requeue signal."""

from pix2pix_lit.callbacks.images import ImageGridCallback
from pix2pix_lit.callbacks.outputs import PredictionWriter, TestReport
from pix2pix_lit.callbacks.stopping import Requeued, RequeueOnSlurmSignal, SaveOnSigterm

__all__ = ["ImageGridCallback", "PredictionWriter", "RequeueOnSlurmSignal", "Requeued", "SaveOnSigterm", "TestReport"]
