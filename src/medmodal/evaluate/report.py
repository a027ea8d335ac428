"""A self-contained HTML evaluation report and a numpy-aware JSON writer.

The report is one file: plots are embedded as base64 PNG (matplotlib's Agg canvas, no pyplot
state), styles are inline, and nothing is loaded from the network. Every string that can come
from user data (class names, sample ids, paths, reasons, notes, config values) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from medmodal import __version__
from medmodal.evaluate import survival_report as sr
from medmodal.evaluate._core import Prepared, prepare, scalar_metric_names
from medmodal.evaluate.calibration import reliability_from_validated
from medmodal.evaluate.metrics import metrics_for
from medmodal.evaluate.spec import EvalSpec
from medmodal.utils.io import to_jsonable

__all__ = ["ReportData", "ReportParts", "write_report"]

MAX_CURVES = 20  # per-class curves drawn individually up to this many classes
MAX_CM_ANNOTATED = 20  # confusion-matrix cells annotated up to this many classes
BAD_SAMPLE_COLUMNS = ("sample_id", "modality", "path", "reason")
LABELS = {
    "n": "N",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "precision": "Precision (PPV)",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "npv": "NPV",
    "f1": "F1",
    "precision_macro": "Precision (macro)",
    "recall_macro": "Recall (macro)",
    "f1_macro": "F1 (macro)",
    "subset_accuracy": "Subset accuracy (exact match)",
    "precision_micro": "Precision (micro)",
    "recall_micro": "Recall (micro)",
    "f1_micro": "F1 (micro)",
    "auroc_micro": "AUROC (micro)",
    "auprc_micro": "AUPRC (micro)",
    "auroc": "AUROC",
    "auprc": "AUPRC (average precision)",
    "brier": "Brier score",
    "ece": "ECE",
}
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #345;padding-bottom:.2em}h2{margin-top:1.8em;color:#345}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#555}.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.4em .8em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;white-space:pre-wrap}
img{max-width:100%;height:auto;border:1px solid #ddd;margin:.4em 0}
.note{white-space:pre-wrap}nav a{margin-right:1em}
"""


# ---------------------------------------------------------------- HTML helpers


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4f}" if math.isfinite(v) else "n/a"
    return _esc(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """HTML table; every cell is formatted and escaped here."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_fmt(c)}</td>' if _is_num(c) else f"<td>{_fmt(c)}</td>" for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ci_text(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("low") is None or entry.get("high") is None:
        return "n/a"
    return f"{entry['low']:.4f} – {entry['high']:.4f}"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_esc(anchor)}"><h2>{_esc(title)}</h2>{body}</section>'


def _img(data: str, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


# ---------------------------------------------------------------- figures


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _binary_columns(prep: Prepared) -> list[int]:
    return [1] if prep.task == "binary" else list(range(prep.k))


def _defined(y: np.ndarray, need_negatives: bool) -> bool:
    return bool(y.any()) and (not need_negatives or not y.all())


def _roc_figure(prep: Prepared, metrics: Mapping[str, Any]) -> str:
    fig = Figure(figsize=(6.4, 5.4))
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 201)
    tprs = []
    cols = _binary_columns(prep)
    for j in cols:
        y = prep.truth[:, j] > 0
        if not _defined(y, need_negatives=True):
            continue
        fpr, tpr, _ = roc_curve(y, prep.rank_scores[:, j])
        tprs.append(np.interp(grid, fpr, tpr))
        if len(cols) <= MAX_CURVES:
            auc = metrics["per_class"][prep.names[j]]["auroc"]
            lw = 2.0 if prep.task == "binary" else 1.0
            ax.plot(fpr, tpr, lw=lw, label=f"{prep.names[j]} (AUC {_fmt(auc)})")
    if prep.task != "binary":
        _micro_macro_roc(ax, prep, grid, tprs, metrics)
    if not tprs:
        ax.text(
            0.5,
            0.6,
            "ROC undefined: no class has both positives and negatives",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title="ROC curves")
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def _micro_macro_roc(ax: Any, prep: Prepared, grid: np.ndarray, tprs: list, metrics: Mapping):
    y, s = prep.truth.ravel() > 0, prep.rank_scores.ravel()
    if _defined(y, need_negatives=True):
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color="black", lw=2, ls=":", label="micro-average")
    if tprs:
        label = f"macro-average (AUC {_fmt(metrics.get('auroc'))})"
        ax.plot(grid, np.mean(tprs, axis=0), color="black", lw=2, label=label)


def _pr_figure(prep: Prepared, metrics: Mapping[str, Any]) -> str:
    fig = Figure(figsize=(6.4, 5.4))
    ax = fig.add_subplot()
    cols = _binary_columns(prep)
    for j in cols:
        y = prep.truth[:, j] > 0
        if not _defined(y, need_negatives=False) or len(cols) > MAX_CURVES:
            continue
        prec, rec, _ = precision_recall_curve(y, prep.rank_scores[:, j])
        ap = metrics["per_class"][prep.names[j]]["auprc"]
        ax.step(rec, prec, where="post", lw=1.5, label=f"{prep.names[j]} (AP {_fmt(ap)})")
        if prep.task == "binary":
            ax.axhline(y.mean(), ls="--", color="grey", lw=0.8, label="prevalence")
    y = prep.truth.ravel() > 0
    if prep.task != "binary" and _defined(y, need_negatives=False):
        prec, rec, _ = precision_recall_curve(y, prep.rank_scores.ravel())
        ax.step(rec, prec, where="post", color="black", lw=2, ls=":", label="micro-average")
    ax.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title="Precision-recall")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    _legend(ax, "lower left", empty="no positive samples: precision-recall is undefined")
    return _png(fig)


def _legend(ax: Any, loc: str, empty: str) -> None:
    """Legend of the labelled curves, or ``empty`` written on the axes when there are none."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize="small")
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)


def _confusion_figure(cm: np.ndarray, names: list[str]) -> str:
    k = len(names)
    size = min(4 + 0.45 * k, 14)
    fig = Figure(figsize=(2 * size + 1, size))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    for i, (data, title) in enumerate(((cm, "Counts"), (norm, "Row-normalised (recall)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=None if i == 0 else 1)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set(xticks=range(k), yticks=range(k), xlabel="Predicted", ylabel="True", title=title)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize="small")
        ax.set_yticklabels(names, fontsize="small")
        if k <= MAX_CM_ANNOTATED:
            _annotate(ax, data, integer=i == 0)
    return _png(fig)


def _annotate(ax: Any, data: np.ndarray, integer: bool) -> None:
    top = data.max() if data.size else 0
    for (r, c), v in np.ndenumerate(data):
        text = f"{int(v)}" if integer else f"{v:.2f}"
        color = "white" if top and v > top / 2 else "black"
        ax.text(c, r, text, ha="center", va="center", color=color, fontsize="small")


def _reliability_figure(rel: Mapping[str, Any]) -> str:
    fig = Figure(figsize=(6.4, 6.4))
    ax, hist = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    edges = np.asarray(rel["bin_edges"])
    width = np.diff(edges)
    observed = np.array([np.nan if v is None else v for v in rel["observed"]])
    conf = np.array([np.nan if v is None else v for v in rel["mean_confidence"]])
    ax.bar(
        edges[:-1],
        np.nan_to_num(observed),
        width=width,
        align="edge",
        edgecolor="black",
        color="#5b8db8",
        label="observed frequency",
    )
    ax.bar(
        edges[:-1],
        np.nan_to_num(conf - observed),
        bottom=np.nan_to_num(observed),
        width=width,
        align="edge",
        color="#e06c5c",
        alpha=0.35,
        edgecolor="#b03a2e",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        ylabel="Observed frequency",
        title=f"Reliability ({rel['kind']}), ECE {rel['ece']:.4f}, {rel['n_bins']} bins",
    )
    ax.legend(loc="upper left", fontsize="small")
    hist.bar(edges[:-1], rel["count"], width=width, align="edge", color="#999", edgecolor="black")
    hist.set(xlim=(0, 1), xlabel="Predicted confidence", ylabel="Count")
    return _png(fig)


# ---------------------------------------------------------------- sections


def _headline(metrics: Mapping[str, Any], ci: Mapping[str, Any], task: str) -> str:
    keys = [k for k in scalar_metric_names(task) if k in metrics]
    keys += [k for k in ci if k not in keys and "[" not in k]
    if not ci:
        rows = [["N", metrics.get("n")]] + [[LABELS.get(k, k), metrics.get(k)] for k in keys]
        return _table(["Metric", "Value"], rows)
    level = next((v.get("ci") for v in ci.values() if isinstance(v, Mapping)), None)
    ci_head = f"{level:.0%} CI" if isinstance(level, float) else "CI"
    rows: list[list[Any]] = [["N", metrics.get("n"), "", ""]]
    for key in keys:
        entry = ci.get(key)
        used = f"{entry['n_boot']}/{entry.get('n_requested', entry['n_boot'])}" if entry else ""
        value = metrics.get(key, entry.get("value") if entry else None)
        rows.append([LABELS.get(key, key), value, _ci_text(entry) if entry else "", used])
    return _table(["Metric", "Value", ci_head, "Bootstrap resamples used"], rows)


def _per_class(metrics: Mapping[str, Any], ci: Mapping[str, Any]) -> str:
    cols = ["support", "precision", "recall", "specificity", "npv", "f1", "auroc", "auprc"]
    heads = [
        "Class",
        "Support",
        "Precision (PPV)",
        "Recall (sens.)",
        "Specificity",
        "NPV",
        "F1",
        "AUROC",
        "AUPRC",
    ]
    with_ci = sorted({k.split("[", 1)[0] for k in ci if "[" in k})
    heads += [f"{m.upper()} CI" for m in with_ci]
    rows = []
    for name, vals in metrics["per_class"].items():
        row = [name] + [vals.get(c) for c in cols]
        row += [_ci_text(ci.get(f"{m}[{name}]")) for m in with_ci]
        rows.append(row)
    return _table(heads, rows)


def _multilabel_confusion(metrics: Mapping[str, Any]) -> str:
    rows = []
    for name, cm in zip(metrics["class_names"], metrics["confusion_matrix"], strict=True):
        (tn, fp), (fn, tp) = cm
        rows.append([name, tn, fp, fn, tp])
    return _table(["Label", "TN", "FP", "FN", "TP"], rows)


def _rows_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return _table(columns, [[r.get(c) for c in columns] for r in rows])


def _bad_rows(bad_samples: Any) -> list[dict[str, Any]]:
    if bad_samples is None:
        return []
    if hasattr(bad_samples, "to_list"):
        bad_samples = bad_samples.to_list()
    return [b.to_dict() if hasattr(b, "to_dict") else dict(b) for b in bad_samples]


def _config_text(config: Any) -> str:
    plain = to_jsonable(config)
    try:
        return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError:
        return json.dumps(plain, indent=2)


def _notes_html(notes: str | Sequence[str]) -> str:
    items = [notes] if isinstance(notes, str) else list(notes)
    return "".join(f'<p class="note">{_esc(n)}</p>' for n in items)


# ---------------------------------------------------------------- the report

Section = tuple[str, str, str]  # (anchor, title, html body)


@dataclass(frozen=True)
class ReportData:
    """The predictions a report is about and what was measured on them.

    ``y_true`` / ``y_prob`` as :func:`compute_metrics` takes them (survival: (N, 2) time, event
    and (N, 1 + T) risk and S(t) at ``spec.times``); ``metrics``: its output for them (computed
    when None); ``ci``: :func:`bootstrap_ci` output (also ``"auroc[class]"`` entries);
    ``y_prob_before``: the same predictions before recalibration (a second reliability diagram);
    ``sample_ids``: survival, the names of the example curves."""

    y_true: Any
    y_prob: Any
    metrics: Mapping[str, Any] | None = None
    ci: Mapping[str, Mapping[str, Any]] | None = None
    y_prob_before: Any = None
    sample_ids: Sequence[str] | None = None


@dataclass(frozen=True)
class ReportParts:
    """What a report shows beside the predictions.

    ``notes``: free text (one string or several paragraphs); ``tables``: ``{title: [row dict,
    ...]}`` appended as tables; ``sections``: ``(anchor, title, html body)`` placed before the
    configuration, the body inserted as is (its writer escapes it, e.g. the explanation
    gallery); ``bad_samples``: skipped samples, dicts with sample_id, modality, path, reason (or
    :class:`~medmodal.errors.DataError` objects / a ``BadSampleLog``); ``config``: the
    experiment config (dict, dataclass or pydantic model), shown as YAML."""

    notes: str | Sequence[str] | None = None
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
    sections: Sequence[Section] = ()
    bad_samples: Any = None
    config: Any = None


def write_report(
    path: str | Path,
    data: ReportData,
    spec: EvalSpec,
    *,
    title: str,
    parts: ReportParts | None = None,
) -> Path:
    """Write one self-contained HTML report of ``data`` scored as ``spec`` says (task, classes,
    threshold, ECE bins, survival grid) and return its path."""
    parts = parts or ReportParts()
    if spec.task == "survival":
        sections = _survival_sections(data, spec, parts)
        sections += [*parts.sections, *_tail(parts.config, _bad_rows(parts.bad_samples))]
        return _write(path, _document(title, _SurvivalMeta(len(data.y_true)), sections))
    prep = prepare(data.y_true, data.y_prob, spec.task, spec.classes, spec.threshold, spec.ece_bins)
    metrics = _checked_metrics(data, spec, prep)
    out = _sections(prep, metrics, data.ci or {}, parts)
    if data.y_prob_before is not None:
        before = prepare(
            data.y_true, data.y_prob_before, spec.task, spec.classes, spec.threshold, prep.n_bins
        )
        out = [
            (a, t, _calibration_html(prep, before) if a == "calibration" else b) for a, t, b in out
        ]
    if parts.sections:
        at = len(out) - 1 if out[-1][0] == "config" else len(out)
        out[at:at] = list(parts.sections)
    return _write(path, _document(title, prep, out))


def _checked_metrics(data: ReportData, spec: EvalSpec, prep: Prepared) -> Mapping[str, Any]:
    """The metrics of ``data`` (computed when not given); ValueError when the given ones were
    computed on other samples or at another threshold than the spec's."""
    metrics = data.metrics
    if metrics is None:
        return metrics_for(data.y_true, data.y_prob, spec)
    if metrics.get("n", prep.n) != prep.n:
        raise ValueError(f"metrics were computed on {metrics['n']} samples, y_true has {prep.n}")
    for key, value in (("threshold", prep.threshold), ("ece_bins", prep.n_bins)):
        if metrics.get(key, value) != value:
            raise ValueError(
                f"metrics were computed with {key} {metrics[key]}, the spec's is {value}"
            )
    return metrics


def _write(path: str | Path, doc: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path


class _SurvivalMeta:
    """What the report's header line shows of a survival evaluation."""

    task = "survival"
    names = ("time-to-event",)

    def __init__(self, n: int) -> None:
        self.n = n


def _survival_sections(data: ReportData, spec: EvalSpec, parts: ReportParts) -> list[Section]:
    """Headline, warnings, KM by risk group, calibration, example curves, notes, tables."""
    y_true, y_prob, ci, times = data.y_true, data.y_prob, data.ci or {}, spec.times
    metrics = data.metrics if data.metrics is not None else metrics_for(y_true, y_prob, spec)
    level = f"{next(iter(ci.values()))['ci']:.0%} CI" if ci else "CI"
    heads = ["Metric", "Value", level, "Resamples"]
    out = [("summary", "Headline metrics", _table(heads, sr.headline_rows(metrics, ci)))]
    if metrics.get("warnings"):
        items = "".join(f"<li>{_esc(w)}</li>" for w in metrics["warnings"])
        out.append(("warnings", "Warnings", f'<div class="warn"><ul>{items}</ul></div>'))
    km = _img(_png(sr.km_figure(y_true, y_prob)), "Kaplan-Meier by risk group")
    out.append(("km", "Kaplan-Meier curves by predicted risk group", km))
    if metrics.get("calibration"):
        cal = _img(_png(sr.calibration_figure(metrics["calibration"])), "Calibration")
        out.append(("calibration", "Calibration at the evaluation times", cal))
    if times is not None and np.asarray(y_prob).ndim == 2 and len(y_true) >= 5:
        ids = data.sample_ids
        ids = list(ids) if ids is not None else [str(i) for i in range(len(y_true))]
        fig = sr.examples_figure(y_prob, y_true, times, ids)
        out.append(("examples", "Predicted survival curves", _img(_png(fig), "Example curves")))
    return out + _notes_and_tables(parts)


def _notes_and_tables(parts: ReportParts) -> list[Section]:
    out = [("notes", "Notes", _notes_html(parts.notes))] if parts.notes else []
    for i, (name, rows) in enumerate((parts.tables or {}).items()):
        out.append((f"extra-{i}", str(name), _rows_table(rows) if rows else "<p>(empty)</p>"))
    return out


def _tail(config: Any, bad: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Skipped samples and the configuration (the last sections)."""
    out = []
    if bad:
        body = f"<p>{len(bad)} sample(s) were skipped and are not in the metrics.</p>"
        out.append(("skipped", "Skipped samples", body + _rows_table(bad, BAD_SAMPLE_COLUMNS)))
    if config is not None:
        out.append(("config", "Configuration", f"<pre>{_esc(_config_text(config))}</pre>"))
    return out


def _sections(
    prep: Prepared, metrics: Mapping[str, Any], ci: Mapping[str, Any], parts: ReportParts
) -> list[Section]:
    """(anchor, title, html body) of each section, in order."""
    bad = _bad_rows(parts.bad_samples)
    out = [("summary", "Headline metrics", _headline(metrics, ci, prep.task))]
    if metrics.get("warnings"):
        items = "".join(f"<li>{_esc(w)}</li>" for w in metrics["warnings"])
        out.append(("warnings", "Warnings", f'<div class="warn"><ul>{items}</ul></div>'))
    if bad:
        body = f"<p>{len(bad)} sample(s) were skipped and are not in the metrics.</p>"
        out.append(("skipped", "Skipped samples", body + _rows_table(bad, BAD_SAMPLE_COLUMNS)))
    out.append(("per-class", "Per-class metrics", _per_class(metrics, ci)))
    out.append(("roc", "ROC curves", _img(_roc_figure(prep, metrics), "ROC curves")))
    out.append(("pr", "Precision-recall curves", _img(_pr_figure(prep, metrics), "PR curves")))
    out.append(("confusion", "Confusion matrix", _confusion_html(prep, metrics)))
    rel = reliability_from_validated(prep.y_true, prep.y_prob, prep.task, prep.n_bins)
    out.append(("calibration", "Calibration", _img(_reliability_figure(rel), "Reliability")))
    out += _notes_and_tables(parts)
    if parts.config is not None:
        out.append(("config", "Configuration", f"<pre>{_esc(_config_text(parts.config))}</pre>"))
    return out


def _calibration_html(after: Prepared, before: Prepared) -> str:
    """Reliability diagrams before and after recalibration, side by side."""
    imgs = []
    for prep, label in ((before, "before"), (after, "after")):
        rel = reliability_from_validated(prep.y_true, prep.y_prob, prep.task, prep.n_bins)
        imgs.append(
            f'<figure style="display:inline-block;width:48%;margin:0">'
            f"<figcaption>{_esc(label)} temperature scaling</figcaption>"
            f"{_img(_reliability_figure(rel), f'Reliability {label}')}</figure>"
        )
    return "".join(imgs)


def _confusion_html(prep: Prepared, metrics: Mapping[str, Any]) -> str:
    if prep.task == "multilabel":
        return "<p>Per label (rows = true, columns = predicted).</p>" + _multilabel_confusion(
            metrics
        )
    cm = np.asarray(metrics["confusion_matrix"])
    note = f"<p>Rows = true class, columns = predicted class (threshold {prep.threshold:g}).</p>"
    if prep.task == "multiclass":
        note = "<p>Rows = true class, columns = predicted class (argmax).</p>"
    return note + _img(_confusion_figure(cm, prep.names), "Confusion matrix")


def _document(title: str, prep: Prepared, sections: list[tuple[str, str, str]]) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{_esc(a)}">{_esc(t)}</a>' for a, t, _ in sections)
    meta = (
        f"task {_esc(prep.task)} &middot; {prep.n} samples &middot; classes: "
        f"{_esc(', '.join(prep.names))} &middot; medmodal {_esc(__version__)} &middot; {now}"
    )
    body = "".join(_section(a, t, b) for a, t, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_esc(title)}</h1><p class="meta">{meta}</p><nav>{nav}</nav>{body}'
        "</body></html>\n"
    )
