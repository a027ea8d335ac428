"""The Python API: ``fit``, ``cross_validate``, ``evaluate``, ``predict`` (``tune``, ``pretrain``).

A thin front over the steps in :mod:`medmodal.run`; the CLI is a thin layer over it.

>>> from medmodal import api
>>> run = api.fit("configs/breastmnist.yaml", overrides=["train.epochs=5"])
>>> run.metrics["test"]["auroc"]
>>> api.predict(run.checkpoint, "new_images/")   # DataFrame of probabilities
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console

from medmodal.errors import BadSampleLog, DataError, ManifestError
from medmodal.predictor import Predictor
from medmodal.run import (
    CVResult,
    RunResult,
    assign_splits,
    cross_validate_loaded,
    load_data,
    score_split,
    start_run,
    train_and_evaluate,
)
from medmodal.run.context import ConfigSource, Progress
from medmodal.run.report import write_run_report
from medmodal.run.sources import audit_run, frame_from_source
from medmodal.train.distributed import is_main, rank_zero_first
from medmodal.utils.io import dump_json

if TYPE_CHECKING:
    from medmodal.pretrain import PretrainResult


def fit(
    config: ConfigSource,
    overrides: list[str] | None = None,
    *,
    progress: Progress = True,
    resume: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Train and evaluate one experiment; writes checkpoint, metrics, report into the run dir.

    The data are split by the manifest's split column or a seeded patient-level split; the
    best epoch is chosen on validation; validation and test are scored through the same
    prediction path as :func:`predict`. A leakage audit (``audit.json``) is written too.

    Started by torchrun (``medmodal train --nproc N``), each process trains on its share of
    every batch (DistributedDataParallel); rank 0 prepares the data first, audits, scores and
    writes; the other ranks return a result without test metrics.
    """
    t0 = time.perf_counter()
    ctx = start_run(config, overrides, progress=progress, console=console)
    with rank_zero_first():  # a built-in data set is prepared into the run folder once
        loaded = load_data(ctx.cfg, ctx.run_dir, progress is True and is_main())
        splits = assign_splits(loaded)
        if is_main():
            audit_run(loaded, splits, ctx.run_dir, ctx.out())
    result = train_and_evaluate(
        loaded, splits, ctx.run_dir, progress=progress, resume=resume, console=ctx.console
    )
    result.metrics["wall_seconds"] = time.perf_counter() - t0
    if is_main():
        dump_json(ctx.run_dir / "metrics.json", result.metrics)
    return result


def cross_validate(
    config: ConfigSource,
    overrides: list[str] | None = None,
    *,
    k: int = 5,
    progress: Progress = False,
    console: Console | None = None,
) -> CVResult:
    """Patient-grouped, stratified k-fold cross-validation.

    Each fold trains on k-1 folds (a patient-grouped ``data.val_fraction`` of them held out for
    epoch selection) with processors fitted on its own training rows, and predicts the held-out
    fold. Out-of-fold predictions are pooled for metrics with patient-grouped bootstrap CIs;
    per-fold mean and standard deviation are reported too. A manifest split column is ignored.
    """
    ctx = start_run(config, overrides, progress=progress, console=console)
    loaded = load_data(ctx.cfg, ctx.run_dir, progress is True)
    audit_run(loaded, None, ctx.run_dir, ctx.out())
    return cross_validate_loaded(ctx, loaded, k)


def predict(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    *,
    root: str | Path | None = None,
    skip_bad: bool = False,
    out: str | Path | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Probabilities and the predicted class for every sample of a manifest / DataFrame / image
    folder.

    Modalities absent from the input (columns missing or cells empty) are predicted without,
    through the model's missing-modality path. With ``skip_bad`` unreadable samples are left
    out and listed in ``result.attrs["skipped"]`` (and ``out``'s sibling ``*.skipped.json``);
    without it the first bad sample raises DataError.
    """
    predictor = Predictor.load(checkpoint, device=device)
    frame, base, name = frame_from_source(source, predictor)
    bad = BadSampleLog() if skip_bad else None
    ds = predictor.dataset(frame, Path(root) if root else base, bad, with_labels=False, source=name)
    if len(ds) == 0:
        raise ManifestError(f"no readable sample in {name}")
    result = predictor.prediction_frame(ds, predictor.predict_proba(ds))
    skipped = bad.to_list() if bad is not None else []
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(out, index=False)
        if bad is not None:
            dump_json(out.with_suffix(".skipped.json"), skipped)
    result.attrs["skipped"] = skipped
    return result


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path | pd.DataFrame,
    *,
    root: str | Path | None = None,
    split: str | None = None,
    skip_bad: bool = False,
    out_dir: str | Path | None = None,
    bootstrap: int = 1000,
    device: str = "cpu",
) -> dict[str, Any]:
    """Metrics (+ CIs, report) of a checkpoint on a labelled manifest (optionally one split)."""
    predictor = Predictor.load(checkpoint, device=device)
    cfg = predictor.config.model_copy(
        update={"evaluate": predictor.config.evaluate.model_copy(update={"bootstrap": bootstrap})}
    )
    frame, base, name = frame_from_source(manifest, predictor)
    frame = _one_split(frame, predictor, split, name)
    bad = BadSampleLog() if skip_bad else None
    ds = predictor.dataset(frame, Path(root) if root else base, bad, with_labels=True, source=name)
    predictor.config = cfg
    scored = score_split(predictor, ds)
    metrics, probs = scored.metrics, scored.probs
    metrics["skipped_samples"] = bad.to_list() if bad is not None else []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        predictor.prediction_frame(ds, probs).to_csv(out / "predictions.csv", index=False)
        dump_json(out / "metrics.json", metrics)
        note = f"Evaluation of {checkpoint} on {name} ({len(ds)} samples)."
        write_run_report(
            out / "report.html",
            cfg,
            ds,
            probs,
            metrics,
            predictor.label_map,
            metrics["skipped_samples"],
            [note],
            raw_probs=scored.raw_probs,
        )
    return metrics


def _one_split(frame: pd.DataFrame, predictor: Predictor, split: str | None, name: str):
    if split is None:
        return frame
    col = predictor.schema.split_column
    if not col or col not in frame.columns:
        raise ManifestError(f"{name} has no split column to select {split!r} from")
    frame = frame[frame[col].astype(str).str.lower() == split]
    if frame.empty:
        raise ManifestError(f"{name} has no rows in split {split!r}")
    return frame


def pretrain(
    config: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    progress: Progress = True,
    resume: bool = False,
    console: Console | None = None,
) -> PretrainResult:
    """Masked-image pretraining of an image encoder on images only (SimMIM for the ViT and the
    Swin transformer, SparK-style for the ResNets); the training split only unless
    ``include_test``. Returns a PretrainResult whose ``checkpoint``
    ``model.encoders.<modality>.init`` takes; see :mod:`medmodal.pretrain`."""
    from medmodal.pretrain import pretrain as _pretrain

    return _pretrain(config, overrides, progress=progress, resume=resume, console=console)


def tune(*args: Any, **kwargs: Any) -> Any:
    """Hyper-parameter search on the validation split; see :func:`medmodal.tune.tune`."""
    from medmodal.tune import tune as _tune

    return _tune(*args, **kwargs)


__all__ = [
    "CVResult",
    "DataError",
    "Predictor",
    "RunResult",
    "cross_validate",
    "evaluate",
    "fit",
    "predict",
    "pretrain",
    "tune",
]
