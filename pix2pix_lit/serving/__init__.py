"""From checkpoint to product: ``export`` (TorchScript, ONNX) and the HTTP service (``app``, its model runner
and batcher in ``engine``)."""
