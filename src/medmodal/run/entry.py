"""What :func:`medmodal.api.fit` and :func:`~medmodal.api.cross_validate` do: start the run,
load and split the data, audit it, then train (and evaluate) through :mod:`medmodal.run`."""

from __future__ import annotations

import time
from typing import Any

from medmodal.run.context import ConfigSource, Progress, start_run
from medmodal.run.cv import cross_validate_loaded
from medmodal.run.data import assign_splits, load_data
from medmodal.run.results import CVResult, RunResult
from medmodal.run.single import train_and_evaluate
from medmodal.run.sources import audit_run
from medmodal.utils.io import dump_json


def fit_experiment(
    config: ConfigSource,
    overrides: list[str] | None,
    progress: Progress,
    resume: bool,
    console: Any,
) -> RunResult:
    """One training run (see ``api.fit``); ``metrics.json`` gains the wall time."""
    t0 = time.perf_counter()
    ctx = start_run(config, overrides, progress=progress, console=console)
    loaded = load_data(ctx.cfg, ctx.run_dir, progress is True)
    splits = assign_splits(loaded)
    audit_run(loaded, splits, ctx.run_dir, ctx.out())
    result = train_and_evaluate(
        loaded, splits, ctx.run_dir, progress=progress, resume=resume, console=ctx.console
    )
    result.metrics["wall_seconds"] = time.perf_counter() - t0
    dump_json(ctx.run_dir / "metrics.json", result.metrics)
    return result


def cross_validate_experiment(
    config: ConfigSource, overrides: list[str] | None, k: int, progress: Progress, console: Any
) -> CVResult:
    """k-fold cross-validation of one experiment (see ``api.cross_validate``)."""
    ctx = start_run(config, overrides, progress=progress, console=console)
    loaded = load_data(ctx.cfg, ctx.run_dir, progress is True)
    audit_run(loaded, None, ctx.run_dir, ctx.out())
    return cross_validate_loaded(ctx, loaded, k)
