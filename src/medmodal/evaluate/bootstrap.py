"""Percentile-bootstrap confidence intervals, optionally clustered by patient.

A resample is a vector of counts (how often each sample was drawn), so all metrics of a chunk of
resamples are computed at once by the weighted engine in :mod:`medmodal.evaluate._core`; 1000
resamples of 5000 samples take a fraction of a second for AUROC. With ``groups`` the whole
group (patient) is drawn with replacement, all its rows together (clustered bootstrap).

Resamples in which a metric is undefined (e.g. no positive drawn, or a class that the macro
average needs is missing) are skipped for that metric; ``n_boot`` in the result says how many
were used. The number of resamples, the CI level, the seed, the threshold and the ECE bins come
from the :class:`~medmodal.evaluate.spec.EvalSpec`; survival targets go to
:mod:`medmodal.evaluate.survival_bootstrap`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medmodal.evaluate._core import (
    RANK_METRICS,
    Engine,
    Prepared,
    check_metric_names,
    prepare,
    to_optional,
)
from medmodal.evaluate.resample import (
    check_ci,
    delta_summary,
    group_index,
    percentile_ci,
    resample_weights,
)
from medmodal.evaluate.spec import EvalSpec
from medmodal.evaluate.survival import SCALARS
from medmodal.evaluate.survival_bootstrap import survival_bootstrap_ci, survival_paired_delta

__all__ = ["bootstrap_ci", "paired_bootstrap_delta", "resample_weights"]

_group_index = group_index  # benchmarks/survival.py imported it from here

DEFAULT_METRICS = ("auroc", "auprc", "accuracy", "f1_macro")
_CHUNK_CELLS = 2_000_000  # weights per chunk (B x N x K): bounds memory to ~100 MB


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    spec: EvalSpec,
    metrics: Sequence[str] = DEFAULT_METRICS,
    groups: Sequence[Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap CI of each metric, ``spec.n_boot`` resamples at level ``spec.ci``
    seeded by ``spec.seed`` (survival: see
    :func:`medmodal.evaluate.survival_bootstrap.survival_bootstrap_ci`).

    ``metrics`` are names of scalar results of :func:`compute_metrics` (``"auroc"``,
    ``"f1_macro"``, ``"brier"``, ...) or per-class values written ``"auroc[malignant]"``.
    ``groups`` (N,) gives each sample's cluster (patient id): whole clusters are resampled.

    Returns ``{metric: {"value", "low", "high", "n_boot", "n_requested", "ci"}}`` where
    ``value`` is the point estimate on all samples, ``n_boot`` the number of resamples in which
    the metric was defined; ``low``/``high`` are None when ``value`` is undefined or fewer than
    two resamples were usable.
    """
    if spec.task == "survival":
        names = SCALARS if tuple(metrics) == DEFAULT_METRICS else metrics
        return survival_bootstrap_ci(y_true, y_prob, spec, names, groups)
    prep = _prepare(y_true, y_prob, spec)
    names = check_metric_names(metrics, prep)
    check_ci(spec.ci, spec.n_boot)
    ref = Engine.unit(prep)
    boots = _collect(prep, ref, names, spec, group_index(groups, prep.n))
    return {
        name: percentile_ci(to_optional(ref.value(name)[0]), boots[name], spec.ci, spec.n_boot)
        for name in names
    }


def paired_bootstrap_delta(
    y_true: Any,
    prob_a: Any,
    prob_b: Any,
    spec: EvalSpec,
    metric: str = "auroc",
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Paired bootstrap of ``metric(prob_a) - metric(prob_b)`` on the same samples.

    Both models are scored on the *same* resamples, so the shared sampling noise cancels.
    Returns ``{"metric", "value_a", "value_b", "delta", "low", "high", "p_value", "n_boot",
    "n_requested", "ci"}``. ``delta = value_a - value_b``; ``p_value`` is two-sided,
    ``min(1, 2 * min(P*(delta* <= 0), P*(delta* >= 0)))`` with a +1 correction, consistent
    with the percentile CI (the CI excludes 0 roughly when ``p_value < 1 - ci``).
    Survival: Harrell's C only (``metric`` ``c_index``).
    """
    if spec.task == "survival":
        if metric not in ("c_index", "auroc"):
            raise ValueError(f"a survival paired delta is of c_index, not {metric!r}")
        return survival_paired_delta(y_true, prob_a, prob_b, spec, groups)
    prep_a, prep_b = _prepare(y_true, prob_a, spec), _prepare(y_true, prob_b, spec)
    (name,) = check_metric_names([metric], prep_a)
    check_ci(spec.ci, spec.n_boot)
    ref_a, ref_b = Engine.unit(prep_a), Engine.unit(prep_b)
    va, vb = to_optional(ref_a.value(name)[0]), to_optional(ref_b.value(name)[0])
    index = group_index(groups, prep_a.n)
    deltas = []
    for w in _weight_chunks(prep_a, spec.n_boot, spec.seed, index):
        a = Engine(prep_a, w, ref_a, _rank_wanted([name])).value(name)
        b = Engine(prep_b, w, ref_b, _rank_wanted([name])).value(name)
        deltas.append(a - b)
    return delta_summary(name, va, vb, np.concatenate(deltas), spec.n_boot, spec.ci)


def _prepare(y_true: Any, y_prob: Any, spec: EvalSpec) -> Prepared:
    return prepare(y_true, y_prob, spec.task, spec.classes, spec.threshold, spec.ece_bins)


def _collect(
    prep: Prepared,
    ref: Engine,
    names: list[str],
    spec: EvalSpec,
    groups: tuple[np.ndarray, int] | None,
) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    want = _rank_wanted(names)
    for w in _weight_chunks(prep, spec.n_boot, spec.seed, groups):
        eng = Engine(prep, w, ref, want)
        for n in names:
            parts[n].append(eng.value(n))
    return {n: np.concatenate(v) for n, v in parts.items()}


def _rank_wanted(names: Sequence[str]) -> tuple[str, ...]:
    """Rank metrics to compute together (sharing the sort) for the requested names."""
    return tuple(m for m in RANK_METRICS if any(n.startswith(m) for n in names))


def _weight_chunks(
    prep: Prepared, n_boot: int, seed: int, groups: tuple[np.ndarray, int] | None
) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // (prep.n * prep.k))
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        yield resample_weights(rng, prep.n, size, groups)
        done += size
