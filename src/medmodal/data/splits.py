"""Patient-level splits: stratified, seeded, and never one patient in two splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medmodal.errors import ConfigError, DataError, ManifestError


def _patient_table(
    patients: Sequence[str], labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    pats = np.asarray(patients, dtype=object)
    uniq, inverse = np.unique(pats, return_inverse=True)
    strat = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim > 1:  # multilabel: stratify on the first label only
            lab = lab[:, 0]
        strat = np.zeros(len(uniq), dtype=lab.dtype)
        # A patient's stratum: their most frequent label.
        for k in range(len(uniq)):
            vals, counts = np.unique(lab[inverse == k], return_counts=True)
            strat[k] = vals[np.argmax(counts)]
    return uniq, inverse, strat


def _can_stratify(strat: np.ndarray | None, n_needed: int) -> bool:
    if strat is None:
        return False
    _, counts = np.unique(strat, return_counts=True)
    return len(counts) > 1 and counts.min() >= n_needed


def patient_split(
    patients: Sequence[str],
    labels: np.ndarray | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool = True,
) -> np.ndarray:
    """Assign each row to train / val / test so that every patient is in exactly one split.

    Fractions are of patients; with ``stratify`` the patients' majority label is
    balanced across splits (falls back to unstratified for classes with < 2 patients).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"split fractions must be in [0, 1) with val + test < 1, got val={val_fraction} "
            f"test={test_fraction}"
        )
    uniq, inverse, strat = _patient_table(patients, labels if stratify else None)
    idx = np.arange(len(uniq))
    assign = np.full(len(uniq), "train", dtype=object)
    rest = idx
    if test_fraction > 0:
        s = strat if _can_stratify(strat, 2) else None
        rest, test = _split(idx, test_fraction, seed, s)
        assign[test] = "test"
    if val_fraction > 0:
        frac = val_fraction / (1 - test_fraction)
        s = strat[rest] if strat is not None and _can_stratify(strat[rest], 2) else None
        _, val = _split(rest, frac, seed + 1, s)
        assign[val] = "val"
    return assign[inverse].astype(str)


def _split(
    idx: np.ndarray, size: float, seed: int, strat: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified when the held-out part can hold every class, else a plain seeded split."""
    n_out = int(np.ceil(size * len(idx)))
    if len(idx) < 2 or n_out >= len(idx):
        raise DataError(
            f"{len(idx)} patient(s) cannot be split into a training part and a held-out part of "
            f"{size:.0%}; add data, lower data.val_fraction / data.test_fraction, or give a split column"
        )
    if strat is not None:
        n_classes = len(np.unique(strat))
        if n_classes <= n_out <= len(idx) - n_classes:
            return train_test_split(idx, test_size=size, random_state=seed, stratify=strat)
    return train_test_split(idx, test_size=size, random_state=seed)


def patient_kfold(
    patients: Sequence[str], labels: np.ndarray | None, n_splits: int = 5, seed: int = 0
) -> np.ndarray:
    """Fold index (0..k-1) per row; patient-grouped and stratified where possible."""
    pats = np.asarray(patients, dtype=object)
    n_pat = len(np.unique(pats))
    if n_splits < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {n_splits}")
    if n_pat < n_splits:
        raise DataError(f"{n_pat} patient(s) cannot fill {n_splits} cross-validation folds")
    y = np.zeros(len(pats), dtype=int) if labels is None else np.asarray(labels)
    if y.ndim > 1:
        y = y[:, 0]
    folds = np.full(len(pats), -1)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(pats)), y, groups=pats)):
        folds[test] = k
    return folds


def check_no_leakage(patients: Sequence[str], splits: Sequence[str]) -> None:
    """Raise if any patient appears in more than one split."""
    seen: dict[str, str] = {}
    leaks: list[str] = []
    for p, s in zip(patients, splits, strict=True):
        if p in seen and seen[p] != s:
            leaks.append(f"{p} ({seen[p]} and {s})")
        seen.setdefault(p, s)
    if leaks:
        raise ManifestError(
            f"patient leakage: {len(leaks)} patient(s) appear in more than one split, e.g. "
            f"{leaks[:5]}; fix the split column or drop it to let medmodal split by patient"
        )
