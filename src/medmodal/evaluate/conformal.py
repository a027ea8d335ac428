"""Split-conformal prediction sets (Vovk; Romano et al. 2020; Angelopoulos & Bates 2021).

Fitted on a calibration split (the validation split) of n samples for a nominal ``coverage``
1 - alpha: ``qhat`` is the ceil((n + 1)(1 - alpha))-th smallest calibration score (the
finite-sample correction); when that rank exceeds n, ``qhat`` is infinite and every set holds
every class. Under exchangeability of calibration and test samples, P(true class in set) >=
1 - alpha. A binary target is two classes ``[negative, positive]``.

* ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): score ``1 - p_true``;
  the set is every class with ``1 - p_k <= qhat``. Smallest sets on average; a set can be
  empty (an input unlike the calibration data).
* ``aps`` (adaptive prediction sets, Romano et al. 2020, *randomised*): classes sorted by
  probability, score ``mass of the classes ranked above + u * p_class`` with ``u`` uniform in
  [0, 1), except the top class, whose score is 0; the set is every class with score ``<= qhat``:
  the classes in order of probability until the mass reaches ``qhat``. Calibration and
  prediction use this same score, so the guarantee is the standard one; the set is never empty
  and always holds the argmax (when the model is right more often than the nominal coverage,
  sets are singletons and coverage is the accuracy). ``u`` comes from a hash of the sample id,
  so a sample gets the same set in the run's predictions and in a later ``predict``.
* multilabel targets: per-label ``lac`` (each label a binary problem with its own ``qhat``; the
  coverage holds per label, not jointly); ``aps`` is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METHODS = ("lac", "aps")


def class_probs(probs: np.ndarray, task: str) -> np.ndarray:
    """(N, K) class probabilities; binary P(positive) (N,) becomes (N, 2) [1 - p, p];
    multilabel (N, K) becomes (N, K, 2) [absent, present] per label."""
    p = np.asarray(probs, dtype=np.float64)
    if task == "binary":
        p = p.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    if task == "multilabel":
        return np.stack([1.0 - p, p], axis=2)
    return p


def id_uniforms(ids: Sequence[Any]) -> np.ndarray:
    """A uniform number in [0, 1) per sample id, fixed by the id (blake2b hash)."""
    out = np.empty(len(ids))
    for i, sid in enumerate(ids):
        digest = hashlib.blake2b(f"aps\0{sid}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def class_scores(p: np.ndarray, method: str, u: np.ndarray | None = None) -> np.ndarray:
    """Nonconformity score of every class (N, K) for (N, K) probabilities ``p``."""
    if method == "lac":
        return 1.0 - p
    if method != "aps":
        raise ValueError(f"unknown conformal method {method!r}; expected one of {METHODS}")
    if u is None:
        raise ValueError("aps needs one uniform number per sample")
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    score_ranked = np.cumsum(ranked, axis=1) - ranked + u[:, None] * ranked
    score_ranked[:, 0] = 0.0  # the top class is always in the set
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, score_ranked, axis=1)
    return scores


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest score (inf when that exceeds n)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    k = math.ceil((len(s) + 1) * coverage)
    return math.inf if k > len(s) else float(s[k - 1])


@dataclass(frozen=True)
class ConformalFit:
    """A fitted conformal predictor: ``qhat`` has one value (binary, multiclass) or one per
    label (multilabel); ``n`` calibration samples. Plain values only (stored in checkpoints)."""

    method: str
    coverage: float
    qhat: list[float]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConformalFit:
        return cls(
            str(d["method"]), float(d["coverage"]), [float(q) for q in d["qhat"]], int(d["n"])
        )

    def sets(self, probs: np.ndarray, task: str, ids: Sequence[Any]) -> np.ndarray:
        """Boolean prediction sets: (N, K) (binary: K = 2 [negative, positive]); multilabel
        (N, K, 2), ``[..., 0]`` "absent" and ``[..., 1]`` "present" in label k's set."""
        p = class_probs(probs, task)
        if task == "multilabel":
            return np.stack(
                [class_scores(p[:, j], "lac") <= q for j, q in enumerate(self.qhat)], axis=1
            )
        u = id_uniforms(ids) if self.method == "aps" else None
        return class_scores(p, self.method, u) <= self.qhat[0]


def fit_conformal(
    probs: np.ndarray,
    y: np.ndarray,
    task: str,
    method: str,
    coverage: float,
    ids: Sequence[Any],
) -> ConformalFit:
    """Fit ``qhat`` on calibration probabilities and labels (binary / multiclass: class
    indices; multilabel: (N, K) 0/1). Raises ValueError for aps on a multilabel target."""
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}; expected one of {METHODS}")
    p, y = class_probs(probs, task), np.asarray(y).astype(int)
    if task == "multilabel":
        if method != "lac":
            raise ValueError("a multilabel target takes per-label lac sets, not aps")
        qhat = []
        for j in range(p.shape[1]):
            scores = class_scores(p[:, j], "lac")[np.arange(len(y)), y[:, j]]
            qhat.append(conformal_quantile(scores, coverage))
        return ConformalFit(method, coverage, qhat, len(y))
    u = id_uniforms(ids) if method == "aps" else None
    scores = class_scores(p, method, u)[np.arange(len(y)), y.reshape(-1)]
    return ConformalFit(method, coverage, [conformal_quantile(scores, coverage)], len(y))


def set_summary(y: np.ndarray, sets: np.ndarray, task: str, names: Sequence[str]) -> dict[str, Any]:
    """Empirical coverage, mean set size and the fraction of empty sets, overall and per true
    class (multilabel: per label, a label's set being a subset of {absent, present}; overall
    coverage is the mean over labels and ``joint_coverage`` the share of samples with every
    label covered)."""
    y = np.asarray(y).astype(int)
    if task == "multilabel":
        covered = np.take_along_axis(sets, y[:, :, None], axis=2)[:, :, 0]
        size = sets.sum(axis=2)
        per = {
            str(n): _cell(covered[:, j], size[:, j], support=int(y[:, j].sum()))
            for j, n in enumerate(names)
        }
        out = _cell(covered.ravel(), size.ravel())
        out.update(n=len(y), joint_coverage=float(covered.all(axis=1).mean()) if len(y) else None)
        return {**out, "per_class": per}
    y = y.reshape(-1)
    covered, size = sets[np.arange(len(y)), y], sets.sum(axis=1)
    per = {str(n): _cell(covered[y == k], size[y == k]) for k, n in enumerate(names)}
    return {**_cell(covered, size), "per_class": per}


def _cell(covered: np.ndarray, size: np.ndarray, **extra: Any) -> dict[str, Any]:
    n = len(covered)
    return {
        "n": n,
        "coverage": float(covered.mean()) if n else None,
        "mean_set_size": float(size.mean()) if n else None,
        "empty": float((size == 0).mean()) if n else None,
        **extra,
    }
