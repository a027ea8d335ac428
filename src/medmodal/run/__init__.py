"""A run as small named steps, behind the thin public front in :mod:`medmodal.api`.

``start_run`` (config, seed, threads, folder) -> ``load_data`` (manifest read once, every
sample decoded and cached) -> ``assign_splits`` / ``fold_splits`` -> ``train_and_evaluate``:
``fit_processors`` (train rows only) -> ``new_predictor`` -> ``train_model`` -> ``score_split``
(validation and test through the prediction path) -> ``write_artifacts``; between training and
scoring, ``calibrate_predictor`` fits temperature scaling and conformal sets on validation.
"""

from medmodal.run.context import RunContext, start_run
from medmodal.run.cv import cross_validate_loaded
from medmodal.run.data import LoadedData, assign_splits, fold_splits, load_data
from medmodal.run.report import run_trust_summary, trust_summary
from medmodal.run.results import CVResult, RunResult
from medmodal.run.single import train_and_evaluate, write_artifacts
from medmodal.run.steps import (
    Scored,
    ablation_table,
    calibrate_predictor,
    evaluate_predictions,
    fit_processors,
    new_predictor,
    score_split,
    train_model,
)

__all__ = [
    "CVResult",
    "LoadedData",
    "RunContext",
    "RunResult",
    "Scored",
    "ablation_table",
    "assign_splits",
    "calibrate_predictor",
    "cross_validate_loaded",
    "evaluate_predictions",
    "fit_processors",
    "fold_splits",
    "load_data",
    "new_predictor",
    "run_trust_summary",
    "score_split",
    "start_run",
    "train_and_evaluate",
    "train_model",
    "trust_summary",
    "write_artifacts",
]
