"""Weighted metric engine shared by :func:`compute_metrics` and the bootstrap.

Every metric is computed for a batch of sample-weight vectors ``W`` of shape (B, N) at once:
one row of ones gives the point estimate, bootstrap resamples are rows of integer counts (how
often each sample was drawn). Resampling with replacement is therefore one matrix product or
one weighted histogram per class instead of B calls into scikit-learn. Undefined values are NaN
here; the public API turns them into None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy import sparse

from medmodal.evaluate._validate import check_threshold, validate_inputs
from medmodal.evaluate.calibration import (
    DEFAULT_BINS,
    calibration_targets,
    check_bins,
    ece_matrix,
    weighted_ece,
)
from medmodal.evaluate.decision import DEFAULT_THRESHOLD, decide

PER_CLASS_METRICS = ("precision", "recall", "specificity", "npv", "f1", "auroc", "auprc")
ALIASES = {"ppv": "precision", "sensitivity": "recall"}
MACRO_METRICS = ("precision", "recall", "f1")
RANK_METRICS = ("auroc", "auprc")


def scalar_metric_names(task: str) -> tuple[str, ...]:
    """Top-level scalar metrics :func:`compute_metrics` returns for ``task`` (bootstrappable)."""
    if task == "survival":
        return ("c_index", "c_index_uno", "mean_auc", "ibs")
    names = ["accuracy", "balanced_accuracy"]
    if task == "binary":
        names += ["precision", "recall", "specificity", "npv", "f1"]
    names += ["precision_macro", "recall_macro", "f1_macro"]
    if task == "multilabel":
        names += ["subset_accuracy", "precision_micro", "recall_micro", "f1_micro"]
        names += ["auroc_micro", "auprc_micro"]
    return (*names, "auroc", "auprc", "brier", "ece")


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (undefined)."""
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ---------------------------------------------------------------- rank-based AUROC / AP


@dataclass(frozen=True)
class Ranking:
    """Samples sorted by score, high to low, for one binary problem."""

    order: np.ndarray  # sample (weight column) of each score, highest score first
    positive: np.ndarray  # (N,) float 0/1 labels in that order
    starts: np.ndarray | None  # first position of each distinct score; None if all distinct


def ranking(positive: np.ndarray, scores: np.ndarray, n_repeat: int = 1) -> Ranking:
    """Sort once; ties (equal scores) are kept together as one threshold.

    ``n_repeat`` > 1: ``scores`` is a flattened (N, n_repeat) matrix whose cells share their
    row's weight (micro averages), so ``order`` points at rows.
    """
    scores = np.asarray(scores, float)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    change = np.flatnonzero(s[1:] != s[:-1]) + 1
    starts = None if change.size == s.size - 1 else np.concatenate([[0], change])
    return Ranking(order // n_repeat, np.asarray(positive, float)[order], starts)


def weighted_auroc_ap(
    rank: Ranking, weights: np.ndarray, want: tuple[str, ...] = ("auroc", "auprc")
) -> dict[str, np.ndarray]:
    """AUROC (Mann-Whitney, ties count 1/2) and average precision for each weight row.

    ``weights`` (B, N) in the original sample order. AP = sum over distinct thresholds (high to
    low) of recall increment x precision, exactly scikit-learn's ``average_precision_score``.
    Returns (B,) arrays, NaN when undefined (AUROC needs both classes, AP needs a positive).
    """
    w = np.take(weights, rank.order, axis=1)
    pos_w = w * rank.positive
    neg_w = w - pos_w
    if rank.starts is not None:  # sum the weights of tied scores
        pos_w = np.add.reduceat(pos_w, rank.starts, axis=1)
        neg_w = np.add.reduceat(neg_w, rank.starts, axis=1)
    n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    neg_at_or_above = np.cumsum(neg_w, axis=1)
    out = {}
    if "auroc" in want:
        # sum_u pos(u) * (neg below u + neg tied at u / 2)
        above = np.einsum("ij,ij->i", pos_w, neg_at_or_above)
        tied = np.einsum("ij,ij->i", pos_w, neg_w)
        out["auroc"] = _div(n_pos * n_neg - above + 0.5 * tied, n_pos * n_neg)
    if "auprc" in want:
        tp = np.cumsum(pos_w, axis=1)
        called = neg_at_or_above  # reused in place: no longer needed for AUROC
        called += tp
        np.maximum(called, np.finfo(float).tiny, out=called)  # called == 0 implies tp == 0
        precision = np.divide(tp, called, out=tp)
        out["auprc"] = _div(np.einsum("ij,ij->i", pos_w, precision), n_pos)
    return out


def fast_auroc(y_true: Any, y_score: Any, sample_weight: Any = None) -> float | None:
    """Binary AUROC from ranks (O(N log N)); None when y_true holds a single class."""
    return _fast_binary(y_true, y_score, sample_weight)[0]


def fast_average_precision(y_true: Any, y_score: Any, sample_weight: Any = None) -> float | None:
    """Average precision (area under the PR curve, step-wise); None without positives."""
    return _fast_binary(y_true, y_score, sample_weight)[1]


def _fast_binary(
    y_true: Any, y_score: Any, sample_weight: Any
) -> tuple[float | None, float | None]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(y_score, float).ravel()
    if y.shape != s.shape or not np.isin(y, (0, 1)).all() or not np.isfinite(s).all():
        raise ValueError("y_true must be 0/1 and y_score finite, both of the same length")
    w = np.ones((1, y.size)) if sample_weight is None else np.asarray(sample_weight, float)[None]
    res = weighted_auroc_ap(ranking(y, s), w)
    return to_optional(res["auroc"][0]), to_optional(res["auprc"][0])


def to_optional(x: Any) -> float | None:
    """Plain float, or None for NaN/inf."""
    x = float(x)
    return x if np.isfinite(x) else None


# ---------------------------------------------------------------- prepared inputs


@dataclass
class Prepared:
    """Validated inputs turned into one-vs-rest indicator matrices (K columns)."""

    task: str
    names: list[str]
    y_true: np.ndarray
    y_prob: np.ndarray
    threshold: float
    n_bins: int
    truth: np.ndarray  # (N, K) 1.0 where the sample is of class k / has label k
    pred: np.ndarray  # (N, K) 1.0 where the sample is predicted as class k / label k
    rank_scores: np.ndarray  # (N, K) scores that order samples by "is class k"
    conf: np.ndarray  # (N, L) calibration confidence
    outcome: np.ndarray  # (N, L) calibration outcome
    sq_err: np.ndarray  # (N,) Brier contribution of each sample
    _ranks: dict[int, Ranking] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return self.truth.shape[0]

    @property
    def k(self) -> int:
        return self.truth.shape[1]

    def ranks(self, col: int) -> Ranking:
        if col not in self._ranks:
            self._ranks[col] = ranking(self.truth[:, col], self.rank_scores[:, col])
        return self._ranks[col]

    @cached_property
    def count_matrix(self) -> np.ndarray:
        """(N, 3K): [truth & pred, truth, pred], so one matrix product gives all counts."""
        return np.concatenate([self.truth * self.pred, self.truth, self.pred], axis=1)

    @cached_property
    def ece_matrix(self) -> sparse.csr_matrix:
        """Sparse (N, L * n_bins) calibration gaps in each sample's bin (see weighted_ece)."""
        return ece_matrix(self.conf, self.outcome, self.n_bins)

    @cached_property
    def micro_ranks(self) -> Ranking:
        return ranking(self.truth.ravel(), self.rank_scores.ravel(), n_repeat=self.k)


def prepare(
    y_true: Any,
    y_prob: Any,
    task: str,
    class_names: Sequence[Any],
    threshold: float = DEFAULT_THRESHOLD,
    n_bins: int = DEFAULT_BINS,
) -> Prepared:
    """Validate inputs and build the matrices every metric is computed from."""
    yt, yp, names = validate_inputs(y_true, y_prob, task, class_names)
    threshold = check_threshold(threshold)
    n_bins = check_bins(n_bins)
    k = len(names)
    if task == "binary":
        y = yt.astype(float)
        hit = decide(yp, task, threshold).astype(float)
        truth = np.stack([1 - y, y], axis=1)
        pred = np.stack([1 - hit, hit], axis=1)
        rank_scores = np.stack([-yp, yp], axis=1)
        sq_err = (yp - y) ** 2
    elif task == "multiclass":
        truth = np.eye(k)[yt]
        pred = np.eye(k)[decide(yp, task)]
        rank_scores = yp
        sq_err = ((yp - truth) ** 2).sum(axis=1)
    else:
        truth = yt.astype(float)
        pred = decide(yp, task, threshold).astype(float)
        rank_scores = yp
        sq_err = ((yp - truth) ** 2).mean(axis=1)
    conf, outcome = calibration_targets(yt, yp, task)
    return Prepared(
        task, names, yt, yp, threshold, n_bins, truth, pred, rank_scores, conf, outcome, sq_err
    )


# ---------------------------------------------------------------- the engine


class Engine:
    """All metrics for one batch of weight rows ``weights`` (B, N); values are (B,) arrays.

    Macro averages run over a class set fixed on the *reference* (full, unit-weight) sample, so
    every bootstrap resample estimates the same quantity; a resample in which one of those
    classes drops out yields NaN (and is skipped by the bootstrap).
    """

    def __init__(
        self,
        prep: Prepared,
        weights: np.ndarray,
        reference: Engine | None = None,
        rank_metrics: tuple[str, ...] = RANK_METRICS,
    ):
        self.p = prep
        self.w = np.atleast_2d(np.asarray(weights, float))
        self.ref = reference if reference is not None else self
        self.rank_metrics = rank_metrics  # computed together when one of them is needed
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def unit(cls, prep: Prepared) -> Engine:
        return cls(prep, np.ones((1, prep.n)))

    # -- counts
    @cached_property
    def total(self) -> np.ndarray:
        return self.w.sum(axis=1)

    @cached_property
    def counts(self) -> dict[str, np.ndarray]:
        k = self.p.k
        both = self.w @ self.p.count_matrix
        tp, pos, called = both[:, :k], both[:, k : 2 * k], both[:, 2 * k :]
        fp, fn = called - tp, pos - tp
        neg = self.total[:, None] - pos
        return {"tp": tp, "fp": fp, "fn": fn, "tn": neg - fp, "pos": pos, "neg": neg}

    # -- per class (B, K)
    def per_class(self, metric: str) -> np.ndarray:
        metric = ALIASES.get(metric, metric)
        if metric not in self._cache:
            self._cache[metric] = self._compute_per_class(metric)
        return self._cache[metric]

    def _compute_per_class(self, metric: str) -> np.ndarray:
        if metric in RANK_METRICS:
            return np.stack([self.rank_col(metric, j) for j in range(self.p.k)], axis=1)
        c = self.counts
        formulas = {
            "precision": (c["tp"], c["tp"] + c["fp"]),
            "recall": (c["tp"], c["pos"]),
            "specificity": (c["tn"], c["neg"]),
            "npv": (c["tn"], c["tn"] + c["fn"]),
            "f1": (2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
        }
        if metric == "balanced_accuracy":
            return (self.per_class("recall") + self.per_class("specificity")) / 2
        if metric not in formulas:
            raise KeyError(f"unknown per-class metric {metric!r}")
        return _div(*formulas[metric])

    def rank_col(self, metric: str, col: int) -> np.ndarray:
        """AUROC or AUPRC of class ``col`` (B,); other rank metrics wanted are cached too."""
        key = f"{metric}@{col}"
        if key not in self._cache:
            want = self.rank_metrics if metric in self.rank_metrics else (metric,)
            for m, v in weighted_auroc_ap(self.p.ranks(col), self.w, want).items():
                self._cache[f"{m}@{col}"] = v
        return self._cache[key]

    def defined(self, metric: str) -> np.ndarray:
        """(K,) mask of classes whose per-class ``metric`` is defined (first weight row)."""
        return ~np.isnan(self.per_class(metric)[0])

    @cached_property
    def seen(self) -> np.ndarray:
        """(B, K): class occurs in y_true or in the predictions (scikit-learn's label set)."""
        c = self.counts
        return (c["pos"] > 0) | (c["tp"] + c["fp"] > 0)

    def macro(self, metric: str, zero_undefined: bool | None = None) -> np.ndarray:
        """Macro average of a per-class metric over a class set fixed on the reference.

        ``zero_undefined`` (default: True for precision / recall / f1) follows scikit-learn's
        ``zero_division=0``: classes seen in y_true or the predictions, an undefined value
        counting 0. Otherwise (balanced accuracy, AUROC, AUPRC) the classes where the metric
        is defined are averaged.
        """
        if zero_undefined is None:
            zero_undefined = metric in MACRO_METRICS
        vals = self.per_class(metric)
        if zero_undefined:
            vals = np.where(np.isnan(vals) & self.seen, 0.0, vals)
            mask = self.ref.seen[0]
        else:
            mask = self.ref.defined(metric)
        if not mask.any():
            return np.full(self.w.shape[0], np.nan)
        return vals[:, mask].mean(axis=1)

    # -- scalars (B,)
    def scalar(self, name: str) -> np.ndarray:
        key = f"scalar:{name}"
        if key not in self._cache:
            self._cache[key] = self._compute_scalar(name)
        return self._cache[key]

    def _compute_scalar(self, name: str) -> np.ndarray:
        p = self.p
        task = p.task
        if name not in scalar_metric_names(task):
            raise KeyError(f"unknown metric {name!r} for a {task} task")
        if name == "accuracy":
            hits = (
                (p.truth == p.pred).mean(axis=1)
                if task == "multilabel"
                else ((p.truth * p.pred).sum(axis=1))
            )
            return _div(self.w @ hits, self.total)
        if name == "subset_accuracy":
            return _div(self.w @ (p.truth == p.pred).all(axis=1), self.total)
        if name == "balanced_accuracy":
            metric = "balanced_accuracy" if task == "multilabel" else "recall"
            return self.macro(metric, zero_undefined=False)  # sklearn: classes in y_true
        if name.endswith("_macro"):
            return self.macro(name[: -len("_macro")])
        if name.endswith("_micro"):
            return self._micro(name[: -len("_micro")])
        if name in ("auroc", "auprc"):
            return self.rank_col(name, 1) if task == "binary" else self.macro(name)
        if name == "brier":
            return _div(self.w @ p.sq_err, self.total)
        if name == "ece":
            return weighted_ece(p.ece_matrix, self.w, p.conf.shape[1])
        return self.per_class(name)[:, 1]  # binary: the positive class

    def _micro(self, metric: str) -> np.ndarray:
        c = {k: v.sum(axis=1) for k, v in self.counts.items()}
        if metric == "precision":
            return _div(c["tp"], c["tp"] + c["fp"])
        if metric == "recall":
            return _div(c["tp"], c["pos"])
        if metric == "f1":
            return _div(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
        return weighted_auroc_ap(self.p.micro_ranks, self.w, (metric,))[metric]

    def value(self, name: str) -> np.ndarray:
        """Scalar metric ``name`` or per-class ``metric[class name]`` for each weight row."""
        metric, cls = parse_metric(name)
        if cls is None:
            return self.scalar(metric)
        if cls not in self.p.names:
            raise KeyError(f"unknown class {cls!r} in {name!r}; classes: {self.p.names}")
        col = self.p.names.index(cls)
        if metric in RANK_METRICS:
            return self.rank_col(metric, col)
        return self.per_class(metric)[:, col]


def parse_metric(name: str) -> tuple[str, str | None]:
    """``"auroc"`` -> ("auroc", None); ``"auroc[malignant]"`` -> ("auroc", "malignant")."""
    if name.endswith("]") and "[" in name:
        metric, cls = name[:-1].split("[", 1)
        metric = ALIASES.get(metric, metric)
        if metric not in PER_CLASS_METRICS:
            raise KeyError(f"unknown per-class metric {metric!r}; use one of {PER_CLASS_METRICS}")
        return metric, cls
    return name, None


def check_metric_names(names: Sequence[str], prep: Prepared) -> list[str]:
    """Raise ValueError naming the supported metrics when one is unknown."""
    if isinstance(names, str):
        names = [names]
    ok = set(scalar_metric_names(prep.task))
    out = []
    for name in names:
        try:
            metric, cls = parse_metric(name)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        if (cls is None and metric not in ok) or (cls is not None and cls not in prep.names):
            raise ValueError(
                f"unknown metric {name!r} for a {prep.task} task; use one of {sorted(ok)} "
                f"or a per-class metric like 'auroc[{prep.names[-1]}]'"
            )
        out.append(name)
    if not out:
        raise ValueError("no metric requested")
    return out
