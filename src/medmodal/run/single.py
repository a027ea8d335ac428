"""One run on assigned splits: the steps in order, then the artifacts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.ensemble.train import composite_summary, composite_tables
from medmodal.predictor import Predictor
from medmodal.run.context import Progress
from medmodal.run.data import LoadedData, cache_dir
from medmodal.run.pretrained import check_pretrained_inits
from medmodal.run.report import ReportContent, missing_note, write_run_report
from medmodal.run.results import RunResult
from medmodal.run.steps import (
    Scored,
    calibrate_predictor,
    check_trust,
    fit_processors,
    fit_survival_baseline,
    new_predictor,
    prepare_survival,
    score_split,
    train_model,
)
from medmodal.train.distributed import is_main, world
from medmodal.train.trainer import TrainState, monitor_for
from medmodal.utils.io import dump_json, to_jsonable
from medmodal.utils.runtime import seed_everything


def train_and_evaluate(
    loaded: LoadedData,
    splits: np.ndarray,
    run_dir: Path,
    *,
    progress: Progress = False,
    resume: bool = False,
    console: Any = None,
) -> RunResult:
    """Fit processors on the ``train`` rows, train, pick the best epoch on ``val``, score ``val``
    and ``test`` through the prediction path, and write checkpoint, metrics and report. An
    encoder started from a pretraining checkpoint is checked first: its pretraining must not
    have seen the ``val``, ``test`` or ``holdout`` rows (``metrics["encoder_init"]``).

    ``splits``: "train" / "val" / "test" per row of ``loaded.dataset`` (other values are unused,
    e.g. "holdout" keeps a test split unseen while tuning)."""
    cfg = loaded.cfg
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    processors, parts = fit_processors(loaded, splits, cache_dir(run_dir))
    check_trust(loaded.spec, "val" in parts)
    predictor = new_predictor(loaded, processors)
    prepare_survival(predictor, parts)
    init_check = check_pretrained_inits(loaded, splits, console)
    t0 = time.perf_counter()
    state = train_model(
        predictor, parts, loaded, run_dir, progress=progress, resume=resume, console=console
    )
    fit_survival_baseline(predictor, parts["train"])
    metrics: dict[str, Any] = {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_seconds": time.perf_counter() - t0,
        "processes": world()[1],
        "n": {k: len(v) for k, v in parts.items()},
        "missing_modalities": {k: v.missing_counts for k, v in parts.items()},
        "skipped_samples": len(loaded.bad_list),
    }
    if init_check:
        metrics["encoder_init"] = init_check
    if (composite := composite_summary(predictor.model)) is not None:  # classical / ensemble
        metrics["model"] = composite
    result = RunResult(run_dir, run_dir / "best.pt", metrics, state.history, loaded.bad_list)
    if not is_main():  # under torchrun, rank 0 alone scores the test split and writes
        return result
    fitted = calibrate_predictor(predictor, parts.get("val"))
    if fitted:
        metrics["fitted_on_val"] = fitted
    for split in ("val", "test"):
        if split in parts:
            scored = score_split(predictor, parts[split], ablation=split == "test")
            metrics[split] = scored.metrics
            frame = predictor.prediction_frame(parts[split], scored.probs)
            frame.to_csv(run_dir / f"predictions_{split}.csv", index=False)
            if split == "test":
                result.test_probs, result.ablation_probs = scored.probs, scored.ablation_probs
                result.test_raw_probs, result.test_sets = scored.raw_probs, scored.sets
    write_artifacts(result, predictor, loaded, state)
    result.report = _report(result, predictor, loaded, parts, state)
    return result


def write_artifacts(
    result: RunResult, predictor: Predictor, loaded: LoadedData, state: TrainState
) -> None:
    """best.pt (the Predictor + metrics + history + data hash), metrics/history/bad-sample JSON
    and the resolved config."""
    d = result.run_dir
    predictor.save(
        result.checkpoint,
        data_hash=loaded.data_hash,
        metrics=to_jsonable(result.metrics),
        history=state.history,
    )
    dump_json(d / "metrics.json", result.metrics)
    dump_json(d / "history.json", state.history)
    dump_json(d / "bad_samples.json", result.bad_samples)
    loaded.cfg.save(d / "config.yaml")


def _report(
    result: RunResult, predictor: Predictor, loaded: LoadedData, parts: dict, state: TrainState
) -> Path | None:
    """report.html on the test split (else validation)."""
    spec, m = predictor.eval_spec, result.metrics
    split = "test" if "test" in parts else ("val" if "val" in parts else None)
    if not spec.report or split is None:
        return None
    if split == "test":
        assert result.test_probs is not None
        scored = Scored(result.test_probs, m[split], raw_probs=result.test_raw_probs)
    else:
        scored = Scored(predictor.predict_proba(parts[split]), m[split])
    chosen = (
        f"The model, {m['model']['describe']}, was fitted"
        if "model" in m
        else f"The best epoch, {state.best_epoch} of the {state.epoch} run, was chosen on "
        f"validation {monitor_for(spec.task, loaded.cfg.train)}. Training took"
    )
    notes = [
        f"Evaluated on the {split} split ({len(parts[split])} samples). {chosen} in "
        f"{m['train_seconds']:.1f} s.",
        missing_note(m["missing_modalities"]),
        *(f"Encoder init ({k}): {v['summary']}." for k, v in m.get("encoder_init", {}).items()),
    ]
    tables = composite_tables(m.get("model"))
    content = ReportContent(notes, result.bad_samples, tables, predictor=predictor)
    path = result.run_dir / "report.html"
    return write_run_report(path, loaded.cfg, spec, parts[split], scored, content)
