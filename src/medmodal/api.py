"""The Python API: ``fit``, ``evaluate``, ``predict``. The CLI is a thin layer over it.

>>> from medmodal import api
>>> run = api.fit("configs/breastmnist.yaml", overrides=["train.epochs=5"])
>>> run.metrics["test"]["auroc"]
>>> api.predict(run.checkpoint, "new_images/")   # DataFrame of probabilities
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from medmodal.checkpoint import save_checkpoint
from medmodal.config import ExperimentConfig, load_config
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.manifest import (
    LabelMap,
    build_label_map,
    check_columns,
    encode_labels,
    patient_ids,
    read_manifest,
    read_splits,
    sample_ids,
)
from medmodal.data.readers import DICOM_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES
from medmodal.data.schema import Schema
from medmodal.data.splits import check_no_leakage, patient_split
from medmodal.errors import BadSampleLog, ConfigError, DataError, ManifestError
from medmodal.pipeline import Predictor, build_dataset, make_processors, model_from_config, probability_frame
from medmodal.train.trainer import Trainer, predict_logits
from medmodal.train.losses import to_probs
from medmodal.utils.io import dump_json, file_digest
from medmodal.utils.runtime import seed_everything, set_threads


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    bad_samples: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None


def resolve_source(cfg: ExperimentConfig, run_dir: Path) -> tuple[Path, Schema, Path | None]:
    """Manifest path, schema and root for a config (a built-in dataset is prepared first)."""
    d = cfg.data
    if d.dataset:
        from medmodal.datasets import get_dataset, resolve_data_dir

        prepared = get_dataset(d.dataset).prepare(run_dir / "data", resolve_data_dir(d.data_dir), **d.dataset_options)
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
    root = Path(d.root) if d.root else Path(manifest).parent
    return Path(manifest), schema, root


def _assign_splits(df: pd.DataFrame, schema: Schema, cfg: ExperimentConfig, ids: list[str],
                   pats: list[str], labels: np.ndarray, source: str) -> np.ndarray:
    splits = read_splits(df, schema, ids, source)
    if splits is None:
        splits = patient_split(pats, labels, cfg.data.val_fraction, cfg.data.test_fraction,
                               seed=cfg.seed, stratify=cfg.data.stratify)
    check_no_leakage(pats, splits)
    return splits


def fit(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: list[str] | None = None,
    *,
    progress: bool = True,
    resume: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Train and evaluate one experiment; writes checkpoint, metrics, report into the run dir."""
    t_start = time.perf_counter()
    cfg = load_config(config, overrides)
    console = console or Console(stderr=True)
    seed_everything(cfg.seed)
    set_threads(cfg.train.threads)
    run_dir = Path(cfg.output_dir or Path("runs") / cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, schema, root = resolve_source(cfg, run_dir)
    if schema.target.task == "survival":
        raise ConfigError("survival training is not available yet in this version; the survival issue adds it")
    source = str(manifest_path)
    df = read_manifest(manifest_path)
    check_columns(df, schema, source)
    bad = BadSampleLog() if cfg.data.skip_bad else None
    label_map = build_label_map(df, schema, source)
    ids = sample_ids(df, schema, source)
    pats = patient_ids(df, schema, ids, source)
    # Labels for stratification; bad labels raise here, or (--skip-bad) are logged per split below.
    labels, ok = encode_labels(df, schema, label_map, ids, BadSampleLog() if bad is not None else None)
    strat = np.where(ok[:, None] if labels.ndim > 1 else ok, labels, -1)
    splits = _assign_splits(df, schema, cfg, ids, pats, strat, source)
    processors = make_processors(schema)
    parts: dict[str, MultimodalDataset] = {}
    for split in ("train", "val", "test"):
        sub = df[splits == split]
        if len(sub) == 0:
            continue
        parts[split] = build_dataset(sub, schema, processors, root, label_map, bad, f"{source} [{split}]", progress)
    if "train" not in parts or len(parts["train"]) == 0:
        raise ManifestError(f"manifest {source}: no usable training rows")
    for m, proc in processors.items():
        proc.fit(parts["train"].raws_of(m))
    for ds in parts.values():
        ds.finalize()
    model = model_from_config(schema, label_map, processors, cfg.model.model_dump())
    payload_base = {
        "config": cfg.to_dict(),
        "schema": schema.model_dump(mode="json"),
        "label_map": label_map.to_dict(),
        "processors": {m: p.state_dict() for m, p in processors.items()},
        "data_hash": file_digest(manifest_path),
    }

    def save_last(state: Any, trainer: Trainer) -> None:
        save_checkpoint(run_dir / "last.pt", {**payload_base, "model_state": trainer.model.state_dict(),
                                              "resume": trainer.resume_state()})

    trainer = Trainer(model, label_map.task, len(label_map.classes), cfg.train, seed=cfg.seed,
                      progress=progress, on_epoch_end=save_last, console=console)
    last = run_dir / "last.pt"
    if resume and last.is_file():
        from medmodal.checkpoint import read_checkpoint

        body = read_checkpoint(last)
        if body.get("data_hash") != payload_base["data_hash"]:
            raise ConfigError(f"cannot resume from {last}: the manifest changed since it was written")
        trainer.load_resume_state(body["resume"])
        console.print(f"resuming from {last} after epoch {trainer.state.epoch}")
    t_train = time.perf_counter()
    state = trainer.fit(parts["train"], parts.get("val"))
    train_seconds = time.perf_counter() - t_train
    bad_list = bad.to_list() if bad is not None else []
    metrics: dict[str, Any] = {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_seconds": train_seconds,
        "n": {k: len(v) for k, v in parts.items()},
        "missing_modalities": {k: v.missing_counts for k, v in parts.items()},
        "skipped_samples": len(bad_list),
    }
    report_path = None
    for split in ("val", "test"):
        if split not in parts:
            continue
        ds = parts[split]
        probs = to_probs(predict_logits(model, ds, cfg.train.eval_batch_size, trainer.device), label_map.task).numpy()
        metrics[split] = evaluate_predictions(ds, probs, label_map, cfg)
        probability_frame(ds, probs, label_map).to_csv(run_dir / f"predictions_{split}.csv", index=False)
    ckpt = save_checkpoint(run_dir / "best.pt", {**payload_base, "model_state": model.state_dict(),
                                                 "metrics": _json_safe(metrics), "history": state.history})
    metrics["wall_seconds"] = time.perf_counter() - t_start
    dump_json(run_dir / "metrics.json", metrics)
    dump_json(run_dir / "history.json", state.history)
    dump_json(run_dir / "bad_samples.json", bad_list)
    cfg.save(run_dir / "config.yaml")
    eval_split = "test" if "test" in parts else ("val" if "val" in parts else None)
    if cfg.evaluate.report and eval_split is not None:
        report_path = write_run_report(run_dir / "report.html", cfg, parts[eval_split], metrics, eval_split,
                                       label_map, bad_list, run_dir / f"predictions_{eval_split}.csv")
    return RunResult(run_dir, ckpt, metrics, state.history, bad_list, report_path)


def _json_safe(obj: Any) -> Any:
    from medmodal.utils.io import to_jsonable

    return to_jsonable(obj)


def evaluate_predictions(ds: MultimodalDataset, probs: np.ndarray, label_map: LabelMap,
                         cfg: ExperimentConfig) -> dict[str, Any]:
    """Full metrics + bootstrap CIs (patient-grouped) for one split."""
    from medmodal.evaluate import bootstrap_ci, compute_metrics

    y = np.asarray(ds.labels)
    m = compute_metrics(y, probs, label_map.task, label_map.classes, threshold=cfg.evaluate.threshold)
    if cfg.evaluate.bootstrap:
        m["ci"] = bootstrap_ci(y, probs, label_map.task, label_map.classes, n_boot=cfg.evaluate.bootstrap,
                               ci=cfg.evaluate.ci, seed=cfg.seed, groups=np.asarray(ds.patients))
    return m


def write_run_report(path: Path, cfg: ExperimentConfig, ds: MultimodalDataset, metrics: dict[str, Any],
                     split: str, label_map: LabelMap, bad_list: list[dict[str, Any]], pred_csv: Path) -> Path:
    from medmodal.evaluate import write_report

    pred = pd.read_csv(pred_csv)
    cols = [f"prob_{c}" for c in label_map.classes]
    probs = pred[cols[1]].to_numpy() if label_map.task == "binary" else pred[cols].to_numpy()
    m = metrics[split]
    notes = [
        f"Split evaluated: {split} ({len(ds)} samples). Best epoch {metrics['best_epoch']} of {metrics['epochs_run']} "
        f"(selected on validation {cfg.train.monitor}). Training took {metrics['train_seconds']:.1f} s.",
        f"Missing modalities per split: {metrics['missing_modalities']}.",
    ]
    return write_report(path, title=f"medmodal: {cfg.name}", metrics=m, y_true=np.asarray(ds.labels), y_prob=probs,
                        task=label_map.task, class_names=label_map.classes, ci=m.get("ci"), config=cfg.to_dict(),
                        bad_samples=bad_list, notes=notes)


def _frame_from_source(source: str | Path | pd.DataFrame, predictor: Predictor) -> tuple[pd.DataFrame, Path | None, str]:
    """A manifest file, a DataFrame, or a folder of images (single image-modality models)."""
    if isinstance(source, pd.DataFrame):
        return source, None, "dataframe"
    p = Path(source)
    if p.is_dir():
        images = [m for m, s in predictor.schema.modalities.items() if s.type == "image"]
        if len(images) != 1:
            raise ConfigError("a folder can be predicted only by a model with exactly one image modality; give a manifest")
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
        pred = predictor.probability_frame(ds, probs)
        pred.to_csv(out / "predictions.csv", index=False)
        dump_json(out / "metrics.json", metrics)
        from medmodal.evaluate import write_report

        p = probs if predictor.label_map.task != "binary" else probs.reshape(-1)
        write_report(out / "report.html", title=f"medmodal evaluation: {name}", metrics=metrics,
                     y_true=np.asarray(ds.labels), y_prob=p, task=predictor.label_map.task,
                     class_names=predictor.label_map.classes, ci=metrics.get("ci"), config=predictor.config,
                     bad_samples=metrics["skipped_samples"])
    return metrics


__all__ = ["RunResult", "fit", "evaluate", "predict", "Predictor", "DataError"]
