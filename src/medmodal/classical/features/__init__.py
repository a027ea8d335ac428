"""Feature extractors by modality type (importing this package registers them)."""

from medmodal.classical.features import audio, image, signal, tabular, text  # noqa: F401
from medmodal.classical.features.base import (
    FEATURES,
    FeatureCapabilities,
    FeatureExtractor,
    check_type,
    default_features,
    register_features,
)

__all__ = [
    "FEATURES",
    "FeatureCapabilities",
    "FeatureExtractor",
    "check_type",
    "default_features",
    "register_features",
]
