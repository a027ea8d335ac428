"""Load a run's data once (every sample decoded and cached) and assign it to splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from medmodal.config import ExperimentConfig
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.manifest import (
    LabelMap,
    build_label_map,
    check_columns,
    read_manifest,
    read_splits,
)
from medmodal.data.schema import Schema
from medmodal.data.splits import check_no_leakage, patient_kfold, patient_split
from medmodal.errors import BadSampleLog, ConfigError, ManifestError
from medmodal.evaluate.spec import EvalSpec
from medmodal.predictor import dataset_rows, make_processors
from medmodal.train.distributed import world
from medmodal.utils.io import file_digest


@dataclass
class LoadedData:
    """A manifest read once: every sample decoded and cached, labels encoded."""

    cfg: ExperimentConfig
    manifest: Path
    schema: Schema
    root: Path | None
    label_map: LabelMap
    frame: pd.DataFrame
    dataset: MultimodalDataset
    bad: BadSampleLog | None
    data_hash: str

    @cached_property
    def spec(self) -> EvalSpec:
        """How this run scores its predictions (built once from ``cfg`` and the label map)."""
        return EvalSpec.from_config(self.cfg, self.label_map)

    def with_config(self, cfg: ExperimentConfig) -> LoadedData:
        """The same data under another config (model / train / evaluate fields and the modality
        subset; the other data fields cannot change, since the samples are already read)."""
        same = {"modalities": None}
        if cfg.data.model_copy(update=same) != self.cfg.data.model_copy(update=same):
            raise ConfigError("the data section cannot change for data that is already loaded")
        return replace(self, cfg=cfg)

    def select(self, modalities: Sequence[str]) -> LoadedData:
        """The same samples with only ``modalities`` (a run on it fits only their processors)."""
        unknown = sorted(set(modalities) - set(self.schema.modalities))
        if unknown:
            raise ConfigError(
                f"modalities {unknown} are not loaded ({sorted(self.schema.modalities)})"
            )
        keep = {m: self.schema.modalities[m] for m in modalities}
        return replace(self, schema=self.schema.model_copy(update={"modalities": keep}))

    @property
    def bad_list(self) -> list[dict[str, str | None]]:
        return self.bad.to_list() if self.bad is not None else []


def resolve_source(cfg: ExperimentConfig, run_dir: Path) -> tuple[Path, Schema, Path]:
    """Manifest path, schema and data root of a config (a built-in dataset is prepared first)."""
    d = cfg.data
    if d.dataset:
        from medmodal.datasets import prepare_dataset

        prepared = prepare_dataset(d.dataset, run_dir / "data", d.data_dir, d.dataset_options)
        manifest, schema_src = prepared.manifest, d.schema_ or prepared.schema
    else:
        if not d.manifest:
            raise ConfigError("config needs data.manifest (+ data.schema) or data.dataset")
        if d.schema_ is None:
            raise ConfigError("config needs data.schema (a YAML path or an inline mapping)")
        manifest, schema_src = Path(d.manifest), d.schema_
    schema = Schema.load(schema_src)
    if d.modalities:
        unknown = sorted(set(d.modalities) - set(schema.modalities))
        if unknown:
            raise ConfigError(
                f"data.modalities names {unknown}, not in the schema ({sorted(schema.modalities)})"
            )
        keep = {m: schema.modalities[m] for m in d.modalities}
        schema = schema.model_copy(update={"modalities": keep})
    root = Path(d.root) if d.root else Path(manifest).parent
    return Path(manifest), schema, root


def load_data(cfg: ExperimentConfig, run_dir: Path, progress: bool = False) -> LoadedData:
    """Read and check the manifest, then decode every sample once (``--skip-bad`` logs bad rows)."""
    manifest, schema, root = resolve_source(cfg, run_dir)
    source = str(manifest)
    df = read_manifest(manifest)
    check_columns(df, schema, source)
    check_subgroups(df, schema, source)
    bad = BadSampleLog() if cfg.data.skip_bad else None
    label_map = build_label_map(df, schema, source)
    spill = cache_dir(run_dir) / "raw" if cfg.train.cache == "disk" else None
    processors = make_processors(schema)
    ds = dataset_rows(df, schema, processors, root, label_map, bad, source)
    ds = ds.load(bad, progress=progress, label=f"reading {source}", spill=spill)
    if len(ds) == 0:
        raise ManifestError(f"manifest {source}: no usable rows")
    return LoadedData(cfg, manifest, schema, root, label_map, df, ds, bad, file_digest(manifest))


def cache_dir(run_dir: Path) -> Path:
    """This process's folder for memory-mapped caches (``train.cache: disk``): one per rank
    under torchrun, since every process maps its own files."""
    rank, size = world()
    return run_dir / "cache" / (f"rank{rank}" if size > 1 else "")


def check_subgroups(df: pd.DataFrame, schema: Schema, source: str) -> None:
    """Every schema subgroup names a manifest column (ConfigError naming the option)."""
    for name, spec in schema.subgroups.items():
        if spec.column not in df.columns:
            raise ConfigError(
                f"schema subgroups.{name}.column: {spec.column!r} is not a column of manifest "
                f"{source}; it has: {list(df.columns)}"
            )


def strata(loaded: LoadedData) -> np.ndarray:
    """What splits and folds stratify on: the labels; survival: the event indicator."""
    y = np.asarray(loaded.dataset.labels)
    return y[:, 1].astype(int) if loaded.label_map.task == "survival" else y


def assign_splits(loaded: LoadedData) -> np.ndarray:
    """train/val/test per loaded row: the manifest's split column, else a seeded patient split."""
    cfg, ds, schema = loaded.cfg, loaded.dataset, loaded.schema
    if schema.split_column:
        ids = (
            [str(v) for v in loaded.frame[schema.id_column]]
            if schema.id_column
            else [str(i) for i in range(len(loaded.frame))]
        )
        col = read_splits(loaded.frame, schema, ids, str(loaded.manifest))
        by_id = dict(zip(ids, col, strict=True))
        splits = np.array([by_id[i] for i in ds.ids])
    else:
        d = cfg.data
        splits = patient_split(
            ds.patients,
            strata(loaded),
            d.val_fraction,
            d.test_fraction,
            seed=cfg.seed,
            stratify=d.stratify,
        )
    check_no_leakage(ds.patients, splits)
    return splits


def fold_splits(loaded: LoadedData, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Patient-grouped stratified folds, and for each fold the train/val/test assignment: the
    fold is test, a patient-grouped ``data.val_fraction`` of the rest picks the epoch."""
    cfg, ds = loaded.cfg, loaded.dataset
    labels = strata(loaded)
    folds = patient_kfold(ds.patients, labels, n_splits=k, seed=cfg.seed)
    out = []
    for f in range(k):
        rest = np.flatnonzero(folds != f)
        inner = patient_split(
            [ds.patients[i] for i in rest],
            labels[rest],
            cfg.data.val_fraction,
            0.0,
            seed=cfg.seed + f,
            stratify=cfg.data.stratify,
        )
        splits = np.full(len(ds), "test", dtype=object)
        splits[rest] = inner
        check_no_leakage(ds.patients, splits)
        out.append(splits.astype(str))
    return folds, out
