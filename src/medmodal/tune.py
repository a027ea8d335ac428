"""Hyper-parameter search with Optuna, selected on the validation split only.

The search space names config fields by their dotted path::

    space = {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
        "model.fusion.name": {"type": "categorical", "choices": ["concat", "attention", "gated"]},
        "train.batch_size": {"type": "int", "low": 16, "high": 128, "step": 16},
    }

Every trial trains on the training split and is scored on the validation split; the test
split is not touched until the best setting is retrained once and evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console

from medmodal.config import ExperimentConfig, load_config
from medmodal.errors import ConfigError
from medmodal.evaluate._core import scalar_metric_names
from medmodal.run import (
    LoadedData,
    RunResult,
    assign_splits,
    load_data,
    start_run,
    train_and_evaluate,
)
from medmodal.train.trainer import monitor_for
from medmodal.utils.io import dump_json


def _suggest(trial: Any, name: str, spec: dict[str, Any]) -> Any:
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(
            name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
        )
    if kind == "int":
        return trial.suggest_int(
            name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1))
        )
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise ConfigError(
        f"search space entry {name!r}: type must be float, int or categorical, got {kind!r}"
    )


def _overrides(params: dict[str, Any]) -> list[str]:
    import yaml

    return [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in params.items()
    ]


def tune(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    space: dict[str, dict[str, Any]],
    *,
    n_trials: int = 20,
    metric: str | None = None,
    overrides: list[str] | None = None,
    progress: bool | Literal["lines"] = False,
    console: Console | None = None,
) -> tuple[RunResult, list[dict[str, Any]]]:
    """Search ``space`` for ``n_trials`` (TPE, seeded), then retrain the best and evaluate on test.

    Returns the final run and the list of trials (params, validation score, seconds).
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "hyper-parameter search needs Optuna: pip install 'medmodal[tune]'"
        ) from None
    _check_space(space)
    ctx = start_run(config, overrides)
    loaded = load_data(ctx.cfg, ctx.run_dir)
    metric = metric or monitor_for(loaded.label_map.task, ctx.cfg.train)
    if metric not in scalar_metric_names(loaded.label_map.task):
        raise ConfigError(f"tuning metric {metric!r} is not a validation metric of this task")
    splits = assign_splits(loaded)
    if not (splits == "val").any():
        raise ConfigError(
            "tuning needs a validation split (data.val_fraction > 0 or a split column)"
        )
    trials: list[dict[str, Any]] = []
    objective = _objective(
        loaded, splits, ctx.run_dir / "trials", space, metric, trials, progress, console
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "minimize" if metric in ("brier", "ece", "ibs") else "maximize"
    sampler = optuna.samplers.TPESampler(seed=ctx.cfg.seed)
    study = optuna.create_study(direction=direction, sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    best = study.best_trial.params
    final = loaded.with_config(load_config(ctx.cfg, _overrides(best)))
    result = train_and_evaluate(final, splits, ctx.run_dir, progress=progress, console=console)
    summary = {"metric": metric, "direction": direction, "best_params": best}
    summary.update(best_val=study.best_value, trials=trials)
    dump_json(ctx.run_dir / "tuning.json", summary)
    return result, trials


def _check_space(space: dict[str, dict[str, Any]]) -> None:
    bad = sorted(k for k in space if k.split(".")[0] not in ("model", "train", "evaluate"))
    if bad:
        raise ConfigError(
            f"search space {bad}: tuning searches model / train / evaluate fields "
            "(the data are read once)"
        )


def _objective(
    loaded: LoadedData,
    splits: np.ndarray,
    trials_dir: Path,
    space: dict[str, dict[str, Any]],
    metric: str,
    trials: list[dict[str, Any]],
    progress: bool | Literal["lines"],
    console: Console | None,
) -> Callable[[Any], float]:
    """One trial: train on train, score on validation; the test split stays unseen ("holdout")."""
    search = np.where(splits == "test", "holdout", splits)
    quiet = ["evaluate.bootstrap=0", "evaluate.report=false"]

    def objective(trial: Any) -> float:
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        cfg = load_config(loaded.cfg, _overrides(params) + quiet)
        t0 = time.perf_counter()
        res = train_and_evaluate(
            loaded.with_config(cfg),
            search,
            trials_dir / f"{trial.number:03d}",
            progress=progress,
            console=console,
        )
        score = res.metrics["val"].get(metric)
        if score is None:
            raise ConfigError(f"validation metric {metric!r} is undefined for trial {trial.number}")
        seconds = round(time.perf_counter() - t0, 1)
        trials.append(
            {"trial": trial.number, "params": params, f"val_{metric}": score, "seconds": seconds}
        )
        return float(score)

    return objective
