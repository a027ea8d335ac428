"""Modality processors (read -> fit on train -> transform), registered by modality type."""

from medmodal.data.preprocess import audio, image, signal, tabular, text  # noqa: F401  (registers)
from medmodal.data.preprocess.base import PROCESSORS, ModalityProcessor, create_processor

__all__ = ["PROCESSORS", "ModalityProcessor", "create_processor"]
