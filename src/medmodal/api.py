"""The Python API: ``fit``, ``cross_validate``, ``evaluate``, ``predict``, ``explain`` (``tune``,
``pretrain``).

A thin front over the steps in :mod:`medmodal.run`; the CLI is a thin layer over it.

>>> from medmodal import api
>>> run = api.fit("configs/breastmnist.yaml", overrides=["train.epochs=5"])
>>> run.metrics["test"]["auroc"]
>>> api.predict(run.checkpoint, "new_images/")   # DataFrame of probabilities
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console

from medmodal.ensemble.presets import apply_preset
from medmodal.errors import DataError
from medmodal.explain import gallery as _gallery  # noqa: F401  (the report's gallery section)
from medmodal.options import Strict, parse_options
from medmodal.predictor import Predictor
from medmodal.run import CVResult, RunResult, load_data
from medmodal.run.context import ConfigSource, Progress
from medmodal.run.entry import cross_validate_experiment, fit_experiment
from medmodal.run.inference import (
    evaluate_checkpoint,
    export_checkpoint,
    predict_source,
    whatif_checkpoint,
)

if TYPE_CHECKING:
    from medmodal.explain import ExplainResult
    from medmodal.pretrain import PretrainResult
    from medmodal.whatif import WhatIfResult


def fit(
    config: ConfigSource,
    overrides: list[str] | None = None,
    *,
    progress: Progress = True,
    resume: bool = False,
    console: Console | None = None,
    preset: str | None = None,
    time_budget: float | None = None,
) -> RunResult:
    """Train and evaluate one experiment; writes checkpoint, metrics, report into the run dir.

    ``preset``: ``best`` trains the config's deep model (``model.ensemble.deep_seeds`` seeds)
    and the task's classical learners and ensembles them with weights chosen on the validation
    split (one checkpoint); ``fast``: one model (the config without ``model.ensemble``).
    ``time_budget`` (seconds): ensemble members not started by then are skipped.

    The data are split by the manifest's split column or a seeded patient-level split; the
    best epoch is chosen on validation; validation and test are scored through the same
    prediction path as :func:`predict`. A leakage audit (``audit.json``) is written too.

    Started by torchrun (``medmodal train --nproc N``), each process trains on its share of
    every batch (DistributedDataParallel); rank 0 prepares the data first, audits, scores and
    writes; the other ranks return a result without test metrics.
    """
    config, overrides = apply_preset(config, overrides, preset, time_budget)
    return fit_experiment(config, overrides, progress, resume, console)


def cross_validate(
    config: ConfigSource,
    overrides: list[str] | None = None,
    *,
    k: int = 5,
    progress: Progress = False,
    console: Console | None = None,
    preset: str | None = None,
) -> CVResult:
    """Patient-grouped, stratified k-fold cross-validation.

    Each fold trains on k-1 folds (a patient-grouped ``data.val_fraction`` of them held out for
    epoch selection) with processors fitted on its own training rows, and predicts the held-out
    fold. Out-of-fold predictions are pooled for metrics with patient-grouped bootstrap CIs;
    per-fold mean and standard deviation are reported too. A manifest split column is ignored.
    ``preset``: as for :func:`fit` (every fold trains the preset's model).
    """
    config, overrides = apply_preset(config, overrides, preset)
    return cross_validate_experiment(config, overrides, k, progress, console)


def predict(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    *,
    root: str | Path | None = None,
    skip_bad: bool = False,
    out: str | Path | None = None,
    device: str = "cpu",
    amp: bool = False,
) -> pd.DataFrame:
    """Probabilities and the predicted class for every sample of a manifest / DataFrame / image
    folder. ``amp``: bf16 (CPU) / fp16 (CUDA) autocast, faster, probabilities within ~1e-2.

    Modalities absent from the input (columns missing or cells empty) are predicted without,
    through the model's missing-modality path. With ``skip_bad`` unreadable samples are left
    out and listed in ``result.attrs["skipped"]`` (and ``out``'s sibling ``*.skipped.json``);
    without it the first bad sample raises DataError.
    """
    return predict_source(checkpoint, source, root, skip_bad, out, device, amp)


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
    return evaluate_checkpoint(
        checkpoint, manifest, root, split, skip_bad, out_dir, bootstrap, device
    )


class ExplainSettings(Strict):
    """The less used settings of :func:`explain`: ``modalities`` (explain only these),
    ``options`` (per-method settings, e.g. ``{"integrated_gradients": {"steps": 64}}``),
    ``skip_bad`` (leave unreadable samples out, listed in the JSON) and ``device``."""

    modalities: list[str] | None = None
    options: dict[str, dict[str, Any]] | None = None
    skip_bad: bool = False
    device: str = "cpu"


def explain(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    out: str | Path,
    *,
    methods: list[str] | None = None,
    samples: int | list[str] | None = None,
    target: str | None = None,
    root: str | Path | None = None,
    **settings: Any,
) -> ExplainResult:
    """Attributions for every sample and modality of a manifest / DataFrame / image folder, for
    the predicted class (or ``target``): Grad-CAM and Integrated Gradients on images, signals and
    spectrograms, per word for notes, per feature for records, and exact Shapley values of the
    modalities. Writes PNGs, ``explanations.json`` and ``attributions.npz`` into ``out``; a
    modality the model lacks or a method that does not fit it is a ConfigError. ``settings``:
    the fields of :class:`ExplainSettings` (``modalities``, ``options``, ``skip_bad``,
    ``device``). See :func:`medmodal.explain.explain`."""
    from medmodal.explain import explain as _explain

    s = parse_options(ExplainSettings, settings, "explain")
    return _explain(
        checkpoint,
        source,
        out,
        methods=methods,
        modalities=s.modalities,
        samples=samples,
        target=target,
        options=s.options,
        root=root,
        skip_bad=s.skip_bad,
        device=s.device,
    )


def whatif(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    treatment: str,
    *,
    out_dir: str | Path | None = None,
    root: str | Path | None = None,
    device: str = "cpu",
    **options: Any,
) -> WhatIfResult:
    """Each patient's predicted survival curve with the input ``treatment`` set to each of its
    values (S-learner), the RMST difference from ``reference`` to ``horizon`` with a
    patient-grouped bootstrap CI, and the propensity overlap; with ``out_dir`` writes
    whatif.csv / .json / .png. ``options``: the fields of
    :class:`~medmodal.whatif.run.WhatIfOptions` (``values``, ``reference``, ``horizon``,
    ``n_boot``, ``seed``), checked before the checkpoint is read. Associations learned from
    data, not treatment advice (``medmodal.whatif.CAVEAT`` is in every output)."""
    from medmodal.whatif.run import whatif_options

    opts = whatif_options(options)
    return whatif_checkpoint(
        checkpoint, source, treatment, root, out_dir, device, **opts.model_dump()
    )


def pretrain(
    config: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    progress: Progress = True,
    resume: bool = False,
    console: Console | None = None,
) -> PretrainResult:
    """Masked-image pretraining of an image encoder on images only (SimMIM for the ViT and the
    Swin transformer, SparK-style for the ResNets); the training split only unless
    ``include_test``. Returns a PretrainResult whose ``checkpoint``
    ``model.encoders.<modality>.init`` takes; see :mod:`medmodal.pretrain`."""
    from medmodal.pretrain import pretrain as _pretrain

    return _pretrain(config, overrides, progress=progress, resume=resume, console=console)


def tune(*args: Any, **kwargs: Any) -> Any:
    """Hyper-parameter search on the validation split; see :func:`medmodal.tune.tune`."""
    from medmodal.tune import tune as _tune

    return _tune(*args, **kwargs)


def serve(checkpoints: list[str], tokens: str | Path, **options: Any) -> None:
    """Run the prediction service (``medmodal serve``); see :func:`medmodal.serve.server.serve`."""
    from medmodal.serve.server import serve as _serve

    _serve(checkpoints, tokens, **options)


def export(checkpoint: str | Path, out: str | Path | None = None, fmt: str = "onnx") -> Path:
    """Export a checkpoint's model (``onnx``: each modality an input with its presence mask);
    writes ``out`` (default: the checkpoint's path with ``.onnx``)."""
    return export_checkpoint(checkpoint, out, fmt)


__all__ = [
    "CVResult",
    "DataError",
    "Predictor",
    "RunResult",
    "cross_validate",
    "evaluate",
    "explain",
    "fit",
    "load_data",
    "predict",
    "export",
    "pretrain",
    "serve",
    "tune",
    "whatif",
]
