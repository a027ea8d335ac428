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
from medmodal.train.distributed import is_main, rank_zero_first
from medmodal.utils.io import dump_json


def fit_experiment(
    config: ConfigSource,
    overrides: list[str] | None,
    progress: Progress,
    resume: bool,
    console: Any,
) -> RunResult:
    """One training run (see ``api.fit``); ``metrics.json`` gains the wall time. Under torchrun,
    rank 0 prepares the data first and alone audits and writes."""
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


def cross_validate_experiment(
    config: ConfigSource, overrides: list[str] | None, k: int, progress: Progress, console: Any
) -> CVResult:
    """k-fold cross-validation of one experiment (see ``api.cross_validate``)."""
    ctx = start_run(config, overrides, progress=progress, console=console)
    loaded = load_data(ctx.cfg, ctx.run_dir, progress is True)
    audit_run(loaded, None, ctx.run_dir, ctx.out())
    return cross_validate_loaded(ctx, loaded, k)
