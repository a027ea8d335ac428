"""Fitting a :class:`~medmodal.classical.model.ClassicalModel` on a training split: its
processed inputs stacked once, the extractors fitted, then the learner."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medmodal.classical.learners import LEARNERS
from medmodal.data.dataset import MultimodalDataset, collate
from medmodal.errors import ConfigError

if TYPE_CHECKING:
    from medmodal.classical.model import ClassicalModel

EPS = 1e-6


def stack_inputs(
    ds: MultimodalDataset, batch_size: int = 512
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every row's processed inputs (evaluation mode: no augmentation) and presence flags,
    stacked per modality in dataset order."""
    was_train, ds.train = ds.train, False
    inputs: dict[str, list[Any]] = {}
    present: dict[str, list[torch.Tensor]] = {}
    try:
        for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate):
            for m, x in batch["inputs"].items():
                inputs.setdefault(m, []).append(x)
                present.setdefault(m, []).append(batch["present"][m])
    finally:
        ds.train = was_train
    return {m: _cat(v) for m, v in inputs.items()}, {m: torch.cat(v) for m, v in present.items()}


def _cat(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def fit_classical(model: ClassicalModel, train: MultimodalDataset) -> dict[str, Any]:
    """Fit ``model`` on the training split (features, then learner); what it took."""
    if train.labels is None:
        raise ValueError("training data has no labels")
    t0 = time.perf_counter()
    inputs, present = stack_inputs(train)
    model.fit_features(inputs, present)
    x = model.features(inputs, present)
    model.fit_learner(x, np.asarray(train.labels))
    return {"learner": model.learner_name, "features": int(x.shape[1]), "rows": int(x.shape[0]),
            "fit_seconds": time.perf_counter() - t0}  # fmt: skip


def _prepared(model: ClassicalModel, est: Any) -> Any:
    """The learner behind the imputation / scaling its capabilities ask for."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    caps = model.capabilities
    if caps.scaled:
        return make_pipeline(SimpleImputer(keep_empty_features=True), StandardScaler(), est)
    if not caps.handles_nan:
        return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), est)
    return est


def fit_estimator(model: ClassicalModel, x: np.ndarray, y: np.ndarray) -> tuple[Any, list[int]]:
    """The fitted estimator for feature rows ``x`` and encoded labels ``y``, and the class
    indices it saw (binary / multiclass)."""
    est = LEARNERS.create(
        model.learner_name, model.learner_options, task=model.task, seed=model.seed
    )
    rows = _subsample(model, y)
    x, y = x[rows], y[rows]
    if model.task == "survival":
        from sksurv.util import Surv

        target = Surv.from_arrays(event=y[:, 1].astype(bool), time=y[:, 0].astype(float))
        return _prepared(model, est).fit(x, target), []
    if model.task == "multilabel":
        from sklearn.multioutput import MultiOutputClassifier

        return MultiOutputClassifier(_prepared(model, est)).fit(x, y.astype(int)), []
    y = y.astype(int)
    classes = sorted(int(c) for c in np.unique(y))
    if len(classes) < 2:
        raise ConfigError(f"learner {model.learner_name!r}: the training rows hold one class only")
    return _prepared(model, est).fit(x, y), classes


def _subsample(model: ClassicalModel, y: np.ndarray) -> np.ndarray:
    """Rows to fit on: all, or for the SVM a stratified seeded subsample of ``max_train``."""
    cap = model.learner_options.get("max_train", 10000) if model.learner_name == "svm" else None
    n = len(y)
    if cap is None or n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(model.seed)
    labels = y if y.ndim == 1 else np.zeros(n)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(cap * len(idx) / n)))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def estimator_logits(model: ClassicalModel, x: np.ndarray) -> np.ndarray:
    """(B, n_outputs) logits of the fitted estimator for feature rows ``x``."""
    est, task = model.estimator, model.task
    if task == "survival":
        r = np.asarray(est.predict(x), dtype=np.float64)
        if model.capabilities.risk == "positive":
            r = np.log(np.maximum(r, 1e-12))
        return r.reshape(-1, 1)
    if task == "multilabel":
        p = np.column_stack([_positive(q) for q in est.predict_proba(x)])
        return _logit(p)
    return proba_logits(model, est.predict_proba(x))


def proba_logits(model: ClassicalModel, p: np.ndarray) -> np.ndarray:
    """(B, n_outputs) logits from the estimator's ``predict_proba`` columns (``classes_`` order;
    the ONNX graph gives the same columns)."""
    if model.task == "binary":
        col = model.classes_.index(1) if 1 in model.classes_ else None
        pos = p[:, col] if col is not None else np.zeros(len(p))
        return _logit(pos).reshape(-1, 1)
    full = np.full((len(p), model.n_outputs), EPS)
    full[:, model.classes_] = p
    full /= full.sum(1, keepdims=True)
    return np.log(np.clip(full, EPS, 1.0))


def _positive(q: np.ndarray) -> np.ndarray:
    return q[:, 1] if q.shape[1] > 1 else np.zeros(len(q))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)
