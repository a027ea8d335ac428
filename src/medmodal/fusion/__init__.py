"""Fusion methods, registered by name (see :mod:`medmodal.fusion.base`)."""

from medmodal.fusion import concat  # noqa: F401  (registers)
from medmodal.fusion.base import FUSIONS, Fusion

__all__ = ["FUSIONS", "Fusion"]
