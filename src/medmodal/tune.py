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

With ``storage`` (an Optuna RDB URL: ``sqlite:///study.db`` on one machine, a PostgreSQL or
MySQL URL across machines) several workers share one study: each runs its own ``n_trials``,
Optuna numbers the trials across workers, and TPE (with the constant liar) sees every worker's
finished trials. A shared study is not reproducible trial by trial (the order of the workers'
trials decides the proposals), so its sampler is not seeded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console

from medmodal.config import ExperimentConfig, load_config
from medmodal.errors import ConfigError
from medmodal.evaluate._core import scalar_metric_names
from medmodal.options import Strict, parse_options
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


class TuneOptions(Strict):
    """The less used options of :func:`tune`: ``metric`` (default: the config's monitor),
    ``storage`` / ``study_name`` (an Optuna RDB study shared with other workers, created by the
    first, joined by the others; default name: the config's ``name``) and ``retrain``
    (``False``: run the trials only, a worker of a shared study, and return ``None`` for the
    run)."""

    metric: str | None = None
    storage: str | None = None
    study_name: str | None = None
    retrain: bool = True


def tune(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    space: dict[str, dict[str, Any]],
    *,
    n_trials: int = 20,
    overrides: list[str] | None = None,
    progress: bool | Literal["lines"] = False,
    console: Console | None = None,
    **options: Any,
) -> tuple[RunResult | None, list[dict[str, Any]]]:
    """Search ``space`` for ``n_trials`` (TPE, seeded), then retrain the best and evaluate on test.

    ``options``: the fields of :class:`TuneOptions` (``metric``, ``storage``, ``study_name``,
    ``retrain``); a misspelled one is a ConfigError naming the allowed ones.

    Returns the final run and the list of this worker's trials (params, validation score,
    seconds); ``tuning.json`` in the run folder also lists every trial of the study.
    """
    o = parse_options(TuneOptions, options, "tune")
    optuna = _optuna()
    _check_space(space)
    ctx = start_run(config, overrides)
    loaded = load_data(ctx.cfg, ctx.run_dir)
    metric = o.metric or monitor_for(loaded.label_map.task, ctx.cfg.train)
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
    study = _study(optuna, ctx.cfg, metric, o.storage, o.study_name)
    study.optimize(objective, n_trials=n_trials)
    best = study.best_trial.params
    result = None
    if o.retrain:
        final = loaded.with_config(load_config(ctx.cfg, _overrides(best)))
        result = train_and_evaluate(final, splits, ctx.run_dir, progress=progress, console=console)
    summary = {"metric": metric, "direction": study.direction.name.lower(), "best_params": best}
    summary.update(best_val=study.best_value, trials=trials, study=_study_record(study, o.storage))
    dump_json(ctx.run_dir / "tuning.json", summary)
    return result, trials


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "hyper-parameter search needs Optuna: pip install 'medmodal[tune]'"
        ) from None
    return optuna


def _study(
    optuna: Any, cfg: ExperimentConfig, metric: str, storage: str | None, name: str | None
) -> Any:
    """A new in-memory study (TPE seeded by the config), or the shared study ``name`` in
    ``storage`` (created if absent; its metric must be this run's)."""
    direction = "minimize" if metric in ("brier", "ece", "ibs") else "maximize"
    if storage is None:
        sampler = optuna.samplers.TPESampler(seed=cfg.seed)
        return optuna.create_study(direction=direction, sampler=sampler)
    sampler = optuna.samplers.TPESampler(constant_liar=True)
    study = _shared_study(optuna, storage, name or cfg.name, direction, sampler)
    known = study.user_attrs.get("metric")
    if known is None:
        study.set_user_attr("metric", metric)
    elif known != metric:
        raise ConfigError(
            f"study {study.study_name!r} in {_redact(storage)} optimises {known!r}, not {metric!r}"
        )
    return study


def _shared_study(optuna: Any, storage: str, name: str, direction: str, sampler: Any) -> Any:
    """Create or load the shared study; workers that start together race to create the storage's
    tables (a known Optuna / SQLAlchemy race: "table ... already exists"), so retry a few times."""
    for attempt in range(5):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=name,
                direction=direction,
                sampler=sampler,
                load_if_exists=True,
            )
        except Exception as exc:  # noqa: BLE001 - sqlalchemy's OperationalError / IntegrityError
            if attempt == 4 or "already exists" not in str(exc) and "UNIQUE" not in str(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _study_record(study: Any, storage: str | None) -> dict[str, Any]:
    """The study's name, storage (password hidden) and every trial of every worker."""
    rows = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.trials
    ]
    return {"name": study.study_name, "storage": _redact(storage), "trials": rows}


def _redact(url: str | None) -> str | None:
    return None if url is None else re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


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
