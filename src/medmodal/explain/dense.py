"""Dense inputs (images, volumes, spectrograms, signals): what kind of map, what to draw it on."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch

from medmodal.data.preprocess.signal import SignalProcessor
from medmodal.predictor import Predictor

DENSE_TYPES = ("image", "audio", "signal")


def dense_kind(predictor: Predictor, modality: str) -> str:
    """``image`` / ``volume`` (3D image) / ``spectrogram`` (audio) / ``signal``."""
    mtype = predictor.schema.modalities[modality].type
    if mtype == "audio":
        return "spectrogram"
    if mtype == "signal":
        return "signal"
    dims = int(predictor.processors[modality].info().get("spatial_dims", 2))
    return "volume" if dims == 3 else "image"


def processed_input(x: torch.Tensor) -> np.ndarray:
    """The batch-of-one input without its batch axis, as float32 numpy (channels first)."""
    return x.detach()[0].float().cpu().numpy()


def channel_sum(values: np.ndarray, kind: str) -> np.ndarray:
    """An input-shaped attribution reduced to the drawn map: summed over image / spectrogram
    channels (axis 0); a signal keeps one row per lead."""
    return values if kind == "signal" else values.sum(axis=0)


def draw_info(predictor: Predictor, modality: str) -> dict[str, object]:
    """What a drawing needs beyond the values: a signal's lead names and sampling rate."""
    if predictor.schema.modalities[modality].type != "signal":
        return {}
    proc = cast(SignalProcessor, predictor.processors[modality])  # a signal modality's processor
    info = proc.info()
    n = int(info.get("in_channels") or 0)
    return {"leads": lead_labels(proc.leads, proc.lead_fallback, n), "fs": info.get("fs")}


def lead_labels(leads: object, fallback: bool, n: int) -> list[str]:
    """One label per output channel: the lead (``MLII/V5`` for a priority group)."""
    if isinstance(leads, (str, int)):
        leads = [leads]
    if isinstance(leads, list):
        flat = all(isinstance(g, (str, int)) for g in leads)
        groups = (
            [leads] if fallback and flat else [g if isinstance(g, list) else [g] for g in leads]
        )
        if len(groups) == n:
            return ["/".join(str(x) for x in g) for g in groups]
    return [f"lead {i + 1}" for i in range(n)]
