"""Temperature scaling (Guo et al. 2017): logits divided by one fitted T > 0.

T minimises the negative log-likelihood of held-out (validation) logits, found by a bounded
scalar search over log T in [log 0.05, log 20]. One T for a binary or multiclass model (so the
argmax and the sign of a binary logit, hence every decision at p > 0.5, are unchanged); one T
per label for a multilabel model (each label is its own binary problem). T > 1 softens
over-confident probabilities, T < 1 sharpens under-confident ones.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

T_BOUNDS = (0.05, 20.0)


def nll(logits: np.ndarray, y: np.ndarray, task: str) -> float:
    """Mean negative log-likelihood of ``logits`` (binary (N,) or (N, 1); multiclass (N, K)
    with class indices ``y``; multilabel (N, K) with 0/1 ``y``, mean over every cell)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if task == "multiclass":
        return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(z)), y.astype(int)]))
    if task == "binary":
        z, y = z.reshape(-1), y.reshape(-1)
    return float(np.mean(np.logaddexp(0.0, z) - y.astype(np.float64) * z))


def fit_temperature(logits: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Temperatures minimising validation NLL: shape (1,) for binary / multiclass, (K,) for
    multilabel (one per label). Raises ValueError on empty or non-finite logits."""
    z = np.asarray(logits, dtype=np.float64)
    if z.size == 0 or not np.isfinite(z).all():
        raise ValueError("temperature scaling needs finite logits of at least one sample")
    y = np.asarray(y)
    if task == "multilabel":
        return np.array([_fit_one(z[:, j], y[:, j], "binary") for j in range(z.shape[1])])
    if task not in ("binary", "multiclass"):
        raise ValueError(f"no temperature scaling for a {task!r} task")
    return np.array([_fit_one(z, y, task)])


def _fit_one(z: np.ndarray, y: np.ndarray, task: str) -> float:
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(
        lambda s: nll(z / math.exp(s), y, task),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """``logits / T`` (T broadcasts: one value, or one per label over the last axis)."""
    return np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
