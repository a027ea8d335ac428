"""Manifest: one row per sample; read it, check it against the schema, encode labels.

Every problem names the row (sample id) and column; problems of one row are
:class:`DataError` (skippable with ``--skip-bad``), problems of the whole
table are :class:`ManifestError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmodal.data.schema import Schema
from medmodal.errors import BadSampleLog, DataError, ManifestError
from medmodal.survival.labels import encode_survival, time_grid

SPLITS = ("train", "val", "test")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest; every column as text except empty cells (NaN)."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest not found: {p}")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        ValueError,
    ) as exc:
        raise ManifestError(f"cannot read manifest {p}: {exc}") from None
    if df.empty:
        raise ManifestError(f"manifest {p} has no rows")
    return df


def check_columns(df: pd.DataFrame, schema: Schema, source: str, need_labels: bool = True) -> None:
    """All columns the schema names must exist; say which are missing and which exist."""
    wanted = schema.required_columns()
    if need_labels:
        wanted += schema.target.label_columns()
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ManifestError(
            f"manifest {source} lacks column(s) {missing} named in the schema; "
            f"it has: {list(df.columns)}"
        )
    if df.empty:
        raise ManifestError(f"manifest {source} has no rows")


def sample_ids(df: pd.DataFrame, schema: Schema, source: str) -> list[str]:
    if schema.id_column:
        ids = [str(v) for v in df[schema.id_column]]
        if df[schema.id_column].isna().any():
            rows = list(np.flatnonzero(df[schema.id_column].isna().to_numpy())[:5])
            raise ManifestError(f"manifest {source}: empty {schema.id_column!r} in rows {rows}")
    else:
        ids = [str(i) for i in range(len(df))]
    dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"manifest {source}: duplicate sample ids {dup[:5]}")
    return ids


def patient_ids(df: pd.DataFrame, schema: Schema, ids: list[str], source: str) -> list[str]:
    """Patient per row; without a patient column every sample is its own patient."""
    if not schema.patient_column:
        return list(ids)
    col = df[schema.patient_column]
    if col.isna().any():
        bad = [ids[i] for i in np.flatnonzero(col.isna().to_numpy())[:5]]
        raise ManifestError(f"manifest {source}: samples {bad} have no {schema.patient_column!r}")
    return [str(v) for v in col]


def _norm_label(value: Any) -> str:
    s = str(value).strip()
    try:
        f = float(s)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return s


@dataclass
class LabelMap:
    """Class names in index order; binary: ``classes[1]`` is the positive class (the schema's
    ``target.positive``), the one sensitivity, PPV and the curves speak of. Survival:
    ``classes == ["event"]`` and ``times`` is the grid predicted survival curves are read at."""

    task: str
    classes: list[str]
    times: list[float] | None = None

    def encode(self, value: Any) -> int:
        key = _norm_label(value)
        if key not in self._index:
            raise KeyError(key)
        return self._index[key]

    @property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "classes": list(self.classes)}
        if self.times is not None:
            out["times"] = [float(t) for t in self.times]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelMap:
        times = d.get("times")
        return cls(d["task"], list(d["classes"]), None if times is None else list(times))


def build_label_map(df: pd.DataFrame, schema: Schema, source: str) -> LabelMap:
    """Class names in index order; a binary target's positive class goes last (index 1)."""
    t = schema.target
    if t.task == "multilabel":
        return LabelMap("multilabel", list(t.columns or []))
    if t.task == "survival":
        grid = time_grid(df, t.time_column or "", t.event_column or "")
        return LabelMap("survival", ["event"], grid)
    if t.classes:
        values = [_norm_label(c) for c in t.classes]
    else:
        values = sorted({_norm_label(v) for v in df[t.column].dropna()})
    if len(values) < 2:
        raise ManifestError(
            f"manifest {source}: target {t.column!r} has fewer than 2 classes: {values}"
        )
    if t.task == "binary" and len(values) != 2:
        raise ManifestError(
            f"manifest {source}: binary target {t.column!r} has {len(values)} classes {values[:10]}; "
            "use task: multiclass or list the 2 classes"
        )
    if t.task == "binary" and t.positive is not None:
        pos = _norm_label(t.positive)
        if pos not in values:
            raise ManifestError(
                f"manifest {source}: positive class {t.positive!r} does not occur in {t.column!r} "
                f"(classes: {values})"
            )
        values = [v for v in values if v != pos] + [pos]
    return LabelMap(t.task, values)


def encode_labels(
    df: pd.DataFrame,
    schema: Schema,
    label_map: LabelMap,
    ids: list[str],
    bad: BadSampleLog | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels, ok-mask). A bad label raises, or is logged when ``bad`` is given."""
    t = schema.target
    n = len(df)
    if t.task == "survival":
        return encode_survival(df, t.time_column or "", t.event_column or "", ids, bad)
    ok = np.ones(n, dtype=bool)
    if t.task == "multilabel":
        y = np.zeros((n, len(label_map.classes)), dtype=np.float32)
        for j, col in enumerate(label_map.classes):
            for i, v in enumerate(df[col]):
                lab = _norm_label(v) if not pd.isna(v) else None
                if lab in ("0", "1"):
                    y[i, j] = float(lab)
                elif ok[i]:
                    _fail(bad, ok, i, ids[i], f"label column {col!r} must be 0 or 1, got {v!r}")
        return y, ok
    y = np.zeros(n, dtype=np.int64)
    for i, v in enumerate(df[t.column]):
        if pd.isna(v):
            _fail(bad, ok, i, ids[i], f"no label in column {t.column!r}")
            continue
        try:
            y[i] = label_map.encode(v)
        except KeyError:
            _fail(
                bad,
                ok,
                i,
                ids[i],
                f"label {v!r} in column {t.column!r} is not in the label map {label_map.classes}",
            )
    return y, ok


def _fail(bad: BadSampleLog | None, ok: np.ndarray, i: int, sid: str, reason: str) -> None:
    err = DataError(reason, sample_id=sid)
    if bad is None:
        raise err
    bad.add(err)
    ok[i] = False


def read_splits(df: pd.DataFrame, schema: Schema, ids: list[str], source: str) -> np.ndarray | None:
    """The split column normalised to train/val/test, or None without one."""
    if not schema.split_column:
        return None
    col = df[schema.split_column].fillna("").astype(str).str.strip().str.lower()
    col = col.replace({"valid": "val", "validation": "val", "training": "train", "testing": "test"})
    bad = [(ids[i], v) for i, v in enumerate(col) if v not in SPLITS]
    if bad:
        raise ManifestError(
            f"manifest {source}: split column {schema.split_column!r} must be train/val/test; "
            f"rows {bad[:5]} are not"
        )
    return col.to_numpy()
