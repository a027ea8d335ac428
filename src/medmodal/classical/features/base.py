"""Feature extractors: one modality's processed batch -> a (B, F) matrix for a classical learner.

Registered like encoders (:data:`FEATURES`, with the modality types each accepts) and built from
the fitted processor (``info``, and the processor itself, e.g. a note's vocabulary); ``fit`` sees
the training split's processed inputs only; fitted attributes end in ``_`` and travel in the
checkpoint as plain values, tensors or :mod:`medmodal.classical.persist` bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medmodal.errors import ConfigError
from medmodal.registry import Registry

FEATURES: Registry[FeatureExtractor] = Registry("feature extractor", context=("info", "processor"))
_TYPES: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class FeatureCapabilities:
    """``types``: the modality types it reads; ``default``: part of its type's default set
    (``dims``: only for inputs with this many spatial dimensions, e.g. 2D images)."""

    types: tuple[str, ...]
    default: bool = False
    dims: int | None = None
    when: Callable[[Mapping[str, Any]], bool] | None = None  # default only when it holds


def register_features(
    name: str,
    types: tuple[str, ...],
    *,
    default: bool = False,
    dims: int | None = None,
    when: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    """Register an extractor constructor ``fn(info, processor, **typed options)``; ``default``:
    in its types' default set (for ``dims`` spatial dimensions, when ``when(info)`` holds)."""
    _TYPES[name] = types
    return FEATURES.register(name, capabilities=FeatureCapabilities(types, default, dims, when))


def default_features(mtype: str, info: Mapping[str, Any]) -> list[str]:
    """The extractors a modality of type ``mtype`` gets when the config names none."""
    dims = spatial_dims(info)
    out = []
    for name in FEATURES.ordered():
        cap: FeatureCapabilities = FEATURES.capabilities(name)
        fits = (cap.dims is None or cap.dims == dims) and (cap.when is None or cap.when(info))
        if mtype in cap.types and cap.default and fits:
            out.append(name)
    if mtype == "text" and info.get("tokenizer") == "minilm_embed":
        return ["embedding"]
    return out


def spatial_dims(info: Mapping[str, Any]) -> int | None:
    size = info.get("size")
    return len(size) if isinstance(size, list | tuple) else None


def check_type(name: str, mtype: str, modality: str) -> None:
    """ConfigError unless extractor ``name`` reads modalities of type ``mtype``."""
    types = _TYPES.get(name) or FEATURES.capabilities(name).types
    if mtype not in types:
        fits = [n for n in FEATURES.names() if mtype in FEATURES.capabilities(n).types]
        raise ConfigError(
            f"model.features.{modality}: {name!r} reads {', '.join(types)} inputs, not "
            f"{mtype}; for {mtype}: {', '.join(fits) or 'none registered'}"
        )


class FeatureExtractor:
    """Base: ``fit(x, present)`` on training inputs, ``transform(x)`` -> (B, F) float32,
    ``names()`` (one per column), ``state_dict`` / ``load_state_dict`` of the ``*_``
    attributes. ``x`` is a collated batch of one modality (a tensor or a dict of tensors)."""

    def fit(self, x: Any, present: np.ndarray) -> FeatureExtractor:
        return self

    def transform(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in vars(self).items() if k.endswith("_") and v is not None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            if not k.endswith("_"):
                raise ValueError(f"unexpected feature state {k!r}")
            setattr(self, k, v.numpy() if isinstance(v, torch.Tensor) else v)


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    return v


def present_rows(x: Any, present: np.ndarray) -> Any:
    """The rows of ``x`` (tensor or dict of tensors) where ``present`` is True."""
    idx = torch.from_numpy(np.flatnonzero(present))
    if isinstance(x, dict):
        return {k: v.index_select(0, idx) for k, v in x.items()}
    return x.index_select(0, idx)


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
