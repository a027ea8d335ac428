"""What every attribution method shares: the :class:`Attribution` it returns, the ``METHODS``
registry it is registered in, and the checks that a method fits a modality and its encoder.

The method modules import this one (never :mod:`.methods`, which imports them all), so the
package has no import cycle. What an encoder offers (its Grad-CAM layer, token embedding,
attention maps) is read from its registration (:func:`capabilities`), never from its type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from medmodal.ensemble.build import is_composite
from medmodal.errors import ConfigError
from medmodal.explain.forward import Item
from medmodal.models.encoders.base import (
    EncoderCapabilities,
    encoder_capabilities,
    encoders_offering,
)
from medmodal.models.encoders.base import encoder_name as resolve_encoder
from medmodal.predictor import Predictor
from medmodal.registry import Registry


@dataclass
class Attribution:
    """One explanation of one sample.

    ``kind``: ``image`` (values (H, W)), ``volume`` (D, H, W), ``signal`` (leads, time),
    ``spectrogram`` (features, frames), ``tokens`` / ``features`` / ``modalities`` (one value
    per entry of ``labels``). ``background``: what the values are drawn on (the processed input,
    channels first for images). ``info``: method-specific numbers (e.g. Shapley base values)."""

    modality: str | None
    method: str
    kind: str
    values: np.ndarray
    labels: list[str] | None = None
    background: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self, top: int = 10) -> dict[str, Any]:
        """JSON-friendly: per-entry values for labelled kinds, else the map's statistics."""
        out: dict[str, Any] = {"kind": self.kind, "seconds": round(self.seconds, 4), **self.info}
        v = np.asarray(self.values, dtype=float)
        if self.labels is not None:
            out["values"] = [[lab, float(x)] for lab, x in zip(self.labels, v, strict=True)]
            order = np.argsort(-np.abs(v))[:top]
            out["top"] = [self.labels[i] for i in order]
        else:
            out["shape"] = list(v.shape)
            out.update(min=float(v.min()), max=float(v.max()), abs_sum=float(np.abs(v).sum()))
        return out


class Explainer(Protocol):
    """What a registered method builds: ``explain(item, target)`` for one sample."""

    def explain(self, item: Item, target: int) -> Attribution: ...


METHODS: Registry[Explainer] = Registry("explanation method", context=("predictor", "modality"))
SAMPLE_METHODS = ("shapley",)  # explain the whole sample, not one modality


def modality_type(predictor: Predictor, modality: str | None, method: str) -> str:
    """The modality's type; a ConfigError names an unknown modality and the model's own."""
    mods = predictor.schema.modalities
    if modality is None or modality not in mods:
        raise ConfigError(
            f"method {method!r}: the model has no modality {modality!r}; it has {', '.join(mods)}"
        )
    return mods[modality].type


def encoder_name(predictor: Predictor, modality: str) -> str:
    """The configured encoder name of ``modality`` (or its type's default)."""
    spec = predictor.config.model.encoders.get(modality)
    mtype = predictor.schema.modalities[modality].type
    return resolve_encoder(spec.name if spec is not None else None, mtype)


def capabilities(predictor: Predictor, modality: str) -> EncoderCapabilities:
    """What the encoder of ``modality`` declared at its registration."""
    return encoder_capabilities(encoder_name(predictor, modality))


def offered_by(
    predictor: Predictor, modality: str, offers: Callable[[EncoderCapabilities], object]
) -> str:
    """The encoders of ``modality``'s type that offer a capability, for an error message."""
    names = encoders_offering(offers, predictor.schema.modalities[modality].type)
    return ", ".join(names) or "none registered"


def require_type(
    predictor: Predictor, modality: str | None, method: str, types: tuple[str, ...]
) -> str:
    """``modality``'s type when ``method`` explains that type, else a ConfigError naming both."""
    mtype = modality_type(predictor, modality, method)
    if is_composite(predictor.config.model):
        raise ConfigError(
            f"method {method!r} reads a deep encoder; this model is a classical learner or an "
            "ensemble: explain it with feature_occlusion (per modality) or shapley"
        )
    if mtype not in types:
        raise ConfigError(
            f"method {method!r} does not fit modality {modality!r} ({mtype}); "
            f"it explains {', '.join(types)} modalities"
        )
    return mtype
