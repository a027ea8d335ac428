"""Survival labels: (time, event) per row, checked; and the time grid curves are reported on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medmodal.errors import BadSampleLog, DataError

GRID_POINTS = 100


def parse_times_events(
    df: pd.DataFrame, time_col: str, event_col: str
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(time, event, problem per row); a problem is a sentence, None for a good row."""
    time = pd.to_numeric(df[time_col], errors="coerce").to_numpy(dtype=float)
    raw_event = pd.to_numeric(df[event_col], errors="coerce").to_numpy(dtype=float)
    problems: list[str | None] = []
    for t, e, rt, re_ in zip(time, raw_event, df[time_col], df[event_col], strict=True):
        if not np.isfinite(t):
            problems.append(f"time {rt!r} in column {time_col!r} is missing or not a number")
        elif t < 0:
            problems.append(f"time {t:g} in column {time_col!r} is negative")
        elif e not in (0.0, 1.0):
            problems.append(f"event {re_!r} in column {event_col!r} must be 0 or 1")
        else:
            problems.append(None)
    return time, np.where(np.isin(raw_event, (0.0, 1.0)), raw_event, 0.0), problems


def encode_survival(
    df: pd.DataFrame, time_col: str, event_col: str, ids: list[str], bad: BadSampleLog | None
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) float32 [time, event] and the ok-mask. Without ``bad`` every bad row is named in
    one DataError; with it each is logged and left out."""
    time, event, problems = parse_times_events(df, time_col, event_col)
    ok = np.array([p is None for p in problems], dtype=bool)
    bad_rows = [(ids[i], p) for i, p in enumerate(problems) if p is not None]
    if bad_rows and bad is None:
        shown = "; ".join(f"row {sid!r}: {p}" for sid, p in bad_rows[:10])
        more = f" (and {len(bad_rows) - 10} more)" if len(bad_rows) > 10 else ""
        raise DataError(
            f"{len(bad_rows)} row(s) have an unusable survival label: {shown}{more}",
            sample_id=bad_rows[0][0],
        )
    for sid, p in bad_rows:
        assert bad is not None
        bad.add(DataError(p or "", sample_id=sid))
    y = np.stack([np.where(ok, time, 0.0), event], axis=1).astype(np.float32)
    return y, ok


def time_grid(df: pd.DataFrame, time_col: str, event_col: str) -> list[float]:
    """The times survival curves are reported at: 0 and quantiles of the usable observed times
    (the grid only says where a curve is read; nothing a model fits depends on it)."""
    time, _, problems = parse_times_events(df, time_col, event_col)
    good = time[[p is None for p in problems]]
    if good.size == 0:
        return [0.0]
    qs = np.quantile(good, np.linspace(0, 1, GRID_POINTS + 1))
    return [float(t) for t in np.unique(np.concatenate([[0.0], qs]))]
