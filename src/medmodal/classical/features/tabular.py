"""Record features: the processed fields as they are (scaled numbers, missing indicators) and
each categorical field one-hot over the categories seen in training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmodal.classical.features.base import (
    FeatureExtractor,
    as_numpy,
    present_rows,
    register_features,
)


class Fields(FeatureExtractor):
    def __init__(self, info: dict[str, Any]) -> None:
        self.numeric_names = list(info.get("feature_names", []))[: int(info.get("n_numeric", 0))]
        self.categorical = list(info.get("categorical_columns", []))
        self.levels_: list[list[int]] | None = None

    def fit(self, x: dict[str, torch.Tensor], present: np.ndarray) -> Fields:
        cats = present_rows(x, present)["categorical"].numpy()
        self.levels_ = [sorted(int(v) for v in np.unique(cats[:, j])) for j in range(cats.shape[1])]
        return self

    def transform(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        assert self.levels_ is not None
        parts = [as_numpy(x["numeric"])]
        cats = x["categorical"].numpy()
        for j, levels in enumerate(self.levels_):
            parts.append((cats[:, j, None] == np.asarray(levels)[None, :]).astype(np.float32))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def names(self) -> list[str]:
        assert self.levels_ is not None
        out = list(self.numeric_names)
        for c, levels in zip(self.categorical, self.levels_, strict=True):
            out += [f"{c}={v}" for v in levels]
        return out

    def field_of(self) -> list[str]:
        """The record field each feature comes from (indicators and levels to their field)."""
        out = [n.removesuffix("__missing") for n in self.numeric_names]
        for c, levels in zip(self.categorical, self.levels_ or [], strict=True):
            out += [c] * len(levels)
        return out


@register_features("fields", ("tabular",), default=True)
def fields(info: dict[str, Any], processor: Any) -> FeatureExtractor:
    """The record's fields: scaled numbers, missing indicators, one-hot categories."""
    return Fields(info)
