"""Serving a trained generator: the HTTP service (``app``) and its model runner and batcher (``engine``)."""
