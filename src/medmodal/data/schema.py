"""The schema: which manifest column is which modality and which is the target.

A schema is YAML (or a dict) validated by pydantic::

    id_column: sample_id          # optional, default: row number
    patient_column: patient_id
    split_column: split           # optional: values train / val / test
    target:
      task: binary                # binary | multiclass | multilabel
      column: label               # multilabel: columns: [a, b, c]
      classes: [benign, malignant]  # optional order
      positive: malignant         # binary: the finding a clinician looks for (default: classes[1])
    modalities:
      image: {type: image, column: image_path, preprocess: {size: [28, 28], channels: 1}}
      note:  {type: text, column: clinical_notes}
      labs:  {type: tabular, columns: [age, wbc], categorical: [sex]}
    subgroups:                    # optional: metrics per group in the report
      sex: {column: sex}
      age: {column: age, bins: [40, 60, 80]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from medmodal.errors import ConfigError
from medmodal.options import Strict, parse_options

ModalityType = Literal["image", "text", "audio", "signal", "tabular"]
Task = Literal["binary", "multiclass", "multilabel", "survival"]
RESERVED_NAMES = frozenset({"id", "patient_id", "label", "present", "split", "index"})


class ModalitySpec(Strict):
    """One named input of a sample."""

    type: ModalityType
    column: str | None = None
    columns: list[str] | None = None
    categorical: list[str] = Field(default_factory=list)
    preprocess: dict[str, Any] = Field(default_factory=dict)
    allow_missing: bool = True
    on_bad: Literal["error", "missing"] = "error"

    @model_validator(mode="after")
    def _check_columns(self) -> ModalitySpec:
        if self.type == "tabular":
            if not (self.columns or self.categorical):
                raise ValueError(
                    "a tabular modality needs `columns` (numeric) and/or `categorical`"
                )
            if self.column is not None:
                raise ValueError("a tabular modality takes `columns`, not `column`")
        else:
            if not self.column:
                raise ValueError(f"a {self.type} modality needs `column`")
            if self.columns or self.categorical:
                raise ValueError(f"a {self.type} modality takes one `column`, not `columns`")
        return self

    def input_columns(self) -> list[str]:
        if self.type == "tabular":
            numeric = [c for c in (self.columns or []) if c not in self.categorical]
            return numeric + list(self.categorical)
        assert self.column is not None
        return [self.column]


class TargetSpec(Strict):
    task: Task = "multiclass"
    column: str | None = None
    columns: list[str] | None = None
    classes: list[str] | None = None
    positive: str | None = Field(
        default=None,
        description="binary: the positive class (sensitivity, PPV and curves are of it)",
    )
    time_column: str | None = None
    event_column: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.task == "survival":
            if not (self.time_column and self.event_column):
                raise ValueError("a survival target needs `time_column` and `event_column`")
            return self
        if self.task == "multilabel":
            if not self.columns:
                raise ValueError("a multilabel target needs `columns` (one 0/1 column per finding)")
        elif not self.column:
            raise ValueError(f"a {self.task} target needs `column`")
        if self.task == "binary" and self.classes is not None and len(self.classes) != 2:
            raise ValueError(f"a binary target needs exactly 2 classes, got {self.classes}")
        if self.positive is not None:
            if self.task != "binary":
                raise ValueError("`positive` names the positive class of a binary target only")
            if self.classes is not None and self.positive not in self.classes:
                raise ValueError(
                    f"positive class {self.positive!r} is not in classes {self.classes}"
                )
        return self

    def label_columns(self) -> list[str]:
        if self.task == "survival":
            return [self.time_column, self.event_column]  # type: ignore[list-item]
        return list(self.columns) if self.task == "multilabel" else [self.column]  # type: ignore[list-item]


class SubgroupSpec(Strict):
    """A subgroup variable of the report: a manifest ``column``; ``bins`` (strictly ascending
    edges) cut a numeric column into bands ``< b0``, ``[b0, b1)``, ..., ``>= bn``."""

    column: str
    bins: list[float] | None = None

    @model_validator(mode="after")
    def _check_bins(self) -> SubgroupSpec:
        if self.bins is not None and (
            not self.bins or any(b <= a for a, b in zip(self.bins, self.bins[1:], strict=False))
        ):
            raise ValueError(f"bins must be strictly ascending edges, got {self.bins}")
        return self


class Schema(Strict):
    id_column: str | None = None
    patient_column: str | None = None
    split_column: str | None = None
    target: TargetSpec
    modalities: dict[str, ModalitySpec]
    subgroups: dict[str, SubgroupSpec] = Field(
        default_factory=dict, description="report metrics per group of these columns (sex, age)"
    )

    @model_validator(mode="after")
    def _check(self) -> Schema:
        if not self.modalities:
            raise ValueError("the schema names no modality")
        bad = sorted(set(self.modalities) & RESERVED_NAMES)
        if bad:
            raise ValueError(f"modality names {bad} are reserved; rename them")
        return self

    def required_columns(self) -> list[str]:
        cols: list[str] = []
        for c in (self.id_column, self.patient_column, self.split_column):
            if c:
                cols.append(c)
        for spec in self.modalities.values():
            cols.extend(spec.input_columns())
        return list(dict.fromkeys(cols))

    @classmethod
    def load(cls, source: str | Path | dict[str, Any] | Schema) -> Schema:
        """Read a schema from YAML path, dict or Schema; errors name the field."""
        if isinstance(source, Schema):
            return source
        where = "schema"
        if isinstance(source, (str, Path)):
            path = Path(source)
            where = str(path)
            if not path.is_file():
                raise ConfigError(f"schema file not found: {path}")
            try:
                source = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return parse_options(cls, source, where)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False))
