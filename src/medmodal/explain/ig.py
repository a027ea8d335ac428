"""Integrated Gradients (Sundararajan et al. 2017, via Captum) on one modality's processed input.

The baseline is zero in the processed space: the training mean after normalisation for images,
spectrograms and standardised signals, an empty sequence for tokens, the scaled mean for tabular
features. Every other modality of the sample is fixed. Token inputs and tables are handled in
:mod:`.text` and :mod:`.tabular` (the path integral itself is :mod:`.integrate`); this module
holds the dense case and the registered entry.
"""

from __future__ import annotations

import time

from medmodal.explain.base import METHODS, Attribution, Explainer, require_type
from medmodal.explain.dense import DENSE_TYPES, channel_sum, dense_kind, draw_info, processed_input
from medmodal.explain.forward import Item, ModelScore
from medmodal.explain.integrate import captum_attr, integrate
from medmodal.explain.tabular import TabularIG
from medmodal.explain.text import token_ig
from medmodal.predictor import Predictor

IG_TYPES = (*DENSE_TYPES, "text", "tabular")


class DenseIG:
    """Integrated Gradients over an image / volume / spectrogram / signal input."""

    def __init__(self, predictor: Predictor, modality: str, steps: int, batch: int) -> None:
        self.predictor, self.modality = predictor, modality
        self.steps, self.batch = steps, batch

    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        p, m = self.predictor, self.modality
        score = ModelScore(p.model, item, m, p.label_map.task, target)
        x = item.inputs[m]
        attr, delta = integrate(score, x, self.steps, batch=self.batch)
        kind = dense_kind(p, m)
        return Attribution(
            m,
            "integrated_gradients",
            kind,
            channel_sum(attr[0].cpu().numpy(), kind),
            background=processed_input(x),
            info={"convergence_delta": delta, "steps": self.steps, **draw_info(p, m)},
            seconds=time.perf_counter() - t0,
        )


@METHODS.register("integrated_gradients")
def integrated_gradients(
    predictor: Predictor,
    modality: str | None,
    steps: int = 32,
    batch: int = 32,
) -> Explainer:
    """Integrated Gradients on the processed input (tokens: per word; tables: per feature)."""
    if steps < 2 or batch < 1:
        raise ValueError(f"steps must be at least 2 and batch at least 1 (got {steps}, {batch})")
    mtype = require_type(predictor, modality, "integrated_gradients", IG_TYPES)
    captum_attr()
    assert modality is not None
    if mtype == "text":
        return token_ig(predictor, modality, steps, batch)
    if mtype == "tabular":
        return TabularIG(predictor, modality, steps, batch)
    return DenseIG(predictor, modality, steps, batch)
