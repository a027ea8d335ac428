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
from medmodal.errors import ConfigError, ManifestError
from medmodal.evaluate import bootstrap_ci, compute_metrics, paired_bootstrap_delta
from medmodal.predictor import Predictor, make_processors, model_for, predict_logits, survival_for
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
    loaded: LoadedData, splits: np.ndarray
) -> tuple[dict[str, ModalityProcessor], dict[str, MultimodalDataset]]:
    """Fresh processors fitted on the rows marked ``train`` only; each split's dataset
    (sharing the cached reads) finalised with them. Empty splits are left out."""
    processors = make_processors(loaded.schema)
    parts = {s: loaded.dataset.subset(np.flatnonzero(splits == s), processors) for s in SPLITS}
    parts = {s: d for s, d in parts.items() if len(d)}
    if "train" not in parts:
        raise ManifestError(f"manifest {loaded.manifest}: no usable training rows")
    for m, proc in processors.items():
        proc.fit(parts["train"].raws_of(m))
    for d in parts.values():
        d.finalize()
    return processors, parts


def new_predictor(loaded: LoadedData, processors: dict[str, ModalityProcessor]) -> Predictor:
    """An untrained model for fitted processors, wrapped as the Predictor that will score it."""
    model = model_for(loaded.schema, loaded.label_map, processors, loaded.cfg)
    survival = survival_for(loaded.label_map, loaded.cfg)
    return Predictor(loaded.schema, loaded.label_map, processors, model, loaded.cfg, survival)


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
    bs = predictor.config.train.eval_batch_size
    logits = predict_logits(predictor.model, train, bs, predictor.device)
    y = np.asarray(train.labels)
    predictor.survival.fit_baseline(logits, y[:, 0], y[:, 1])


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


@dataclass
class Scored:
    """One split's probabilities and metrics (+ with each modality removed, for the test split)."""

    probs: np.ndarray
    metrics: dict[str, Any]
    ablation_probs: dict[str, np.ndarray] = field(default_factory=dict)


def score_split(predictor: Predictor, ds: MultimodalDataset, ablation: bool = False) -> Scored:
    """Probabilities through the prediction path, metrics with patient-grouped CIs, and with
    ``ablation`` (several modalities) the metrics with each modality removed at test time."""
    cfg, label_map = predictor.config, predictor.label_map
    probs = predictor.predict_proba(ds)
    scored = Scored(probs, evaluate_predictions(ds, probs, label_map, cfg))
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
