"""Callbacks: image grids, prediction files, test reports."""

from pix2pix_lit.callbacks.images import ImageGridCallback
from pix2pix_lit.callbacks.outputs import PredictionWriter, TestReport

__all__ = ["ImageGridCallback", "PredictionWriter", "TestReport"]
