"""Per-feature attributions for tabular records.

Numeric features (scaled columns, then missing indicators): Integrated Gradients from the zero
baseline (the training mean after scaling; indicators: "not missing"). Categorical features are
embedding indices, which have no straight path to integrate along: each one is occluded instead,
its value replaced by the "missing" index; its attribution is the drop of the target score.
Both are on the target-logit scale, one value per name in ``processor.feature_names()``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from medmodal.data.preprocess.tabular import MISSING_INDEX
from medmodal.explain.base import Attribution
from medmodal.explain.forward import Item, ModelScore
from medmodal.explain.integrate import integrate
from medmodal.predictor import Predictor


class TabularIG:
    """Numeric IG + categorical occlusion, one value per feature."""

    def __init__(self, predictor: Predictor, modality: str, steps: int, batch: int) -> None:
        self.predictor, self.modality = predictor, modality
        self.steps, self.batch = steps, batch

    def _score(self, item: Item, target: int, cat: torch.Tensor) -> ModelScore:
        def assemble(num: torch.Tensor) -> dict[str, Any]:
            return {"numeric": num, "categorical": cat.expand(num.shape[0], -1)}

        p = self.predictor
        return ModelScore(p.model, item, self.modality, p.label_map.task, target, assemble)

    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        x = item.inputs[self.modality]
        num, cat = x["numeric"], x["categorical"]
        score = self._score(item, target, cat)
        info: dict[str, Any] = {"scale": "target logit", "steps": self.steps}
        values: list[float] = []
        if num.shape[1]:
            attr, delta = integrate(score, num.float(), self.steps, batch=self.batch)
            values += attr[0].cpu().tolist()
            info["convergence_delta"] = delta
        values += self._categorical(item, target, num, cat)
        names = self.predictor.processors[self.modality].info()["feature_names"]
        return Attribution(
            self.modality, "integrated_gradients", "features", np.asarray(values), list(names),
            info=info, seconds=time.perf_counter() - t0,
        )  # fmt: skip

    @torch.no_grad()
    def _categorical(
        self, item: Item, target: int, num: torch.Tensor, cat: torch.Tensor
    ) -> list[float]:
        """Score drop when each categorical value is replaced by the missing index."""
        k = int(cat.shape[1])
        if k == 0:
            return []
        variants = cat.repeat(k + 1, 1)
        variants[torch.arange(1, k + 1), torch.arange(k)] = MISSING_INDEX
        batch = variants.shape[0]
        score = ModelScore(
            self.predictor.model, item, self.modality, self.predictor.label_map.task, target,
            assemble=lambda n: {"numeric": n, "categorical": variants},
        )  # fmt: skip
        s = score(num.float().expand(batch, -1)).cpu()
        return (s[0] - s[1:]).tolist()
