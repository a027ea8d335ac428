"""Classification metrics for binary, multiclass and multilabel tasks.

Conventions (MedMNIST-compatible):

* binary: ``y_prob`` is P(``class_names[1]``); a sample is called positive when
  ``p > threshold`` (strictly, as MedMNIST and scikit-learn's ``predict`` do).
* multiclass: the prediction is the argmax; ``auroc``/``auprc`` are the mean of the per-class
  one-vs-rest values (MedMNIST's AUC).
* multilabel: each label is thresholded on its own; ``accuracy`` is the mean per-label accuracy
  and ``subset_accuracy`` the exact-match ratio.

Undefined values (a class absent from ``y_true`` has no AUROC, a never-predicted class no
precision, ...) are ``None`` in ``per_class`` and explained in ``warnings``. Macro averages:
precision / recall / f1 follow scikit-learn (classes in y_true or predicted, undefined counted
as 0, so a model that never predicts a class is penalised); balanced accuracy, AUROC and AUPRC
average the classes where they are defined (never a filled-in 0.5). ``warnings`` names every
class that was zeroed or left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmodal.evaluate._core import (
    MACRO_METRICS,
    Engine,
    Prepared,
    fast_auroc,
    fast_average_precision,
    prepare,
    scalar_metric_names,
    to_optional,
)
from medmodal.evaluate.calibration import DEFAULT_BINS
from medmodal.evaluate.decision import DEFAULT_THRESHOLD
from medmodal.evaluate.spec import EvalSpec
from medmodal.evaluate.survival import survival_metrics

__all__ = [
    "compute_metrics",
    "confusion_matrix",
    "fast_auroc",
    "fast_average_precision",
    "metrics_for",
]

PER_CLASS_KEYS = (
    ("precision", "precision"),
    ("recall", "recall"),
    ("sensitivity", "recall"),
    ("specificity", "specificity"),
    ("ppv", "precision"),
    ("npv", "npv"),
    ("f1", "f1"),
    ("auroc", "auroc"),
    ("auprc", "auprc"),
)


def compute_metrics(
    y_true: Any,
    y_prob: Any,
    task: str,
    class_names: Sequence[Any],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    n_bins: int = DEFAULT_BINS,
    times: Sequence[float] | None = None,
    eval_times: Sequence[float] | None = None,
) -> dict[str, Any]:
    """All metrics for one set of predictions, as a JSON-serialisable dict.

    Survival (``task="survival"``): ``y_true`` is (N, 2) time, event; ``y_prob`` the risk (N,)
    or (N, 1 + T) risk + S(t) at the grid ``times``; ``eval_times`` are the times of the
    time-dependent AUC and calibration. See :func:`medmodal.evaluate.survival.survival_metrics`.

    Args:
        y_true: binary (N,) 0/1; multiclass (N,) class indices (or class names);
            multilabel (N, K) 0/1.
        y_prob: binary (N,) P(positive); multiclass (N, K) rows summing to 1; multilabel (N, K).
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        class_names: K names (binary: ``[negative, positive]``).
        threshold: decision threshold for binary / multilabel (positive when ``p > threshold``).
        n_bins: equal-width bins of the expected calibration error.

    Returns:
        ``n, task, class_names, threshold, accuracy, balanced_accuracy, [binary: precision,
        recall, specificity, npv, f1], precision_macro, recall_macro, f1_macro, [multilabel:
        subset_accuracy, precision_micro, recall_micro, f1_micro, auroc_micro, auprc_micro],
        auroc, auprc, brier, ece, ece_bins, confusion_matrix, per_class, warnings``.
        ``confusion_matrix`` has rows = true class, columns = predicted class (binary 2x2,
        multiclass KxK); multilabel gives one ``[[tn, fp], [fn, tp]]`` per label.
        ``per_class[name]`` holds precision, recall, sensitivity, specificity, ppv, npv, f1,
        support (number of positives), auroc, auprc. Undefined values are None.

    Raises:
        ValueError: on wrong shapes, mismatched lengths, NaN, probabilities outside [0, 1],
            rows not summing to 1 (multiclass), unknown task or bad class_names.
    """
    if task == "survival":
        return survival_metrics(y_true, y_prob, times, eval_times)
    prep = prepare(y_true, y_prob, task, class_names, threshold, n_bins)
    eng = Engine.unit(prep)
    out: dict[str, Any] = {
        "n": prep.n,
        "task": task,
        "class_names": list(prep.names),
        "threshold": prep.threshold,
    }
    for name in scalar_metric_names(task):
        out[name] = to_optional(eng.scalar(name)[0])
    out["ece_bins"] = prep.n_bins
    out["confusion_matrix"] = confusion_matrix(prep)
    out["per_class"] = _per_class(eng)
    out["warnings"] = _warnings(eng, out)
    return out


def metrics_for(y_true: Any, y_prob: Any, spec: EvalSpec) -> dict[str, Any]:
    """:func:`compute_metrics` with the spec's task, classes, threshold, ECE bins and (survival)
    curve grid and evaluation times: how a run scores its predictions."""
    return compute_metrics(
        y_true,
        y_prob,
        spec.task,
        spec.classes,
        spec.threshold,
        n_bins=spec.ece_bins,
        times=spec.times,
        eval_times=spec.eval_times,
    )


def confusion_matrix(prep: Prepared) -> list[Any]:
    """Counts with rows = true, columns = predicted (multilabel: per-label 2x2 list)."""
    if prep.task == "multilabel":
        t, p = prep.truth.astype(bool), prep.pred.astype(bool)
        return [
            [
                [int((~t[:, j] & ~p[:, j]).sum()), int((~t[:, j] & p[:, j]).sum())],
                [int((t[:, j] & ~p[:, j]).sum()), int((t[:, j] & p[:, j]).sum())],
            ]
            for j in range(prep.k)
        ]
    cm = prep.truth.T @ prep.pred
    return cm.astype(int).tolist()


def _per_class(eng: Engine) -> dict[str, dict[str, Any]]:
    support = eng.counts["pos"][0]
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(eng.p.names):
        row: dict[str, Any] = {
            key: to_optional(eng.per_class(m)[0, j]) for key, m in PER_CLASS_KEYS
        }
        row["support"] = int(round(support[j]))
        out[name] = row
    return out


def _warnings(eng: Engine, out: dict[str, Any]) -> list[str]:
    """Human-readable reasons for every None and every partial macro average."""
    p = eng.p
    kind = "label" if p.task == "multilabel" else "class"
    c = {k: v[0] for k, v in eng.counts.items()}
    msgs: list[str] = []
    for j, name in enumerate(p.names):
        if c["pos"][j] == 0:
            what = "absent from y_true" if kind == "class" else "never positive in y_true"
            msgs.append(f"{kind} {name!r} is {what}: recall, auroc and auprc are undefined")
        if c["neg"][j] == 0:
            msgs.append(
                f"{kind} {name!r} is positive in every sample: specificity and auroc are undefined"
            )
        if c["tp"][j] + c["fp"][j] == 0:
            msgs.append(f"{kind} {name!r} is never predicted: precision (ppv) is undefined")
        if c["tn"][j] + c["fn"][j] == 0:
            msgs.append(f"{kind} {name!r} is predicted for every sample: npv is undefined")
    msgs += _macro_warnings(eng, kind)
    for key in scalar_metric_names(p.task):
        if out.get(key) is None:
            msgs.append(f"{key} is undefined (None)")
    return msgs


def _macro_warnings(eng: Engine, kind: str) -> list[str]:
    p = eng.p
    plural = "labels" if kind == "label" else "classes"
    msgs = []
    seen = eng.seen[0]
    unseen = [n for n, ok in zip(p.names, seen, strict=True) if not ok]
    if unseen and seen.any():
        msgs.append(
            f"precision_macro, recall_macro and f1_macro average {int(seen.sum())} of {p.k} "
            f"{plural}; {unseen} neither occur in y_true nor are predicted"
        )
    for metric in MACRO_METRICS:
        zero = seen & ~eng.defined(metric)
        if zero.any():
            names = [n for n, z in zip(p.names, zero, strict=True) if z]
            msgs.append(
                f"{metric}_macro counts {metric} as 0 for {names} (undefined; "
                "scikit-learn's zero_division=0)"
            )
    defined_only = [("balanced_accuracy", "recall")]
    if p.task == "multilabel":
        defined_only = [("balanced_accuracy", "balanced_accuracy")]
    if p.task != "binary":
        defined_only += [("auroc", "auroc"), ("auprc", "auprc")]
    for key, metric in defined_only:
        mask = eng.defined(metric)
        if mask.any() and not mask.all():
            left = [n for n, ok in zip(p.names, mask, strict=True) if not ok]
            msgs.append(
                f"{key} averages {int(mask.sum())} of {p.k} {plural}; "
                f"{metric} is undefined for {left}"
            )
    return msgs
