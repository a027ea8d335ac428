"""Attribution methods by name, like the other registries (:mod:`medmodal.registry`).

``METHODS.create(name, options, predictor=..., modality=...)`` builds an *explainer* for one
modality of a trained :class:`~medmodal.predictor.Predictor` (``modality=None`` for the methods
that explain the whole sample: ``shapley``). A method that does not fit the modality or its
encoder is a :class:`~medmodal.errors.ConfigError` naming both, raised before any sample is read;
what an encoder offers is what its registration declares
(:class:`~medmodal.models.encoders.base.EncoderCapabilities`).

=======================  =========================================  ================================
name                     modalities / encoders                      attribution
=======================  =========================================  ================================
``gradcam``              image (2D/3D), audio, signal: encoders     Grad-CAM on the layer the
                         declaring a ``cam_layer`` (baseline_cnn,   encoder declares (its last conv
                         resnet18/50, densenet121, audio_cnn,       block), upsampled to the input
                         cnn1d, resnet1d)
``integrated_gradients`` image, audio, signal: the input tensor;    Integrated Gradients (Captum),
                         text (word / wordpiece, encoders declaring zero baseline (the training
                         a ``token_embedding``): token embeddings   mean after normalisation)
                         summed per word; tabular: numeric features
                         (categorical: occlusion by "missing")
``attention_rollout``    image encoders declaring ``attention``     attention rollout (class-agnostic)
                         (vit; 2D/3D)
``occlusion``            text, any tokenizer (frozen sentence       leave-one-word-out: the note is
                         embeddings: the only one that fits)        re-read without each word
``feature_occlusion``    image, audio, signal, text (ids), tabular; probability drop when a patch /
                         any model (classical learners and          block / lead segment / word /
                         ensembles: their default)                  field is hidden
``shapley``              the whole sample, 2 to 6 modalities        exact Shapley values of the
                                                                    modalities (missing-modality
                                                                    path), probability scale
=======================  =========================================  ================================
"""

from __future__ import annotations

from typing import Any

from medmodal.ensemble.build import is_composite
from medmodal.errors import ConfigError

# the method modules register themselves in METHODS when imported
from medmodal.explain import gradcam, ig, occlusion_map, rollout, shapley, text  # noqa: F401
from medmodal.explain.base import (
    METHODS,
    SAMPLE_METHODS,
    Attribution,
    Explainer,
    encoder_name,
    require_type,
)
from medmodal.predictor import Predictor

__all__ = [
    "METHODS",
    "SAMPLE_METHODS",
    "Attribution",
    "Explainer",
    "create_explainer",
    "default_methods",
    "encoder_name",
    "fits",
    "require_type",
]


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
    if is_composite(predictor.config.model):  # a classical learner or an ensemble
        return ["feature_occlusion"]
    order = ("gradcam", "attention_rollout", "integrated_gradients")
    names = [n for n in order if fits(n, predictor, modality)]
    return names or ["occlusion"]
