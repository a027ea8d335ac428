"""The Python API: ``fit``, ``cross_validate``, ``evaluate``, ``predict``. The CLI is a thin layer over it.

>>> from medmodal import api
>>> run = api.fit("configs/breastmnist.yaml", overrides=["train.epochs=5"])
>>> run.metrics["test"]["auroc"]
>>> api.predict(run.checkpoint, "new_images/")   # DataFrame of probabilities
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.console import Console

from medmodal.checkpoint import read_checkpoint, save_checkpoint
from medmodal.config import ExperimentConfig, load_config
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.manifest import (
    LabelMap,
    build_label_map,
    check_columns,
    read_manifest,
    read_splits,
)
from medmodal.data.readers import DICOM_SUFFIXES, PIL_SUFFIXES
from medmodal.data.schema import Schema
from medmodal.data.splits import check_no_leakage, patient_kfold, patient_split
from medmodal.errors import BadSampleLog, ConfigError, DataError, ManifestError
from medmodal.pipeline import (
    Predictor,
    build_dataset,
    make_processors,
    model_from_config,
    probability_frame,
)
from medmodal.train.losses import to_probs
from medmodal.train.trainer import Trainer, predict_logits
from medmodal.utils.io import dump_json, file_digest, to_jsonable
from medmodal.utils.runtime import seed_everything, set_threads


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    bad_samples: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None
    test_probs: np.ndarray | None = None
    ablation_probs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Loaded:
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


def resolve_source(cfg: ExperimentConfig, run_dir: Path) -> tuple[Path, Schema, Path | None]:
    """Manifest path, schema and root for a config (a built-in dataset is prepared first)."""
    d = cfg.data
    if d.dataset:
        from medmodal.datasets import get_dataset, resolve_data_dir

        prepared = get_dataset(d.dataset).prepare(
            run_dir / "data", resolve_data_dir(d.data_dir), **d.dataset_options
        )
        manifest, schema_src = prepared.manifest, prepared.schema
        if d.schema_ is not None:
            schema_src = d.schema_
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
        schema = schema.model_copy(
            update={"modalities": {m: schema.modalities[m] for m in d.modalities}}
        )
    root = Path(d.root) if d.root else Path(manifest).parent
    return Path(manifest), schema, root


def load_data(cfg: ExperimentConfig, run_dir: Path, progress: bool = False) -> Loaded:
    """Read and check the manifest, then decode every sample once (``--skip-bad`` logs bad rows)."""
    manifest_path, schema, root = resolve_source(cfg, run_dir)
    if schema.target.task == "survival":
        raise ConfigError(
            "survival training is not available yet in this version; the survival issue adds it"
        )
    source = str(manifest_path)
    df = read_manifest(manifest_path)
    check_columns(df, schema, source)
    bad = BadSampleLog() if cfg.data.skip_bad else None
    label_map = build_label_map(df, schema, source)
    ds = build_dataset(df, schema, make_processors(schema), root, label_map, bad, source, progress)
    if len(ds) == 0:
        raise ManifestError(f"manifest {source}: no usable rows")
    return Loaded(
        cfg, manifest_path, schema, root, label_map, df, ds, bad, file_digest(manifest_path)
    )


def assign_splits(loaded: Loaded) -> np.ndarray:
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
        splits = patient_split(
            ds.patients,
            ds.labels,
            cfg.data.val_fraction,
            cfg.data.test_fraction,
            seed=cfg.seed,
            stratify=cfg.data.stratify,
        )
    check_no_leakage(ds.patients, splits)
    return splits


def train_and_evaluate(
    loaded: Loaded,
    splits: np.ndarray,
    run_dir: Path,
    *,
    progress: bool | Literal["lines"] = False,
    resume: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Fit fresh processors on the train rows, train, pick the best epoch on val, evaluate val/test."""
    cfg, label_map = loaded.cfg, loaded.label_map
    console = console or Console(stderr=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    processors = make_processors(loaded.schema)
    parts = {
        s: loaded.dataset.subset(np.flatnonzero(splits == s), processors)
        for s in ("train", "val", "test")
    }
    parts = {s: d for s, d in parts.items() if len(d)}
    if "train" not in parts:
        raise ManifestError(f"manifest {loaded.manifest}: no usable training rows")
    for m, proc in processors.items():
        proc.fit(parts["train"].raws_of(m))
    for d in parts.values():
        d.finalize()
    model = model_from_config(loaded.schema, label_map, processors, cfg.model.model_dump())
    base = {
        "config": cfg.to_dict(),
        "schema": loaded.schema.model_dump(mode="json"),
        "label_map": label_map.to_dict(),
        "processors": {m: p.state_dict() for m, p in processors.items()},
        "data_hash": loaded.data_hash,
    }

    def save_last(state: Any, trainer: Trainer) -> None:
        save_checkpoint(
            run_dir / "last.pt",
            {**base, "model_state": trainer.model.state_dict(), "resume": trainer.resume_state()},
        )

    trainer = Trainer(
        model,
        label_map.task,
        len(label_map.classes),
        cfg.train,
        seed=cfg.seed,
        progress=progress,
        on_epoch_end=save_last,
        console=console,
    )
    last = run_dir / "last.pt"
    if resume and last.is_file():
        body = read_checkpoint(last)
        if body.get("data_hash") != loaded.data_hash:
            raise ConfigError(
                f"cannot resume from {last}: the manifest changed since it was written"
            )
        trainer.load_resume_state(body["resume"])
        console.print(f"resuming from {last} after epoch {trainer.state.epoch}")
    t0 = time.perf_counter()
    state = trainer.fit(parts["train"], parts.get("val"))
    bad_list = loaded.bad.to_list() if loaded.bad is not None else []
    metrics: dict[str, Any] = {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_seconds": time.perf_counter() - t0,
        "n": {k: len(v) for k, v in parts.items()},
        "missing_modalities": {k: v.missing_counts for k, v in parts.items()},
        "skipped_samples": len(bad_list),
    }
    result = RunResult(run_dir, run_dir / "best.pt", metrics, state.history, bad_list)
    for split in ("val", "test"):
        if split not in parts:
            continue
        ds = parts[split]
        probs = _probs(model, ds, label_map, cfg, trainer)
        metrics[split] = evaluate_predictions(ds, probs, label_map, cfg)
        probability_frame(ds, probs, label_map).to_csv(
            run_dir / f"predictions_{split}.csv", index=False
        )
        if split == "test":
            result.test_probs = probs
            if cfg.evaluate.ablation and len(processors) > 1:
                result.ablation_probs = {
                    m: _probs(model, ds, label_map, cfg, trainer, absent=(m,)) for m in processors
                }
                metrics["test"]["ablation"] = ablation_table(
                    ds, probs, result.ablation_probs, label_map, cfg
                )
    save_checkpoint(
        result.checkpoint,
        {
            **base,
            "model_state": model.state_dict(),
            "metrics": to_jsonable(metrics),
            "history": state.history,
        },
    )
    dump_json(run_dir / "metrics.json", metrics)
    dump_json(run_dir / "history.json", state.history)
    dump_json(run_dir / "bad_samples.json", bad_list)
    cfg.save(run_dir / "config.yaml")
    split = "test" if "test" in parts else ("val" if "val" in parts else None)
    if cfg.evaluate.report and split is not None:
        probs = (
            result.test_probs
            if split == "test"
            else _probs(model, parts[split], label_map, cfg, trainer)
        )
        notes = [
            f"Split evaluated: {split} ({len(parts[split])} samples). Best epoch {state.best_epoch} of {state.epoch} "
            f"(selected on validation {cfg.train.monitor}). Training took {metrics['train_seconds']:.1f} s.",
            f"Missing modalities per split: {metrics['missing_modalities']}.",
        ]
        result.report = _report(
            run_dir / "report.html",
            cfg,
            parts[split],
            probs,
            metrics[split],
            label_map,
            bad_list,
            notes,
        )
    return result


def _probs(
    model: Any,
    ds: MultimodalDataset,
    label_map: LabelMap,
    cfg: ExperimentConfig,
    trainer: Trainer,
    absent: tuple[str, ...] = (),
) -> np.ndarray:
    logits = predict_logits(model, ds, cfg.train.eval_batch_size, trainer.device, absent=absent)
    return to_probs(logits, label_map.task).numpy()


def start_run(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: list[str] | None,
    show_progress: bool,
) -> tuple[ExperimentConfig, Path, Loaded]:
    """Load the config, seed and size the run, create its directory and load the data."""
    cfg = load_config(config, overrides)
    seed_everything(cfg.seed)
    set_threads(cfg.train.threads)
    run_dir = Path(cfg.output_dir or Path("runs") / cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, run_dir, load_data(cfg, run_dir, show_progress)


def fit(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: list[str] | None = None,
    *,
    progress: bool | Literal["lines"] = True,
    resume: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Train and evaluate one experiment; writes checkpoint, metrics, report into the run dir."""
    t0 = time.perf_counter()
    cfg, run_dir, loaded = start_run(config, overrides, progress is True)
    result = train_and_evaluate(
        loaded, assign_splits(loaded), run_dir, progress=progress, resume=resume, console=console
    )
    result.metrics["wall_seconds"] = time.perf_counter() - t0
    dump_json(run_dir / "metrics.json", result.metrics)
    return result


@dataclass
class CVResult:
    run_dir: Path
    folds: list[RunResult]
    pooled: dict[str, Any]
    per_fold: dict[str, dict[str, float | None]]
    predictions: pd.DataFrame
    report: Path | None = None


def cross_validate(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: list[str] | None = None,
    *,
    k: int = 5,
    progress: bool | Literal["lines"] = False,
    console: Console | None = None,
) -> CVResult:
    """Patient-grouped, stratified k-fold cross-validation.

    Each fold trains on k-1 folds (a patient-grouped ``data.val_fraction`` of them held out for
    epoch selection) with processors fitted on its own training rows, and predicts the held-out
    fold. Out-of-fold predictions are pooled for metrics with patient-grouped bootstrap CIs;
    per-fold mean and standard deviation are reported too. A manifest split column is ignored.
    """
    t0 = time.perf_counter()
    cfg, run_dir, loaded = start_run(config, overrides, progress is True)
    ds, label_map = loaded.dataset, loaded.label_map
    folds = patient_kfold(ds.patients, ds.labels, n_splits=k, seed=cfg.seed)
    results: list[RunResult] = []
    oof: np.ndarray | None = None
    oof_ablation: dict[str, np.ndarray] = {}
    for f in range(k):
        test = folds == f
        rest = np.flatnonzero(~test)
        inner = patient_split(
            [ds.patients[i] for i in rest],
            ds.labels[rest],
            cfg.data.val_fraction,
            0.0,
            seed=cfg.seed + f,
            stratify=cfg.data.stratify,
        )
        splits = np.full(len(ds), "test", dtype=object)
        splits[rest] = inner
        check_no_leakage(ds.patients, splits)
        r = train_and_evaluate(
            loaded, splits.astype(str), run_dir / f"fold_{f}", progress=progress, console=console
        )
        results.append(r)
        idx = np.flatnonzero(test)
        assert r.test_probs is not None
        if oof is None:
            oof = np.zeros((len(ds), *r.test_probs.shape[1:]), dtype=np.float64)
        oof[idx] = r.test_probs
        for m, p in r.ablation_probs.items():
            oof_ablation.setdefault(m, np.zeros_like(oof))[idx] = p
    assert oof is not None
    pooled = evaluate_predictions(ds, oof, label_map, cfg)
    if oof_ablation:
        pooled["ablation"] = ablation_table(ds, oof, oof_ablation, label_map, cfg)
    keys = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro")
    per_fold = {}
    for key in keys:
        vals = [r.metrics["test"].get(key) for r in results]
        ok = [v for v in vals if v is not None]
        per_fold[key] = {
            "mean": float(np.mean(ok)) if ok else None,
            "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
            "folds": vals,
        }
    predictions = probability_frame(ds, oof, label_map)
    predictions.insert(2, "fold", folds)
    predictions.to_csv(run_dir / "oof_predictions.csv", index=False)
    summary = {
        "k": k,
        "n": len(ds),
        "pooled": pooled,
        "per_fold": per_fold,
        "fold_sizes": [int((folds == f).sum()) for f in range(k)],
        "best_epochs": [r.metrics["best_epoch"] for r in results],
        "missing_modalities": ds.missing_counts,
        "skipped_samples": loaded.bad.to_list() if loaded.bad is not None else [],
        "wall_seconds": time.perf_counter() - t0,
    }
    dump_json(run_dir / "cv_metrics.json", summary)
    report = None
    if cfg.evaluate.report:
        notes = [
            f"{k}-fold patient-grouped cross-validation; metrics on pooled out-of-fold predictions of {len(ds)} samples.",
            f"Per-fold AUROC: {per_fold['auroc']}.",
        ]
        report = _report(
            run_dir / "report.html",
            cfg,
            ds,
            oof,
            pooled,
            label_map,
            summary["skipped_samples"],
            notes,
        )
    return CVResult(run_dir, results, pooled, per_fold, predictions, report)


def evaluate_predictions(
    ds: MultimodalDataset, probs: np.ndarray, label_map: LabelMap, cfg: ExperimentConfig
) -> dict[str, Any]:
    """Full metrics + bootstrap CIs (patient-grouped) for one set of predictions."""
    from medmodal.evaluate import bootstrap_ci, compute_metrics

    y = np.asarray(ds.labels)
    m = compute_metrics(
        y, probs, label_map.task, label_map.classes, threshold=cfg.evaluate.threshold
    )
    if cfg.evaluate.bootstrap:
        m["ci"] = bootstrap_ci(
            y,
            probs,
            label_map.task,
            label_map.classes,
            n_boot=cfg.evaluate.bootstrap,
            ci=cfg.evaluate.ci,
            seed=cfg.seed,
            groups=np.asarray(ds.patients),
        )
    return m


def ablation_table(
    ds: MultimodalDataset,
    probs: np.ndarray,
    removed: dict[str, np.ndarray],
    label_map: LabelMap,
    cfg: ExperimentConfig,
) -> dict[str, dict[str, Any]]:
    """AUROC with each modality removed at test time, and its paired-bootstrap change vs all modalities."""
    from medmodal.evaluate import compute_metrics, paired_bootstrap_delta

    y = np.asarray(ds.labels)
    out: dict[str, dict[str, Any]] = {}
    for m, p in removed.items():
        met = compute_metrics(
            y, p, label_map.task, label_map.classes, threshold=cfg.evaluate.threshold
        )
        row: dict[str, Any] = {
            "auroc": met["auroc"],
            "auprc": met["auprc"],
            "accuracy": met["accuracy"],
        }
        if met["auroc"] is not None and cfg.evaluate.bootstrap:
            d = paired_bootstrap_delta(
                y,
                p,
                probs,
                label_map.task,
                label_map.classes,
                metric="auroc",
                n_boot=cfg.evaluate.bootstrap,
                seed=cfg.seed,
                groups=np.asarray(ds.patients),
            )
            row.update(
                {
                    "delta_auroc": d["delta"],
                    "delta_low": d["low"],
                    "delta_high": d["high"],
                    "p_value": d["p_value"],
                }
            )
        out[m] = row
    return out


def _report(
    path: Path,
    cfg: ExperimentConfig,
    ds: MultimodalDataset,
    probs: np.ndarray,
    m: dict[str, Any],
    label_map: LabelMap,
    bad_list: list[dict[str, Any]],
    notes: list[str],
) -> Path:
    from medmodal.evaluate import write_report

    extra = None
    if m.get("ablation"):
        extra = {
            "AUROC with one modality removed at test time": [
                {
                    "removed": k,
                    **{kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in row.items()},
                }
                for k, row in m["ablation"].items()
            ]
        }
    return write_report(
        path,
        title=f"medmodal: {cfg.name}",
        metrics=m,
        y_true=np.asarray(ds.labels),
        y_prob=probs,
        task=label_map.task,
        class_names=label_map.classes,
        ci=m.get("ci"),
        config=cfg.to_dict(),
        bad_samples=bad_list,
        notes=notes,
        extra_tables=extra,
    )


def _frame_from_source(
    source: str | Path | pd.DataFrame, predictor: Predictor
) -> tuple[pd.DataFrame, Path | None, str]:
    """A manifest file, a DataFrame, or a folder of images (single image-modality models)."""
    if isinstance(source, pd.DataFrame):
        return source, None, "dataframe"
    p = Path(source)
    if p.is_dir():
        images = [m for m, s in predictor.schema.modalities.items() if s.type == "image"]
        if len(images) != 1:
            raise ConfigError(
                "a folder can be predicted only by a model with exactly one image modality; give a manifest"
            )
        suffixes = PIL_SUFFIXES | DICOM_SUFFIXES | {".nii", ".gz", ".npy"}
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        if not files:
            raise ManifestError(f"folder {p} holds no image files ({', '.join(sorted(suffixes))})")
        spec = predictor.schema.modalities[images[0]]
        rel = [str(f.relative_to(p)) for f in files]
        frame = pd.DataFrame({spec.column: rel})
        if predictor.schema.id_column:
            frame[predictor.schema.id_column] = rel
        return frame, p, str(p)
    return read_manifest(p), p.parent, str(p)


def predict(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    *,
    root: str | Path | None = None,
    skip_bad: bool = False,
    out: str | Path | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Probabilities for every sample of a manifest / DataFrame / image folder.

    Modalities absent from the input (columns missing or cells empty) are
    predicted without, through the model's missing-modality path.
    With ``skip_bad`` unreadable samples are left out and listed in ``out``'s
    sibling ``*.skipped.json``; without it the first bad sample raises DataError.
    """
    predictor = Predictor.load(checkpoint, device=device)
    frame, base, name = _frame_from_source(source, predictor)
    bad = BadSampleLog() if skip_bad else None
    ds = predictor.dataset(frame, Path(root) if root else base, bad, with_labels=False, source=name)
    if len(ds) == 0:
        raise ManifestError(f"no readable sample in {name}")
    result = predictor.probability_frame(ds, predictor.predict_proba(ds))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(out, index=False)
        if bad is not None:
            dump_json(out.with_suffix(".skipped.json"), bad.to_list())
    result.attrs["skipped"] = bad.to_list() if bad is not None else []
    return result


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path | pd.DataFrame,
    *,
    root: str | Path | None = None,
    split: str | None = None,
    skip_bad: bool = False,
    out_dir: str | Path | None = None,
    bootstrap: int = 1000,
    device: str = "cpu",
) -> dict[str, Any]:
    """Metrics (+ CIs, report) of a checkpoint on a labelled manifest (optionally one split)."""
    predictor = Predictor.load(checkpoint, device=device)
    cfg = load_config(predictor.config, [f"evaluate.bootstrap={bootstrap}"])
    frame, base, name = _frame_from_source(manifest, predictor)
    if split is not None:
        col = predictor.schema.split_column
        if not col or col not in frame.columns:
            raise ManifestError(f"{name} has no split column to select {split!r} from")
        frame = frame[frame[col].astype(str).str.lower() == split]
        if frame.empty:
            raise ManifestError(f"{name} has no rows in split {split!r}")
    bad = BadSampleLog() if skip_bad else None
    ds = predictor.dataset(frame, Path(root) if root else base, bad, with_labels=True, source=name)
    probs = predictor.predict_proba(ds)
    metrics = evaluate_predictions(ds, probs, predictor.label_map, cfg)
    metrics["skipped_samples"] = bad.to_list() if bad is not None else []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        predictor.probability_frame(ds, probs).to_csv(out / "predictions.csv", index=False)
        dump_json(out / "metrics.json", metrics)
        _report(
            out / "report.html",
            cfg,
            ds,
            probs,
            metrics,
            predictor.label_map,
            metrics["skipped_samples"],
            [f"Evaluation of {checkpoint} on {name} ({len(ds)} samples)."],
        )
    return metrics


__all__ = [
    "CVResult",
    "DataError",
    "Predictor",
    "RunResult",
    "cross_validate",
    "evaluate",
    "fit",
    "predict",
]
