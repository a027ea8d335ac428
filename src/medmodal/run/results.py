"""What a run returns: the files it wrote and the numbers it measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class RunResult:
    """One trained model: its run folder, checkpoint, metrics per split, and history."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    bad_samples: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None
    test_probs: np.ndarray | None = None
    ablation_probs: dict[str, np.ndarray] = field(default_factory=dict)
    test_raw_probs: np.ndarray | None = None  # before temperature scaling (None without it)
    test_sets: np.ndarray | None = None  # conformal prediction sets (None without them)


@dataclass
class CVResult:
    """k-fold cross-validation: each fold's run, pooled out-of-fold metrics, per-fold spread."""

    run_dir: Path
    folds: list[RunResult]
    pooled: dict[str, Any]
    per_fold: dict[str, dict[str, Any]]
    predictions: pd.DataFrame
    report: Path | None = None
