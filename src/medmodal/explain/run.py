"""``explain(checkpoint, source, out)``: attributions for every sample and modality, as PNGs, one
``explanations.json`` and the raw maps in ``attributions.npz``.

The samples are read exactly as ``predict`` reads them (a manifest with any subset of
modalities, a DataFrame, or an image folder; ``skip_bad``), scored through the Predictor, and
each one is explained for its predicted class (or ``target``). Which methods run: see
:func:`plan`; what to explain, and how, is one :class:`ExplainRequest`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmodal.data.dataset import MultimodalDataset
from medmodal.errors import BadSampleLog, ConfigError, ManifestError
from medmodal.explain.base import METHODS, SAMPLE_METHODS, Attribution, Explainer
from medmodal.explain.draw import draw, save_png
from medmodal.explain.forward import item_of, resolve_target
from medmodal.explain.methods import create_explainer, default_methods, fits
from medmodal.explain.shapley import MAX_MODALITIES
from medmodal.options import Strict, parse_options
from medmodal.predictor import Predictor
from medmodal.run.sources import frame_from_source
from medmodal.utils.io import dump_json

Plan = list[tuple[str, str | None, Explainer]]


class ExplainRequest(Strict):
    """What :func:`explain` explains and how: ``methods`` / ``modalities`` / ``options`` (see
    :func:`plan`), ``samples`` (all, the first n, or these ids), ``target`` (a class name; default:
    the predicted class), ``root`` (of relative file paths), ``skip_bad`` (skip unreadable samples,
    listed in the result) and ``device``."""

    methods: Sequence[str] | None = None
    modalities: Sequence[str] | None = None
    samples: int | Sequence[str] | None = None
    target: str | None = None
    options: Mapping[str, Mapping[str, Any]] | None = None
    root: str | Path | None = None
    skip_bad: bool = False
    device: str = "cpu"


@dataclass
class ExplainResult:
    """Where the files went and what they say (``samples``: the entries of explanations.json)."""

    out_dir: Path
    samples: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def plan(
    predictor: Predictor,
    methods: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Plan:
    """(method, modality, explainer) to run on every sample.

    No ``methods``: each modality's defaults (:func:`default_methods`) and ``shapley`` when the
    model has 2 to 6 modalities. Named ``methods`` with named ``modalities``: every pair must fit
    (else ConfigError); without ``modalities``: each method runs where it fits, and one that fits
    no modality is a ConfigError with the reasons."""
    known = list(predictor.processors)
    for m in modalities or ():
        if m not in known:
            raise ConfigError(f"the model has no modality {m!r}; it has {', '.join(known)}")
    mods = list(modalities or known)
    opts = dict(options or {})
    for name in opts:
        METHODS.get(name)
    if methods is None:
        pairs = [(n, m) for m in mods for n in default_methods(predictor, m)]
        if 2 <= len(known) <= MAX_MODALITIES:
            pairs.append(("shapley", None))
        return [(n, m, create_explainer(n, predictor, m, opts.get(n))) for n, m in pairs]
    out: Plan = []
    for name in dict.fromkeys(methods):
        METHODS.get(name)
        if name in SAMPLE_METHODS:
            out.append((name, None, create_explainer(name, predictor, None, opts.get(name))))
            continue
        targets = mods if modalities else [m for m in mods if fits(name, predictor, m)]
        if not targets:  # build one to raise the ConfigError that says why
            create_explainer(name, predictor, mods[0], opts.get(name))
        out += [(name, m, create_explainer(name, predictor, m, opts.get(name))) for m in targets]
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "sample"


def _with_labels(frame: pd.DataFrame, predictor: Predictor) -> bool:
    t = predictor.schema.target
    cols = t.columns if t.task == "multilabel" else [t.column]
    return bool(cols) and all(c in frame.columns for c in cols)


def select_rows(
    frame: pd.DataFrame, predictor: Predictor, samples: int | Sequence[str] | None, name: str
) -> pd.DataFrame:
    """The rows to explain: all (None), the first ``samples`` (int) or these sample ids."""
    if samples is None:
        return frame
    if isinstance(samples, int):
        if samples < 1:
            raise ConfigError(f"samples must be at least 1, got {samples}")
        return frame.head(samples)
    col = predictor.schema.id_column
    ids = [str(s) for s in samples]
    have = [str(v) for v in frame[col]] if col and col in frame.columns else []
    missing = [s for s in ids if s not in have]
    if missing:
        where = f"column {col!r}" if have else "no id column"
        raise ConfigError(f"{name} has no sample {missing[:5]} ({where})")
    return frame[[v in set(ids) for v in have]]


def explain_sample(
    predictor: Predictor, steps: Plan, ds: MultimodalDataset, i: int, target: int
) -> list[Attribution]:
    """Every planned attribution of sample ``i`` (modalities it lacks are skipped)."""
    item = item_of(ds, i, predictor.device)
    out = []
    for _name, modality, explainer in steps:
        if modality is not None and not bool(item.present[modality][0]):
            continue
        out.append(explainer.explain(item, target))
    return out


def title_of(sample_id: str, row: Mapping[str, Any], classes: list[str], target: int) -> str:
    """``id: P(class) = p (label ..., predicted ...)`` from a prediction-frame row."""
    cls = classes[target]
    label = f", label {row['label']}" if "label" in row and row["label"] == row["label"] else ""
    return f"{sample_id}: P({cls}) = {row[f'prob_{cls}']:.3f}{label}, predicted {row['predicted']}"


def explain(
    checkpoint: str | Path,
    source: str | Path | pd.DataFrame,
    out: str | Path,
    request: ExplainRequest | None = None,
    **fields: Any,
) -> ExplainResult:
    """Explain every selected sample of ``source`` for its predicted class (or ``target``):
    one PNG per (modality, method) in ``out/<n>_<sample id>/``, ``explanations.json`` (per sample:
    probabilities, label, and each attribution's values or statistics and seconds) and
    ``attributions.npz`` (the raw maps, keyed ``<sample id>/<modality>/<method>``).
    What to explain: ``request``, or its fields as keywords (``methods=["gradcam"]``, ...; an
    unknown one is a ConfigError naming it)."""
    if request is not None and fields:
        raise ConfigError(f"explain: give a request or its fields, not both ({sorted(fields)})")
    req = request or parse_options(ExplainRequest, fields, "explain")
    predictor = Predictor.load(checkpoint, device=req.device)
    steps = plan(predictor, req.methods, req.modalities, req.options)
    frame, base, name = frame_from_source(source, predictor)
    frame = select_rows(frame, predictor, req.samples, name)
    bad = BadSampleLog() if req.skip_bad else None
    labelled = _with_labels(frame, predictor)
    ds = predictor.dataset(frame, Path(req.root) if req.root else base, bad, labelled, source=name)
    if len(ds) == 0:
        raise ManifestError(f"no readable sample in {name}")
    result = ExplainResult(Path(out), [], skipped=bad.to_list() if bad is not None else [])
    result.out_dir.mkdir(parents=True, exist_ok=True)
    probs = predictor.predict_proba(ds)
    rows = predictor.prediction_frame(ds, probs).to_dict("records")
    arrays: dict[str, np.ndarray] = {}
    for i, row in enumerate(rows):
        t = resolve_target(predictor.label_map, probs[i], req.target)
        atts = explain_sample(predictor, steps, ds, i, t)
        result.samples.append(_write_sample(result, predictor, i, row, t, atts, arrays))
    np.savez_compressed(result.out_dir / "attributions.npz", **arrays)
    meta = {
        "checkpoint": str(checkpoint),
        "source": name,
        "task": predictor.label_map.task,
        "classes": predictor.label_map.classes,
        "plan": [[n, m] for n, m, _ in steps],
        "samples": result.samples,
        "skipped": result.skipped,
    }
    dump_json(result.out_dir / "explanations.json", meta)
    return result


def _write_sample(
    result: ExplainResult,
    predictor: Predictor,
    i: int,
    row: Mapping[str, Any],
    target: int,
    atts: list[Attribution],
    arrays: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The PNGs of one sample; its entry of explanations.json."""
    sid = str(row["sample_id"])
    classes = predictor.label_map.classes
    folder = result.out_dir / f"{i:04d}_{_safe(sid)}"
    title = title_of(sid, row, classes, target)
    entry: dict[str, Any] = {
        "sample_id": sid,
        "label": row.get("label"),
        "predicted": row["predicted"],
        "probabilities": {c: row[f"prob_{c}"] for c in classes},
        "target": classes[target],
        "explanations": [],
    }
    for att in atts:
        stem = f"{att.modality}_{att.method}" if att.modality else att.method
        path = save_png(draw(att, title), folder / f"{_safe(stem)}.png")
        result.files.append(path)
        arrays[f"{sid}/{att.modality or 'sample'}/{att.method}"] = np.asarray(att.values)
        summary = {"modality": att.modality, "method": att.method, **att.summary()}
        entry["explanations"].append({**summary, "file": str(path.relative_to(result.out_dir))})
    return entry
