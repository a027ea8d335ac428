"""Tabular processor: clinical records (labs, vitals, demographics) -> numeric + categorical.

``read`` parses one row's cells (stateless, cached); ``fit`` learns, on the training split only,
median imputation, missing indicators, percentile clipping, standardisation and the categorical
vocabularies; ``transform`` applies them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from numbers import Number
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from pydantic import Field, model_validator

from medmodal.data.preprocess.base import (
    PROCESSORS,
    ModalityProcessor,
    ProcessorOptions,
    is_missing,
)
from medmodal.data.schema import ModalitySpec
from medmodal.errors import DataError

DEFAULT_NA_VALUES: tuple[str, ...] = (
    "",
    "?",
    "NA",
    "N/A",
    "NaN",
    "None",
    "null",
    "missing",
    "Not visible",
    "Would have been stated",
)
UNKNOWN_INDEX = 0  # unseen at predict time, or rarer than ``min_count`` in train
MISSING_INDEX = 1  # absent cell (``categorical_missing: token``)
N_RESERVED = 2


class TabularRaw(TypedDict):
    """``read`` output: parsed cells, before any fitted step."""

    numeric: np.ndarray  # float64 (n_numeric_columns,), NaN = missing
    categorical: list[str | None]  # None = missing


class TabularOptions(ProcessorOptions):
    na_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NA_VALUES))
    coerce: bool = False
    inf: Literal["missing", "error"] = "missing"
    indicators: Literal["auto", "all", "none"] = "auto"
    clip: tuple[float, float] | None = (1.0, 99.0)
    scale: bool = True
    min_count: int = Field(default=1, ge=1)
    categorical_missing: Literal["token", "mode"] = "token"

    @model_validator(mode="after")
    def _check_clip(self) -> TabularOptions:
        if self.clip is not None and not 0 <= self.clip[0] < self.clip[1] <= 100:
            raise ValueError(f"clip must be [low, high] percentiles in 0..100, got {self.clip}")
        return self


class TabularProcessor(ModalityProcessor):
    """Options (``preprocess:`` in the schema):

    * ``na_values``: cell strings that mean "missing" (compared stripped, case-insensitive);
      replaces :data:`DEFAULT_NA_VALUES`. Empty cells / NaN / None are always missing.
    * ``coerce``: ``false`` (default): a numeric cell that is neither a number nor an NA value
      raises :class:`DataError` naming column and value; ``true``: it becomes missing.
    * ``inf``: ``"missing"`` (default): +/-inf become missing (ratios divided by 0, overflow,
      integers beyond the float range);
      ``"error"``: raise :class:`DataError`.
    * ``indicators``: ``"auto"`` (default: one 0/1 column per numeric column that had a missing
      value in train), ``"all"`` or ``"none"``.
    * ``clip``: ``[1, 99]`` (default): clip to these train percentiles (of observed values);
      ``null``: no clipping.
    * ``scale``: ``true`` (default): standardise with the train mean / std (population std,
      computed after imputation and clipping; a std of 0 becomes 1).
    * ``min_count``: categories seen fewer times in train map to the unknown index (default 1).
    * ``categorical_missing``: ``"token"`` (default: index 1) or ``"mode"`` (the train mode).

    Output of ``transform``: ``{"numeric": float32 (n_numeric,), "categorical": int64 (n_cat,)}``
    where ``numeric`` = scaled columns then indicators, and categorical index 0 = unknown/rare,
    1 = missing, 2.. = train vocabulary (sorted).
    """

    modality_type = "tabular"
    Options = TabularOptions
    opts: TabularOptions

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        super().__init__(name, spec)
        cat = list(spec.categorical)
        self.numeric_columns: list[str] = [c for c in (spec.columns or []) if c not in cat]
        self.categorical_columns: list[str] = cat
        o = self.opts
        self.na_values = frozenset(str(v).strip().casefold() for v in o.na_values)
        self.coerce, self.inf, self.indicators = o.coerce, o.inf, o.indicators
        self.clip = None if o.clip is None else (float(o.clip[0]), float(o.clip[1]))
        self.scale, self.min_count = o.scale, o.min_count
        self.categorical_missing = o.categorical_missing
        self.medians_: list[float] | None = None
        self.lower_: list[float] | None = None
        self.upper_: list[float] | None = None
        self.mean_: list[float] | None = None
        self.std_: list[float] | None = None
        self.indicator_columns_: list[str] | None = None
        self.vocab_: list[list[str]] | None = None
        self.cat_fill_: list[int] | None = None
        self._lookup: list[dict[str, int]] = []
        self._indicator_idx: list[int] = []

    def _restore(self) -> None:
        """Derived lookups (vocabulary -> index, indicator -> column) after fit / load."""
        if self.vocab_ is None or self.indicator_columns_ is None:
            return
        self._lookup = [{v: i + N_RESERVED for i, v in enumerate(voc)} for voc in self.vocab_]
        self._indicator_idx = [self.numeric_columns.index(c) for c in self.indicator_columns_]

    # -- stage 1: stateless ---------------------------------------------------------
    def read(self, row: Mapping[str, Any], root: Path | None) -> TabularRaw | None:
        """Parse the row's cells; None when every cell is missing (if ``allow_missing``)."""
        numeric = np.array(
            [self._parse_number(self._cell(row, c), c) for c in self.numeric_columns],
            dtype=np.float64,
        )
        categorical = [self._parse_category(self._cell(row, c)) for c in self.categorical_columns]
        if np.isnan(numeric).all() and all(v is None for v in categorical):
            if self.spec.allow_missing:
                return None
            raise DataError("all values missing", modality=self.name)
        return {"numeric": numeric, "categorical": categorical}

    def _cell(self, row: Mapping[str, Any], column: str) -> Any:
        try:
            return row[column]
        except KeyError:
            raise DataError(f"column {column!r} is not in the row", modality=self.name) from None

    def _is_na(self, value: Any) -> bool:
        if isinstance(value, str):
            return value.strip().casefold() in self.na_values
        return is_missing(value)

    def _parse_number(self, value: Any, column: str) -> float:
        if self._is_na(value):
            return math.nan
        try:
            if isinstance(value, (str, Number, np.generic)):
                x = float(value)  # type: ignore[arg-type]
            else:
                raise TypeError
        except OverflowError:  # an integer beyond float's range: infinite, as "1e400" is
            x = math.inf if value > 0 else -math.inf  # type: ignore[operator]
        except (TypeError, ValueError):
            if self.coerce:
                return math.nan
            raise DataError(
                f"column {column!r}: value {value!r} is not a number "
                "(add it to preprocess.na_values, or set preprocess.coerce: true)",
                modality=self.name,
            ) from None
        if math.isinf(x):
            if self.inf == "error":
                raise DataError(f"column {column!r}: infinite value {value!r}", modality=self.name)
            return math.nan
        return x

    def _parse_category(self, value: Any) -> str | None:
        if self._is_na(value):
            return None
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)  # 1.0 (int column with NaN, read as float) and 1 are one category
        if isinstance(value, np.generic):
            value = value.item()
        return str(value).strip()

    # -- stage 2: fitted --------------------------------------------------------------
    def fit(self, raws: Sequence[TabularRaw | None]) -> TabularProcessor:
        """Learn imputation, indicators, clipping, scaling and vocabularies from train rows."""
        present = [r for r in raws if r is not None]
        if not present:
            raise ValueError(f"modality {self.name!r}: no training row to fit on")
        x = np.stack([r["numeric"] for r in present]).reshape(len(present), -1)
        self._fit_numeric(x)
        self.vocab_, self.cat_fill_ = [], []
        for j in range(len(self.categorical_columns)):
            vocab, fill = self._fit_categorical([r["categorical"][j] for r in present])
            self.vocab_.append(vocab)
            self.cat_fill_.append(fill)
        self._restore()
        return self

    def _fit_numeric(self, x: np.ndarray) -> None:
        p = x.shape[1]
        observed = [x[~np.isnan(x[:, j]), j] for j in range(p)]
        any_missing = np.isnan(x).any(axis=0)
        self.medians_ = [float(np.median(o)) if o.size else 0.0 for o in observed]
        if self.clip is not None:
            self.lower_ = [
                float(np.percentile(o, self.clip[0])) if o.size else 0.0 for o in observed
            ]
            self.upper_ = [
                float(np.percentile(o, self.clip[1])) if o.size else 0.0 for o in observed
            ]
        else:
            self.lower_ = self.upper_ = None
        filled = self._impute_clip(x)
        if self.scale:
            self.mean_ = [float(m) for m in filled.mean(axis=0)]
            self.std_ = [float(s) if s > 1e-12 else 1.0 for s in filled.std(axis=0)]
        else:
            self.mean_, self.std_ = [0.0] * p, [1.0] * p
        flags = {"all": [True] * p, "auto": any_missing.tolist(), "none": [False] * p}
        chosen = flags[self.indicators]
        self.indicator_columns_ = [
            c for c, f in zip(self.numeric_columns, chosen, strict=True) if f
        ]

    def _fit_categorical(self, values: list[str | None]) -> tuple[list[str], int]:
        counts = Counter(v for v in values if v is not None)
        vocab = sorted(v for v, n in counts.items() if n >= self.min_count)
        fill = MISSING_INDEX
        if self.categorical_missing == "mode" and counts:
            top = max(counts.values())
            mode = min(v for v, n in counts.items() if n == top)  # ties: first in sorted order
            fill = vocab.index(mode) + N_RESERVED if mode in vocab else UNKNOWN_INDEX
        return vocab, fill

    def _impute_clip(self, x: np.ndarray) -> np.ndarray:
        """Median imputation then clipping (float64, same shape)."""
        assert self.medians_ is not None
        med = np.asarray(self.medians_, dtype=np.float64)
        out = np.where(np.isnan(x), med, x)
        if self.lower_ is not None and self.upper_ is not None:
            out = np.clip(out, np.asarray(self.lower_), np.asarray(self.upper_))
        return out

    def transform(self, raw: TabularRaw | None) -> dict[str, torch.Tensor]:
        """``{"numeric": (n_numeric,) float32, "categorical": (n_cat,) int64}``."""
        self._check_fitted()
        if raw is None:
            return self.missing()
        assert self.mean_ is not None and self.std_ is not None
        x = np.asarray(raw["numeric"], dtype=np.float64).reshape(1, -1)
        widths = (x.shape[1], len(raw["categorical"]))
        if widths != (len(self.numeric_columns), len(self.categorical_columns)):
            raise DataError(
                f"expected {len(self.numeric_columns)} numeric and {len(self.categorical_columns)} "
                f"categorical values, got {widths[0]} and {widths[1]}",
                modality=self.name,
            )
        scaled = (self._impute_clip(x)[0] - np.asarray(self.mean_)) / np.asarray(self.std_)
        ind = np.isnan(x[0, self._indicator_idx]).astype(np.float64)
        numeric = np.concatenate([scaled, ind])
        cats = [self._encode(j, v) for j, v in enumerate(raw["categorical"])]
        return {
            "numeric": torch.from_numpy(numeric.astype(np.float32)),
            "categorical": torch.tensor(cats, dtype=torch.long).reshape(-1),
        }

    def _encode(self, j: int, value: str | None) -> int:
        assert self.cat_fill_ is not None
        if value is None:
            return self.cat_fill_[j]
        return self._lookup[j].get(value, UNKNOWN_INDEX)

    def missing(self) -> dict[str, torch.Tensor]:
        """Placeholder (never seen as data): zeros, and the missing index for categoricals."""
        self._check_fitted()
        return {
            "numeric": torch.zeros(self.n_numeric),
            "categorical": torch.full(
                (len(self.categorical_columns),), MISSING_INDEX, dtype=torch.long
            ),
        }

    @property
    def n_numeric(self) -> int:
        """Width of the ``numeric`` tensor: scaled columns + missing indicators."""
        assert self.indicator_columns_ is not None
        return len(self.numeric_columns) + len(self.indicator_columns_)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table size per categorical column (2 reserved indices + vocabulary)."""
        assert self.vocab_ is not None
        return [N_RESERVED + len(v) for v in self.vocab_]

    def feature_names(self) -> list[str]:
        """Names of the ``numeric`` entries, then of the ``categorical`` entries."""
        assert self.indicator_columns_ is not None
        ind = [f"{c}__missing" for c in self.indicator_columns_]
        return self.numeric_columns + ind + self.categorical_columns

    def info(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "n_numeric": self.n_numeric,
            "cardinalities": self.cardinalities,
            "feature_names": self.feature_names(),
            "numeric_columns": list(self.numeric_columns),
            "categorical_columns": list(self.categorical_columns),
        }

    @property
    def is_fitted(self) -> bool:
        return self.medians_ is not None and self.vocab_ is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"tabular processor {self.name!r} is not fitted; call fit() first")


@PROCESSORS.register("tabular")
def tabular(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Clinical records: median + indicators, clipping, scaling, categorical vocabularies."""
    return TabularProcessor(name, spec)
