"""Fitted scikit-learn / scikit-survival / LightGBM objects as bytes a checkpoint can hold.

A checkpoint is read with ``torch.load(weights_only=True)``: plain values and tensors only, no
pickle. A fitted estimator goes in as (a uint8 tensor of) the bytes of :mod:`skops.io` (a format that rebuilds only
the types it is told to trust, never runs arbitrary code) and comes back through
:func:`loads`, which trusts the types of the libraries medmodal's learners use and refuses any
other as a :class:`~medmodal.errors.CheckpointError` naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmodal.errors import CheckpointError, ConfigError

TRUSTED_PREFIXES = ("sklearn.", "sksurv.", "lightgbm.", "numpy.", "scipy.sparse.")
TRUSTED_TYPES = ("collections.OrderedDict", "builtins.slice")


def _skops() -> Any:
    try:
        import skops.io as sio
    except ImportError:
        raise ConfigError(
            "classical learners need skops to store fitted models: pip install skops"
        ) from None
    return sio


def dumps(obj: Any) -> torch.Tensor:
    """A fitted estimator (or any object of the trusted libraries) as its skops bytes in a
    uint8 tensor (what a checkpoint holds)."""
    raw = bytearray(_skops().dumps(obj))
    return torch.frombuffer(raw, dtype=torch.uint8).clone()


def loads(blob: torch.Tensor | np.ndarray | bytes, where: str = "checkpoint") -> Any:
    """The object :func:`dumps` wrote; a type outside the trusted libraries is refused."""
    sio = _skops()
    if isinstance(blob, torch.Tensor):
        blob = blob.numpy()
    data = blob.tobytes() if isinstance(blob, np.ndarray) else bytes(blob)
    try:
        types = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a damaged or foreign byte string
        raise CheckpointError(
            f"{where}: the stored classical model cannot be read ({exc})"
        ) from None
    bad = [t for t in types if not (t.startswith(TRUSTED_PREFIXES) or t in TRUSTED_TYPES)]
    if bad:
        raise CheckpointError(
            f"{where}: the stored classical model holds types medmodal does not trust: "
            f"{', '.join(sorted(bad)[:5])}"
        )
    return sio.loads(data, trusted=list(types))
