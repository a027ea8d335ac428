"""Encoders for every modality, registered by name (see :mod:`.base`)."""

from medmodal.models.encoders import audio, image, signal, tabular, text  # noqa: F401  (registers)
from medmodal.models.encoders.base import DEFAULT_ENCODER, ENCODERS, create_encoder

__all__ = ["DEFAULT_ENCODER", "ENCODERS", "create_encoder"]
