"""The intensity window option shared by the DICOM and NIfTI readers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medmodal.errors import ConfigError


def check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate ``[center, width]`` (finite, width > 0); None means "no fixed window"."""
    if window is None:
        return None
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be [center, width], got {window!r}") from None
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise ConfigError(f"window width must be > 0 and finite, got {window!r}")
    return center, width
