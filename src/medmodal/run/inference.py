"""What :func:`medmodal.api.predict`, :func:`~medmodal.api.evaluate`,
:func:`~medmodal.api.whatif` and :func:`~medmodal.api.export` do with a checkpoint: load the Predictor, read the source, run the
prediction path and write the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medmodal.ensemble.build import is_composite
from medmodal.errors import BadSampleLog, ConfigError, ManifestError
from medmodal.predictor import Predictor
from medmodal.run.report import ReportContent, write_run_report
from medmodal.run.sources import frame_from_source, one_split
from medmodal.run.steps import score_split
from medmodal.utils.io import dump_json

if TYPE_CHECKING:
    from medmodal.whatif import WhatIfResult


def predict_source(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    root: str | Path | None,
    skip_bad: bool,
    out: str | Path | None,
    device: str,
    amp: bool = False,
) -> pd.DataFrame:
    """The prediction frame of every readable sample of ``source`` (see ``api.predict``)."""
    predictor = Predictor.load(checkpoint, device=device, amp=amp)
    frame, base, name = frame_from_source(source, predictor)
    bad = BadSampleLog() if skip_bad else None
    ds = predictor.dataset(frame, Path(root) if root else base, bad, with_labels=False, source=name)
    if len(ds) == 0:
        raise ManifestError(f"no readable sample in {name}")
    result = predictor.prediction_frame(ds, predictor.predict_proba(ds))
    skipped = bad.to_list() if bad is not None else []
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(out, index=False)
        if bad is not None:
            dump_json(out.with_suffix(".skipped.json"), skipped)
    result.attrs["skipped"] = skipped
    return result


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path | pd.DataFrame,
    root: str | Path | None,
    split: str | None,
    skip_bad: bool,
    out_dir: str | Path | None,
    bootstrap: int,
    device: str,
) -> dict[str, Any]:
    """Metrics of a checkpoint on a labelled source, with predictions and report in ``out_dir``
    (see ``api.evaluate``); ``bootstrap`` resamples instead of the checkpoint's own."""
    predictor = Predictor.load(checkpoint, device=device).with_evaluation(bootstrap=bootstrap)
    frame, base, name = frame_from_source(manifest, predictor)
    frame = one_split(frame, predictor, split, name)
    bad = BadSampleLog() if skip_bad else None
    ds = predictor.dataset(frame, Path(root) if root else base, bad, with_labels=True, source=name)
    scored = score_split(predictor, ds)
    metrics = scored.metrics
    metrics["skipped_samples"] = bad.to_list() if bad is not None else []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        predictor.prediction_frame(ds, scored.probs).to_csv(out / "predictions.csv", index=False)
        dump_json(out / "metrics.json", metrics)
        note = f"Evaluation of {checkpoint} on {name} ({len(ds)} samples)."
        content = ReportContent([note], metrics["skipped_samples"], predictor=predictor)
        spec = predictor.eval_spec
        write_run_report(out / "report.html", predictor.config, spec, ds, scored, content)
    return metrics


def whatif_checkpoint(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    treatment: str,
    root: str | Path | None,
    out_dir: str | Path | None,
    device: str,
    **options: Any,
) -> WhatIfResult:
    """The what-if result of a survival checkpoint on ``source`` (see ``api.whatif``);
    ``options``: values, reference, horizon, n_boot, seed."""
    from medmodal.whatif import run_whatif, write_outputs

    predictor = Predictor.load(checkpoint, device=device)
    frame, base, _ = frame_from_source(source, predictor)
    result = run_whatif(predictor, frame, Path(root) if root else base, treatment, **options)
    result.summary["checkpoint"] = str(checkpoint)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def export_checkpoint(checkpoint: str | Path, out: str | Path | None, fmt: str) -> Path:
    """The checkpoint's model as ONNX at ``out`` (default: beside it, ``.onnx``); a classical
    learner exports its learner on the feature vector (:mod:`medmodal.classical.onnx`), an
    ensemble is refused."""
    from medmodal.export.onnx import export_onnx

    if fmt != "onnx":
        raise ConfigError(f"export format must be onnx, not {fmt!r}")
    path = Path(checkpoint)
    predictor = Predictor.load(path)
    if is_composite(predictor.config.model):  # a classical learner: its learner's graph
        from medmodal.classical.onnx import export_classical

        return export_classical(predictor, out or path.with_suffix(".onnx"))
    return export_onnx(predictor, out or path.with_suffix(".onnx"))
