"""Sound features: statistics over time of each log-mel / MFCC row of the processed input."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmodal.classical.features.base import FeatureExtractor, as_numpy, register_features


class AudioStats(FeatureExtractor):
    """Per feature row (mel band or MFCC): mean, std, min, max, 10/50/90th percentiles over
    time and the mean absolute frame-to-frame change (a delta)."""

    STATS = ("mean", "std", "min", "max", "p10", "p50", "p90", "delta")

    def __init__(self, info: dict[str, Any]) -> None:
        self.rows = int(info.get("n_features", 0))
        self.kind = str(info.get("features", "feature"))

    def transform(self, x: torch.Tensor) -> np.ndarray:
        v = as_numpy(x).reshape(x.shape[0], self.rows, -1)
        q = np.percentile(v, [10, 50, 90], axis=2)
        delta = np.abs(np.diff(v, axis=2)).mean(2) if v.shape[2] > 1 else np.zeros(v.shape[:2])
        stats = [v.mean(2), v.std(2), v.min(2), v.max(2), q[0], q[1], q[2], delta]
        return np.stack(stats, axis=2).reshape(x.shape[0], -1).astype(np.float32)

    def names(self) -> list[str]:
        return [f"{self.kind}[{r}]_{s}" for r in range(self.rows) for s in self.STATS]


@register_features("audio_stats", ("audio",), default=True)
def audio_stats(info: dict[str, Any], processor: Any) -> FeatureExtractor:
    """Log-mel / MFCC row statistics over time."""
    return AudioStats(info)
