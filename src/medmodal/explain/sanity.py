"""Sanity checks for attributions (Adebayo et al., NeurIPS 2018; Petsiuk et al. 2018).

* Model randomisation: an attribution that barely changes when every weight of the model is
  re-drawn explains the input, not the model. :func:`randomized_predictor` re-initialises every
  layer (its own ``reset_parameters``; other parameters re-drawn around their scale), and
  :func:`rank_correlation` compares the two maps (Spearman).
* Deletion: removing the most-attributed pixels / time steps first (set to 0, the training mean
  after normalisation) should lower the target probability faster than removing them in a random
  order; :func:`deletion_curve` returns the probabilities, :func:`curve_auc` their mean over the
  deleted fraction (lower: the attribution found what the model uses).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from medmodal.data.dataset import MultimodalDataset
from medmodal.explain.forward import Item, ModelScore, item_of, resolve_target
from medmodal.explain.methods import create_explainer
from medmodal.predictor import Predictor


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every weight re-drawn (seeded); running statistics reset."""
    out = copy.deepcopy(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        done: set[int] = set()
        for module in out.modules():
            if hasattr(module, "reset_parameters") and module is not out:
                module.reset_parameters()
                done.update(id(p) for p in module.parameters(recurse=False))
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
        for p in out.parameters():
            if id(p) not in done:
                scale = float(p.std()) if p.numel() > 1 else 0.02
                p.normal_(0.0, scale if scale > 0 else 0.02)
    finally:
        torch.random.set_rng_state(gen_state)
    return out.eval()


def randomized_predictor(predictor: Predictor, seed: int = 0) -> Predictor:
    """The same Predictor (processors, labels) with a randomised copy of its model."""
    return dataclasses.replace(predictor, model=randomize(predictor.model, seed))


def rank_correlation(a: np.ndarray, b: np.ndarray, absolute: bool = True) -> float:
    """Spearman rank correlation of two attribution maps (of |values| by default)."""
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def importance_order(values: np.ndarray, unit_shape: tuple[int, ...]) -> np.ndarray:
    """Flat indices of the input's units (pixels, voxels, time steps), most attributed first;
    a map with a leading channel / lead axis is summed over it."""
    v = np.asarray(values, dtype=float)
    if v.shape != unit_shape:
        v = v.reshape(-1, *unit_shape).sum(axis=0)
    return np.argsort(-v.ravel(), kind="stable")


@torch.no_grad()
def deletion_curve(
    predictor: Predictor,
    item: Item,
    modality: str,
    target: int,
    order: np.ndarray,
    steps: int = 20,
) -> np.ndarray:
    """Target probability after deleting the first 0, 1/steps, ..., all units of ``order``
    (every channel / lead of a unit set to 0), one batch of ``steps + 1`` inputs."""
    x = item.inputs[modality]
    units = int(np.prod(x.shape[2:]))
    cuts = np.round(np.linspace(0, units, steps + 1)).astype(int)
    rank = torch.empty(units, dtype=torch.long)
    rank[torch.as_tensor(order.copy())] = torch.arange(units)
    keep = rank.unsqueeze(0) >= torch.as_tensor(cuts).unsqueeze(1)  # (steps + 1, units)
    mask = keep.view(steps + 1, 1, *x.shape[2:]).to(x.device, x.dtype)
    batch = x.expand(steps + 1, *x.shape[1:]) * mask
    p = predictor
    score = ModelScore(p.model, item, modality, p.label_map.task, target, probability=True)
    return score(batch).cpu().double().numpy()


def curve_auc(curve: np.ndarray) -> float:
    """Area under a deletion curve over the deleted fraction in [0, 1] (trapezoids)."""
    c = np.asarray(curve, dtype=float)
    return float(np.trapezoid(c, dx=1.0 / (len(c) - 1)))


def random_deletion_auc(
    predictor: Predictor,
    item: Item,
    modality: str,
    target: int,
    steps: int = 20,
    repeats: int = 5,
    seed: int = 0,
) -> float:
    """Mean deletion AUC over ``repeats`` random orders (seeded)."""
    x = item.inputs[modality]
    units = int(np.prod(x.shape[2:]))
    rng = np.random.default_rng(seed)
    aucs = [
        curve_auc(deletion_curve(predictor, item, modality, target, rng.permutation(units), steps))
        for _ in range(repeats)
    ]
    return float(np.mean(aucs))


def sanity_checks(
    predictor: Predictor,
    ds: MultimodalDataset,
    modality: str,
    methods: Sequence[str] = ("gradcam", "integrated_gradients"),
    seed: int = 0,
    steps: int = 20,
    repeats: int = 5,
) -> dict[str, dict[str, float]]:
    """Per method, means over the samples of ``ds`` (each explained for its predicted class):
    Spearman correlation with the weight-randomised model's map (of |values| and of the signed
    values), the deletion AUC in attribution order and in random order, and seconds per sample."""
    probs = predictor.predict_proba(ds)
    rand = randomized_predictor(predictor, seed)
    out: dict[str, dict[str, float]] = {}
    for name in methods:
        ex, ex_rand = (
            create_explainer(name, predictor, modality),
            create_explainer(name, rand, modality),
        )
        rows = []
        for i in range(len(ds)):
            item = item_of(ds, i, predictor.device)
            t = resolve_target(predictor.label_map, probs[i], None)
            a, b = ex.explain(item, t), ex_rand.explain(item, t)
            order = importance_order(a.values, tuple(item.inputs[modality].shape[2:]))
            curve = deletion_curve(predictor, item, modality, t, order, steps)
            rand_auc = random_deletion_auc(predictor, item, modality, t, steps, repeats, seed + i)
            rows.append([rank_correlation(a.values, b.values),
                         rank_correlation(a.values, b.values, absolute=False),
                         curve_auc(curve), rand_auc, a.seconds])  # fmt: skip
        keys = ("spearman_abs", "spearman_signed", "deletion_auc", "random_deletion_auc", "seconds")
        out[name] = dict(zip(keys, np.mean(rows, axis=0).tolist(), strict=True))
        out[name]["samples"] = len(ds)
    return out
