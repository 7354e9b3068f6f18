"""Callbacks: image grids, prediction files, test reports, the save on SIGTERM."""

from pix2pix_lit.callbacks.images import ImageGridCallback
from pix2pix_lit.callbacks.outputs import PredictionWriter, TestReport
from pix2pix_lit.callbacks.stopping import SaveOnSigterm

__all__ = ["ImageGridCallback", "PredictionWriter", "SaveOnSigterm", "TestReport"]
