"""Fusion methods, registered by name (see :mod:`medmodal.fusion.base`)."""

from medmodal.fusion import (  # noqa: F401  (registers)
    attention,
    concat,
    gated,
    late,
    pooling,
)
from medmodal.fusion.base import FUSIONS, Fusion, FusionOutput

__all__ = ["FUSIONS", "Fusion", "FusionOutput"]
