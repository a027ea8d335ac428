"""Patient-grouped k-fold cross-validation over one loaded data set."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from medmodal.predictor import prediction_frame
from medmodal.run.context import RunContext
from medmodal.run.data import LoadedData, fold_splits
from medmodal.run.report import ReportContent, write_run_report
from medmodal.run.results import CVResult, RunResult
from medmodal.run.single import train_and_evaluate
from medmodal.run.steps import Scored, ablation_table, evaluate_predictions, trust_metrics
from medmodal.utils.io import dump_json

FOLD_METRICS = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro")
SURVIVAL_FOLD_METRICS = ("c_index", "c_index_uno", "mean_auc", "ibs")


def cross_validate_loaded(ctx: RunContext, loaded: LoadedData, k: int) -> CVResult:
    """Train one model per fold (processors fitted on its training rows), pool the out-of-fold
    predictions for metrics with patient-grouped CIs, and report the per-fold spread."""
    t0 = time.perf_counter()
    ds = loaded.dataset
    folds, fold_parts = fold_splits(loaded, k)
    results: list[RunResult] = []
    for f, splits in enumerate(fold_parts):
        run = train_and_evaluate(
            loaded, splits, ctx.run_dir / f"fold_{f}", progress=ctx.progress, console=ctx.console
        )
        results.append(run)
    spec = loaded.spec
    oof, oof_ablation = _pool(results, folds)
    pooled = evaluate_predictions(ds, oof, spec)
    if oof_ablation:
        pooled["ablation"] = ablation_table(ds, oof, oof_ablation, spec)
    scored = Scored(oof, pooled, raw_probs=_pool_one(results, folds, "test_raw_probs"))
    scored.sets = _pool_one(results, folds, "test_sets")
    pooled.update(trust_metrics(ds, scored, spec, loaded.schema))
    per_fold = per_fold_summary(results)
    predictions = prediction_frame(ds, oof, spec, scored.sets)
    predictions.insert(2, "fold", folds)
    predictions.to_csv(ctx.run_dir / "oof_predictions.csv", index=False)
    summary = {
        "k": k,
        "n": len(ds),
        "pooled": pooled,
        "per_fold": per_fold,
        "fold_sizes": [int((folds == f).sum()) for f in range(k)],
        "best_epochs": [r.metrics["best_epoch"] for r in results],
        "missing_modalities": ds.missing_counts,
        "skipped_samples": loaded.bad_list,
        "wall_seconds": time.perf_counter() - t0,
    }
    if "encoder_init" in results[0].metrics:  # per fold: did a pretraining see its test rows?
        summary["encoder_init"] = [r.metrics["encoder_init"] for r in results]
    dump_json(ctx.run_dir / "cv_metrics.json", summary)
    report = None
    if spec.report:
        report = _report(ctx, loaded, scored, per_fold, k)
    return CVResult(ctx.run_dir, results, pooled, per_fold, predictions, report)


def _pool(results: list[RunResult], folds: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Out-of-fold probabilities (each sample predicted by the model that did not see it)."""
    first = results[0].test_probs
    assert first is not None
    oof = np.zeros((len(folds), *first.shape[1:]), dtype=np.float64)
    ablation: dict[str, np.ndarray] = {}
    for f, r in enumerate(results):
        idx = np.flatnonzero(folds == f)
        assert r.test_probs is not None
        oof[idx] = r.test_probs
        for m, p in r.ablation_probs.items():
            ablation.setdefault(m, np.zeros_like(oof))[idx] = p
    return oof, ablation


def _pool_one(results: list[RunResult], folds: np.ndarray, attr: str) -> np.ndarray | None:
    """Out-of-fold ``test_raw_probs`` or ``test_sets`` (None unless every fold has them)."""
    parts = [getattr(r, attr) for r in results]
    if any(p is None for p in parts):
        return None
    out = np.zeros((len(folds), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for f, p in enumerate(parts):
        out[np.flatnonzero(folds == f)] = p
    return out


def per_fold_summary(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation (ddof 1) and the values of each fold's test metrics."""
    out = {}
    survival = results[0].metrics["test"].get("task") == "survival"
    for key in SURVIVAL_FOLD_METRICS if survival else FOLD_METRICS:
        vals = [r.metrics["test"].get(key) for r in results]
        ok = [v for v in vals if v is not None]
        out[key] = {
            "mean": float(np.mean(ok)) if ok else None,
            "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
            "folds": vals,
        }
    return out


def _report(ctx: RunContext, loaded: LoadedData, scored: Scored, per_fold: dict, k: int):
    rows = [
        {
            "metric": key,
            "mean": v["mean"],
            "sd": v["std"],
            **{f"fold {i}": x for i, x in enumerate(v["folds"])},
        }
        for key, v in per_fold.items()
    ]
    notes = [
        f"{k}-fold patient-grouped cross-validation. The metrics above are of the pooled "
        f"out-of-fold predictions of {len(loaded.dataset)} samples, each predicted by the model "
        "of the fold that held it out; the table below gives each fold's own metrics."
    ]
    content = ReportContent(notes, loaded.bad_list, {"Per-fold test metrics": rows})
    path = ctx.run_dir / "report.html"
    return write_run_report(path, loaded.cfg, loaded.spec, loaded.dataset, scored, content)
