"""The named steps of a run: fit processors, build the model, train, score a split.

:func:`medmodal.run.train_and_evaluate` chains them; ``tune`` and the benchmarks call that
(or these steps) rather than private helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.checkpoint import read_checkpoint
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.preprocess import ModalityProcessor
from medmodal.data.schema import Schema
from medmodal.ensemble.build import is_composite
from medmodal.ensemble.train import fit_composite
from medmodal.errors import ConfigError, ManifestError
from medmodal.evaluate import bootstrap_ci, metrics_for, paired_bootstrap_delta
from medmodal.evaluate.conformal import ConformalFit, set_summary
from medmodal.evaluate.spec import EvalSpec
from medmodal.evaluate.subgroups import group_labels, subgroup_metrics
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
    epoch makes the run resumable (refused if the manifest changed since). A classical learner
    or an ensemble is fitted by :func:`medmodal.ensemble.train.fit_composite` instead."""
    cfg, last = loaded.cfg, run_dir / "last.pt"
    if is_composite(cfg.model):  # a classical learner or an ensemble: its own fitting
        return fit_composite(predictor, parts, cfg, progress, console)

    def save_last(state: TrainState, trainer: Trainer) -> None:
        if trainer.rank == 0:  # under torchrun, rank 0 alone writes
            resume_state = trainer.resume_state()
            predictor.save(last, data_hash=loaded.data_hash, resume=resume_state)

    trainer = Trainer(
        predictor.model,
        predictor.eval_spec,
        cfg.train,
        seed=cfg.seed,
        progress=progress,
        on_epoch_end=save_last,
        console=console,
        survival=predictor.survival,
    )
    if resume and last.is_file():
        body = read_checkpoint(last)
        if body.get("data_hash") != loaded.data_hash:
            raise ConfigError(
                f"cannot resume from {last}: the manifest changed since it was written"
            )
        trainer.load_resume_state(body["resume"])
        trainer.console.print(f"resuming from {last} after epoch {trainer.state.epoch}")
    return trainer.fit(parts["train"], parts.get("val"))


def check_trust(spec: EvalSpec, has_val: bool) -> None:
    """Refuse, before training, calibration or conformal options this run cannot fit."""
    wanted = [
        name
        for name, method in (("calibrate", spec.calibrate), ("conformal", spec.conformal))
        if method != "none"
    ]
    if wanted and spec.task == "survival":
        raise ConfigError(
            f"evaluate.{wanted[0]}.method: a survival target has no temperature scaling or "
            "conformal sets; set it to none"
        )
    if wanted and not has_val:
        raise ConfigError(
            f"evaluate.{wanted[0]}.method is fitted on the validation split and this run has "
            "no validation rows (data.val_fraction = 0 or no 'val' in the split column)"
        )
    if spec.task == "multilabel" and spec.conformal == "aps":
        raise ConfigError(
            "evaluate.conformal.method: aps needs one class per sample; a multilabel target "
            "takes lac (per-label sets)"
        )


def calibrate_predictor(predictor: Predictor, val: MultimodalDataset | None) -> dict[str, Any]:
    """Fit the configured temperature and conformal predictor on ``val`` into ``predictor``
    (:meth:`~medmodal.predictor.Predictor.fit_trust`); returns what was fitted (temperature,
    validation NLL before / after, conformal ``qhat``), ``{}`` without a validation split."""
    return {} if val is None else predictor.fit_trust(val)


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
    modalities) the metrics with each modality removed at test time; all as the Predictor's
    ``eval_spec`` says."""
    spec = predictor.eval_spec
    logits = predictor.logits(ds)
    probs = predictor.probs_from_logits(logits)
    scored = Scored(probs, evaluate_predictions(ds, probs, spec))
    if predictor.temperature is not None:
        scored.raw_probs = predictor.probs_from_logits(logits, calibrated=False)
    scored.sets = predictor.prediction_sets(ds.ids, probs)
    fits = (predictor.temperature, predictor.conformal)
    scored.metrics.update(trust_metrics(ds, scored, spec, predictor.schema, *fits))
    if ablation and spec.ablation and len(predictor.processors) > 1:
        scored.ablation_probs = {
            m: predictor.predict_proba(ds, absent=(m,)) for m in predictor.processors
        }
        scored.metrics["ablation"] = ablation_table(ds, probs, scored.ablation_probs, spec)
    return scored


def evaluate_predictions(
    ds: MultimodalDataset, probs: np.ndarray, spec: EvalSpec
) -> dict[str, Any]:
    """Full metrics + bootstrap CIs (patient-grouped, when ``spec.n_boot``) for one set of
    predictions."""
    y = np.asarray(ds.labels)
    m = metrics_for(y, probs, spec)
    if spec.n_boot:
        groups = np.asarray(ds.patients)
        m["ci"] = bootstrap_ci(y, probs, spec, metrics=CI_METRICS[spec.task], groups=groups)
    return m


def ablation_table(
    ds: MultimodalDataset, probs: np.ndarray, removed: dict[str, np.ndarray], spec: EvalSpec
) -> dict[str, dict[str, Any]]:
    """AUROC (survival: Harrell's C) with each modality removed at test time, and its
    paired-bootstrap change vs all."""
    y, groups = np.asarray(ds.labels), np.asarray(ds.patients)
    out: dict[str, dict[str, Any]] = {}
    survival = spec.task == "survival"
    keys = ("c_index",) if survival else ("auroc", "auprc", "accuracy")
    for m, p in removed.items():
        scores = p[:, 0] if survival else p  # survival: the risk score (Harrell's C)
        met = metrics_for(y, scores, spec)
        row: dict[str, Any] = {k: met[k] for k in keys}
        if met[keys[0]] is not None and spec.n_boot:
            d = paired_bootstrap_delta(y, p, probs, spec, metric="auroc", groups=groups)
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
    spec: EvalSpec,
    schema: Schema,
    temperature: np.ndarray | None = None,
    conformal: ConformalFit | None = None,
) -> dict[str, Any]:
    """``calibration`` (ECE and Brier before / after temperature scaling: when
    ``scored.raw_probs`` is given), ``conformal`` (coverage and set size, overall and per true
    class: when ``scored.sets`` is given) and ``subgroups`` (when the schema names subgroups and
    the rows hold their columns) entries of a split's metrics. ``temperature`` / ``conformal``:
    the fitted values to record (None for pooled cross-validation folds)."""
    y, out = np.asarray(ds.labels), {}
    if scored.raw_probs is not None:
        before = metrics_for(y, scored.raw_probs, spec)
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
            "method": conformal.method if conformal else spec.conformal,
            "nominal": conformal.coverage if conformal else spec.coverage,
            "qhat": conformal.qhat if conformal else None,
            "n_calibration": conformal.n if conformal else None,
            **set_summary(y, scored.sets, spec.task, list(spec.classes)),
        }
    groups = subgroup_columns(schema, ds) if spec.task in SUBGROUP_METRICS else {}
    if groups:
        out["subgroups"] = subgroup_metrics(
            y,
            scored.probs,
            spec,
            groups,
            patients=ds.patients,
            metrics=SUBGROUP_METRICS[spec.task],
            sets=scored.sets,
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
