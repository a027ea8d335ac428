"""The named steps of a run: fit processors, build the model, train, score a split.

:func:`medmodal.run.train_and_evaluate` chains them; ``tune`` and the benchmarks call that
(or these steps) rather than private helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.config import ExperimentConfig
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.manifest import LabelMap
from medmodal.data.preprocess import ModalityProcessor
from medmodal.data.schema import Schema
from medmodal.errors import ConfigError, ManifestError
from medmodal.evaluate import bootstrap_ci, compute_metrics, paired_bootstrap_delta
from medmodal.evaluate.conformal import ConformalFit, fit_conformal, set_summary
from medmodal.evaluate.subgroups import group_labels, subgroup_metrics
from medmodal.evaluate.temperature import apply_temperature, fit_temperature, nll
from medmodal.predictor import Predictor, make_processors, model_for, survival_for
from medmodal.run.context import Progress
from medmodal.run.data import LoadedData
from medmodal.survival import check_events
from medmodal.train.trainer import Trainer, TrainState

SPLITS = ("train", "val", "test")
_COMMON = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro")
CI_METRICS = {  # bootstrapped: binary adds the positive class's sensitivity, PPV, specificity, NPV
    "binary": (*_COMMON, "recall", "precision", "specificity", "npv"),
    "multiclass": _COMMON,
    "multilabel": _COMMON,
    "survival": ("c_index", "c_index_uno", "mean_auc", "ibs"),
}


def fit_processors(
    loaded: LoadedData, splits: np.ndarray, cache_dir: Path | None = None
) -> tuple[dict[str, ModalityProcessor], dict[str, MultimodalDataset]]:
    """Fresh processors fitted on the rows marked ``train`` only; each split's dataset
    (sharing the cached reads) finalised with them, its tensors cached as ``train.cache`` says
    (``disk``: memory-mapped files under ``cache_dir / <split>``). Empty splits are left out."""
    processors = make_processors(loaded.schema)
    parts = {s: loaded.dataset.subset(np.flatnonzero(splits == s), processors) for s in SPLITS}
    parts = {s: d for s, d in parts.items() if len(d)}
    if "train" not in parts:
        raise ManifestError(f"manifest {loaded.manifest}: no usable training rows")
    for m, proc in processors.items():
        proc.fit(parts["train"].raws_of(m))
    mode = loaded.cfg.train.cache
    if mode == "disk" and cache_dir is None:
        raise ConfigError("train.cache: disk needs a run folder for its memory-mapped files")
    for split, d in parts.items():
        d.finalize(mode, None if cache_dir is None else cache_dir / split)
    return processors, parts


def new_predictor(loaded: LoadedData, processors: dict[str, ModalityProcessor]) -> Predictor:
    """An untrained model for fitted processors, wrapped as the Predictor that will score it."""
    model = model_for(loaded.schema, loaded.label_map, processors, loaded.cfg)
    survival = survival_for(loaded.label_map, loaded.cfg)
    cfg = loaded.cfg
    return Predictor(loaded.schema, loaded.label_map, processors, model, cfg, survival=survival)


def prepare_survival(predictor: Predictor, parts: dict[str, MultimodalDataset]) -> None:
    """Survival targets: every split must hold an event (DataError naming it); the discrete-time
    cuts are fitted on the training rows."""
    if predictor.survival is None:
        return
    for split, ds in parts.items():
        check_events(np.asarray(ds.labels), ds.ids, split)
    y = np.asarray(parts["train"].labels)
    predictor.survival.fit_cuts(y[:, 0], y[:, 1])


def fit_survival_baseline(predictor: Predictor, train: MultimodalDataset) -> None:
    """Cox: the Breslow baseline hazard from the trained model's training-row risk scores."""
    if predictor.survival is None:
        return
    y = np.asarray(train.labels)
    predictor.survival.fit_baseline(predictor.logits(train), y[:, 0], y[:, 1])


def train_model(
    predictor: Predictor,
    parts: dict[str, MultimodalDataset],
    loaded: LoadedData,
    run_dir: Path,
    *,
    progress: Progress = False,
    resume: bool = False,
    console: Any = None,
) -> TrainState:
    """Train on ``parts["train"]``, pick the best epoch on ``parts["val"]``; ``last.pt`` after every
    epoch makes the run resumable (refused if the manifest changed since)."""
    cfg, last = loaded.cfg, run_dir / "last.pt"

    def save_last(state: TrainState, trainer: Trainer) -> None:
        if trainer.rank == 0:  # under torchrun, rank 0 alone writes
            resume_state = trainer.resume_state()
            predictor.save(last, data_hash=loaded.data_hash, resume=resume_state)

    trainer = Trainer(
        predictor.model,
        loaded.label_map,
        cfg.train,
        seed=cfg.seed,
        threshold=cfg.evaluate.threshold,
        progress=progress,
        on_epoch_end=save_last,
        console=console,
        survival=predictor.survival,
    )
    if resume and last.is_file():
        from medmodal.checkpoint import read_checkpoint

        body = read_checkpoint(last)
        if body.get("data_hash") != loaded.data_hash:
            raise ConfigError(
                f"cannot resume from {last}: the manifest changed since it was written"
            )
        trainer.load_resume_state(body["resume"])
        trainer.console.print(f"resuming from {last} after epoch {trainer.state.epoch}")
    return trainer.fit(parts["train"], parts.get("val"))


def check_trust(cfg: ExperimentConfig, task: str, has_val: bool) -> None:
    """Refuse, before training, calibration or conformal options this run cannot fit."""
    ev = cfg.evaluate
    wanted = [
        name
        for name, method in (("calibrate", ev.calibrate.method), ("conformal", ev.conformal.method))
        if method != "none"
    ]
    if wanted and task == "survival":
        raise ConfigError(
            f"evaluate.{wanted[0]}.method: a survival target has no temperature scaling or "
            "conformal sets; set it to none"
        )
    if wanted and not has_val:
        raise ConfigError(
            f"evaluate.{wanted[0]}.method is fitted on the validation split and this run has "
            "no validation rows (data.val_fraction = 0 or no 'val' in the split column)"
        )
    if task == "multilabel" and ev.conformal.method == "aps":
        raise ConfigError(
            "evaluate.conformal.method: aps needs one class per sample; a multilabel target "
            "takes lac (per-label sets)"
        )


def calibrate_predictor(predictor: Predictor, val: MultimodalDataset | None) -> dict[str, Any]:
    """Fit the configured temperature and conformal predictor on ``val`` (in that order: the
    conformal scores are of the calibrated probabilities) into ``predictor``; returns what was
    fitted (temperature, validation NLL before / after, conformal ``qhat``)."""
    ev, task = predictor.config.evaluate, predictor.label_map.task
    out: dict[str, Any] = {}
    if val is None or (ev.calibrate.method == "none" and ev.conformal.method == "none"):
        return out
    logits, y = predictor.logits(val), np.asarray(val.labels)
    if ev.calibrate.method == "temperature":
        z = logits.numpy().astype(np.float64)
        predictor.temperature = t = fit_temperature(z, y, task)
        out["calibration"] = {
            "method": "temperature",
            "temperature": t.tolist(),
            "val_nll_before": nll(z, y, task),
            "val_nll_after": nll(apply_temperature(z, t), y, task),
        }
    if ev.conformal.method != "none":
        probs = predictor.probs_from_logits(logits)
        c = ev.conformal
        predictor.conformal = fit_conformal(probs, y, task, c.method, c.coverage, val.ids)
        out["conformal"] = predictor.conformal.to_dict()
    return out


@dataclass
class Scored:
    """One split's probabilities and metrics (+ with each modality removed, for the test split).
    ``raw_probs``: before temperature scaling (None without it); ``sets``: conformal sets."""

    probs: np.ndarray
    metrics: dict[str, Any]
    ablation_probs: dict[str, np.ndarray] = field(default_factory=dict)
    raw_probs: np.ndarray | None = None
    sets: np.ndarray | None = None


def score_split(predictor: Predictor, ds: MultimodalDataset, ablation: bool = False) -> Scored:
    """Probabilities through the prediction path, metrics with patient-grouped CIs, calibration
    before / after, conformal coverage, subgroup metrics, and with ``ablation`` (several
    modalities) the metrics with each modality removed at test time."""
    cfg, label_map = predictor.config, predictor.label_map
    logits = predictor.logits(ds)
    probs = predictor.probs_from_logits(logits)
    scored = Scored(probs, evaluate_predictions(ds, probs, label_map, cfg))
    if predictor.temperature is not None:
        scored.raw_probs = predictor.probs_from_logits(logits, calibrated=False)
    scored.sets = predictor.prediction_sets(ds.ids, probs)
    fits = (predictor.temperature, predictor.conformal)
    scored.metrics.update(trust_metrics(ds, scored, label_map, cfg, predictor.schema, *fits))
    if ablation and cfg.evaluate.ablation and len(predictor.processors) > 1:
        scored.ablation_probs = {
            m: predictor.predict_proba(ds, absent=(m,)) for m in predictor.processors
        }
        scored.metrics["ablation"] = ablation_table(
            ds, probs, scored.ablation_probs, label_map, cfg
        )
    return scored


def evaluate_predictions(
    ds: MultimodalDataset, probs: np.ndarray, label_map: LabelMap, cfg: ExperimentConfig
) -> dict[str, Any]:
    """Full metrics + bootstrap CIs (patient-grouped) for one set of predictions."""
    y = np.asarray(ds.labels)
    ev = cfg.evaluate
    times = (
        {"times": label_map.times, "eval_times": ev.times} if label_map.task == "survival" else {}
    )
    m = compute_metrics(
        y, probs, label_map.task, label_map.classes, threshold=ev.threshold, **times
    )
    if ev.bootstrap:
        m["ci"] = bootstrap_ci(
            y,
            probs,
            label_map.task,
            label_map.classes,
            metrics=CI_METRICS[label_map.task],
            threshold=ev.threshold,
            n_boot=ev.bootstrap,
            ci=ev.ci,
            seed=cfg.seed,
            groups=np.asarray(ds.patients),
            **times,
        )
    return m


def ablation_table(
    ds: MultimodalDataset,
    probs: np.ndarray,
    removed: dict[str, np.ndarray],
    label_map: LabelMap,
    cfg: ExperimentConfig,
) -> dict[str, dict[str, Any]]:
    """AUROC (survival: Harrell's C) with each modality removed at test time, and its
    paired-bootstrap change vs all."""
    y, ev = np.asarray(ds.labels), cfg.evaluate
    out: dict[str, dict[str, Any]] = {}
    survival = label_map.task == "survival"
    keys = ("c_index",) if survival else ("auroc", "auprc", "accuracy")
    for m, p in removed.items():
        scores = p[:, 0] if survival else p  # survival: the risk score (Harrell's C)
        met = compute_metrics(y, scores, label_map.task, label_map.classes, threshold=ev.threshold)
        row: dict[str, Any] = {k: met[k] for k in keys}
        if met[keys[0]] is not None and ev.bootstrap:
            d = paired_bootstrap_delta(
                y,
                p,
                probs,
                label_map.task,
                label_map.classes,
                metric="auroc",
                threshold=ev.threshold,
                n_boot=ev.bootstrap,
                seed=cfg.seed,
                groups=np.asarray(ds.patients),
            )
            row.update(
                **{f"delta_{keys[0]}": d["delta"]},
                delta_low=d["low"],
                delta_high=d["high"],
                p_value=d["p_value"],
            )
        out[m] = row
    return out


def trust_metrics(
    ds: MultimodalDataset,
    scored: Scored,
    label_map: LabelMap,
    cfg: ExperimentConfig,
    schema: Schema,
    temperature: np.ndarray | None = None,
    conformal: ConformalFit | None = None,
) -> dict[str, Any]:
    """``calibration`` (ECE and Brier before / after temperature scaling: when
    ``scored.raw_probs`` is given), ``conformal`` (coverage and set size, overall and per true
    class: when ``scored.sets`` is given) and ``subgroups`` (when the schema names subgroups and
    the rows hold their columns) entries of a split's metrics. ``temperature`` / ``conformal``:
    the fitted values to record (None for pooled cross-validation folds)."""
    lm, ev = label_map, cfg.evaluate
    y, out = np.asarray(ds.labels), {}
    if scored.raw_probs is not None:
        before = compute_metrics(y, scored.raw_probs, lm.task, lm.classes, ev.threshold)
        out["calibration"] = {
            "method": "temperature",
            "temperature": None if temperature is None else temperature.tolist(),
            "ece_before": before["ece"],
            "ece_after": scored.metrics["ece"],
            "brier_before": before["brier"],
            "brier_after": scored.metrics["brier"],
        }
    if scored.sets is not None:
        out["conformal"] = {
            "method": conformal.method if conformal else ev.conformal.method,
            "nominal": conformal.coverage if conformal else ev.conformal.coverage,
            "qhat": conformal.qhat if conformal else None,
            "n_calibration": conformal.n if conformal else None,
            **set_summary(y, scored.sets, lm.task, lm.classes),
        }
    groups = subgroup_columns(schema, ds) if lm.task in SUBGROUP_METRICS else {}
    if groups:
        out["subgroups"] = subgroup_metrics(
            y,
            scored.probs,
            lm.task,
            lm.classes,
            groups,
            patients=ds.patients,
            metrics=SUBGROUP_METRICS[lm.task],
            sets=scored.sets,
            threshold=ev.threshold,
            n_boot=ev.bootstrap,
            ci=ev.ci,
            seed=cfg.seed,
        )
    return out


SUBGROUP_METRICS = {
    "binary": ("auroc", "accuracy", "recall", "specificity", "ece"),
    "multiclass": ("auroc", "accuracy", "balanced_accuracy", "ece"),
    "multilabel": ("auroc", "accuracy", "f1_macro", "ece"),
}


def subgroup_columns(schema: Schema, ds: MultimodalDataset) -> dict[str, list[str]]:
    """A group name per sample for each schema subgroup whose column the rows hold."""
    out = {}
    for name, spec in schema.subgroups.items():
        if ds.rows and all(spec.column in r for r in ds.rows):
            out[name] = group_labels([r[spec.column] for r in ds.rows], spec.bins)
    return out
