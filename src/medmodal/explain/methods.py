"""Attribution methods by name, like the other registries (:mod:`medmodal.registry`).

``METHODS.create(name, options, predictor=..., modality=...)`` builds an *explainer* for one
modality of a trained :class:`~medmodal.predictor.Predictor` (``modality=None`` for the methods
that explain the whole sample: ``shapley``). A method that does not fit the modality or its
encoder is a :class:`~medmodal.errors.ConfigError` naming both, raised before any sample is read.

=======================  =========================================  ================================
name                     modalities / encoders                      attribution
=======================  =========================================  ================================
``gradcam``              image (baseline_cnn, resnet18/50,          Grad-CAM on the last conv block,
                         densenet121; 2D/3D), audio (audio_cnn),    upsampled to the input
                         signal (cnn1d, resnet1d)
``integrated_gradients`` image, audio, signal: the input tensor;    Integrated Gradients (Captum),
                         text (word / wordpiece): token embeddings  zero baseline (the training
                         summed per word; tabular: numeric features mean after normalisation)
                         (categorical: occlusion by "missing")
``attention_rollout``    image (vit; 2D/3D)                         attention rollout (class-agnostic)
``occlusion``            text, any tokenizer (frozen sentence        leave-one-word-out: the note is
                         embeddings: the only one that fits)         re-read without each word
``shapley``              the whole sample, 2 to 6 modalities        exact Shapley values of the
                                                                    modalities (missing-modality
                                                                    path), probability scale
=======================  =========================================  ================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from medmodal.errors import ConfigError
from medmodal.explain.forward import Item
from medmodal.models.encoders.base import DEFAULT_ENCODER
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
    name = spec.name if spec is not None else None
    return name or DEFAULT_ENCODER.get(predictor.schema.modalities[modality].type, "?")


def require_type(
    predictor: Predictor, modality: str | None, method: str, types: tuple[str, ...]
) -> str:
    """``modality``'s type when ``method`` explains that type, else a ConfigError naming both."""
    mtype = modality_type(predictor, modality, method)
    if mtype not in types:
        raise ConfigError(
            f"method {method!r} does not fit modality {modality!r} ({mtype}); "
            f"it explains {', '.join(types)} modalities"
        )
    return mtype


def create_explainer(
    name: str,
    predictor: Predictor,
    modality: str | None,
    options: dict[str, Any] | None = None,
) -> Explainer:
    """``METHODS.create`` with the context filled in (unknown name / option: ConfigError).
    The model is put in evaluation mode: explanations are of what it predicts."""
    METHODS.get(name)
    predictor.model.eval()
    if name in SAMPLE_METHODS and modality is not None:
        raise ConfigError(f"method {name!r} explains whole samples, not modality {modality!r}")
    return METHODS.create(name, options, predictor=predictor, modality=modality)


def fits(name: str, predictor: Predictor, modality: str | None) -> bool:
    """True when ``name`` can explain ``modality`` of this model."""
    try:
        create_explainer(name, predictor, modality)
    except ConfigError:
        return False
    return True


def default_methods(predictor: Predictor, modality: str) -> list[str]:
    """The methods run when none is named: Grad-CAM (convolutional encoders) or attention rollout
    (ViT), and Integrated Gradients; leave-one-word-out occlusion for frozen sentence
    embeddings."""
    order = ("gradcam", "attention_rollout", "integrated_gradients")
    names = [n for n in order if fits(n, predictor, modality)]
    return names or ["occlusion"]


def _register_all() -> None:
    """Import the method modules so they register (kept here to avoid import cycles)."""
    from medmodal.explain import gradcam, ig, rollout, shapley, tabular, text  # noqa: F401


_register_all()
