"""Exports of a trained checkpoint to other runtimes (:mod:`.onnx`)."""

__all__ = ["onnx"]
