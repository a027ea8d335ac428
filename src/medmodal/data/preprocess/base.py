"""The contract every modality processor follows.

A processor turns one manifest row into one model input in two stages:

* ``read(row, root)``: decode the file / cell and apply the *stateless* steps
  (resize, resample, log-mel, band-pass ...). Deterministic, so the dataset
  caches its output: a second epoch never decodes again. Returns ``None`` when
  the modality is absent for that row (empty cell); raises
  :class:`~medmodal.errors.DataError` naming the file when the input is bad.
* ``transform(raw)``: the *fitted* steps (vocabulary, imputation, scaling),
  cheap, learned by ``fit`` on the training split only. Fitted attributes end
  in ``_`` (scikit-learn's contract) and travel in the checkpoint through
  ``state_dict`` as plain Python / tensors, so a checkpoint loads with
  ``torch.load(weights_only=True)``.

``missing()`` returns a placeholder of the right shape for an absent modality;
the model never sees it as data because the ``present`` mask is False.
``augment(x)`` applies training-time random augmentation (default: none).
``info()`` tells encoders what they receive (channels, vocabulary size ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medmodal.data.schema import ModalitySpec
from medmodal.registry import Registry


def is_missing(value: Any) -> bool:
    """True for None, NaN and empty/whitespace strings (an absent cell)."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def resolve_path(value: str, root: Path | None) -> Path:
    """A manifest path: absolute as is, relative to the manifest's ``root`` otherwise."""
    p = Path(str(value)).expanduser()
    if not p.is_absolute() and root is not None:
        p = root / p
    return p


def channel_mean_std(arrays: Sequence[np.ndarray], eps: float = 1e-6) -> tuple[list[float], list[float]]:
    """Mean and std per channel (axis 0) over every other axis, pooled over ``arrays``
    (one pass, float64 sums); std is floored at ``eps``."""
    s = s2 = None
    n = 0
    for r in arrays:
        r64 = np.asarray(r, dtype=np.float64).reshape(r.shape[0], -1)
        s = r64.sum(axis=1) if s is None else s + r64.sum(axis=1)
        s2 = (r64**2).sum(axis=1) if s2 is None else s2 + (r64**2).sum(axis=1)
        n += r64.shape[1]
    if s is None or s2 is None or n == 0:
        raise ValueError("no data to compute channel statistics from")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, eps).tolist()


def uniform(generator: torch.Generator | None) -> float:
    """One U(0, 1) draw from ``generator`` (the dataset's per-epoch augmentation stream)."""
    return float(torch.rand((), generator=generator))


class ModalityProcessor:
    """Base class; subclasses set ``modality_type`` and override the stages."""

    modality_type: ClassVar[str] = ""

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        self.name = name
        self.spec = spec
        self.options: dict[str, Any] = dict(spec.preprocess)

    # -- stage 1: stateless, cached ------------------------------------------------
    def read(self, row: Mapping[str, Any], root: Path | None) -> Any | None:
        raise NotImplementedError

    # -- stage 2: fitted on train ----------------------------------------------------
    def fit(self, raws: Sequence[Any]) -> ModalityProcessor:
        """Learn state from the training split's ``read`` outputs (None = absent)."""
        return self

    def transform(self, raw: Any) -> torch.Tensor:
        raise NotImplementedError

    def missing(self) -> torch.Tensor:
        raise NotImplementedError

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def info(self) -> dict[str, Any]:
        """What the encoder needs to know about the inputs (shape, vocab, ...)."""
        return {}

    # -- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as plain Python / tensors (no pickled objects)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> ModalityProcessor:
        return self

    @property
    def is_fitted(self) -> bool:
        return True


PROCESSORS: Registry[ModalityProcessor] = Registry("modality processor")


def create_processor(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Build the processor for ``spec.type`` (``preprocess.processor`` overrides)."""
    kind = spec.preprocess.get("processor", spec.type)
    return PROCESSORS.create(kind, name=name, spec=spec)
