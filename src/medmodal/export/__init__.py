"""Exports of a trained checkpoint to other runtimes (:mod:`.onnx`)."""
