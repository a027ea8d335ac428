"""Which modality mattered: exact Shapley values over every subset of a sample's modalities.

The value of a subset S is the target class's probability when only S is present, computed
through the model's missing-modality path (absent modalities get the learned missing token), so
``v(S)`` is what the model predicts from S alone. With M present modalities the 2^M subsets are
one batch; ``phi_i = sum_{S without i} |S|! (M - |S| - 1)! / M! (v(S + i) - v(S))``, and the
values add up to ``v(all) - v(none)`` (efficiency). Modalities absent from the sample stay absent
in every subset and get 0. More than 6 modalities (64 subsets) is a ConfigError.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from medmodal.errors import ConfigError
from medmodal.explain.base import METHODS, Attribution
from medmodal.explain.forward import Item, expand, target_prob
from medmodal.predictor import Predictor

MAX_MODALITIES = 6


@torch.no_grad()
def subset_values(
    model: torch.nn.Module, item: Item, players: list[str], task: str, target: int
) -> np.ndarray:
    """``v[mask]``: target probability with exactly the ``players`` in bit-mask ``mask``
    present (other modalities as in ``item``), for every mask in ``range(2 ** len(players))``."""
    n = 2 ** len(players)
    masks = torch.arange(n)
    device = next(iter(item.present.values())).device
    present = {m: v.expand(n).clone() for m, v in item.present.items()}
    for j, m in enumerate(players):
        present[m] = ((masks >> j) & 1).bool().to(device)
    inputs = {m: expand(v, n) for m, v in item.inputs.items()}
    return target_prob(model(inputs, present), task, target).cpu().double().numpy()


def shapley_from_values(v: np.ndarray, m: int) -> np.ndarray:
    """Exact Shapley values of ``m`` players from the 2^m subset values ``v`` (bit masks)."""
    phi = np.zeros(m)
    fact = [math.factorial(k) for k in range(m + 1)]
    for mask in range(2**m):
        size = bin(mask).count("1")
        for i in range(m):
            if not mask >> i & 1:
                w = fact[size] * fact[m - size - 1] / fact[m]
                phi[i] += w * (v[mask | 1 << i] - v[mask])
    return phi


class ModalityShapley:
    """Exact Shapley values of the modalities of one sample (probability scale)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        p = self.predictor
        mods = list(p.processors)
        players = [m for m in mods if bool(item.present[m][0])]
        v = subset_values(p.model, item, players, p.label_map.task, target)
        phi = dict(zip(players, shapley_from_values(v, len(players)), strict=True))
        info = {
            "scale": "target probability",
            "p_none": float(v[0]),
            "p_all": float(v[-1]),
            "absent": [m for m in mods if m not in players],
            "subsets": len(v),
        }
        values = np.asarray([phi.get(m, 0.0) for m in mods])
        return Attribution(
            None, "shapley", "modalities", values, mods, info=info,
            seconds=time.perf_counter() - t0,
        )  # fmt: skip


@METHODS.register("shapley")
def shapley(predictor: Predictor, modality: str | None) -> ModalityShapley:
    """Exact Shapley values of the modalities (2 to 6) through the missing-modality path."""
    n = len(predictor.processors)
    if n > MAX_MODALITIES:
        raise ConfigError(
            f"method 'shapley' is exact over 2^M modality subsets and takes at most "
            f"{MAX_MODALITIES} modalities; this model has {n} ({', '.join(predictor.processors)})"
        )
    if n < 2:
        raise ConfigError(
            f"method 'shapley' compares modalities; this model has one "
            f"({', '.join(predictor.processors)})"
        )
    return ModalityShapley(predictor)
