"""The report's explanation gallery: the most confident correct, the most confident wrong and the
most uncertain cases of a split, each with its explanations drawn (``evaluate.gallery`` cases of
each kind; 0 = no gallery).

Each case is explained for its predicted class with the first default method of every modality
(Grad-CAM where it fits, else Integrated Gradients, else occlusion) and, with 2 to 6 modalities,
the modalities' Shapley values. Confidence is the probability of the predicted class (multilabel:
the mean over labels of max(p, 1 - p)); uncertainty is closeness to the decision threshold
(multiclass: the gap between the two most probable classes). Decisions and the threshold are the
evaluation spec's. The gallery is registered as a section of the run report
(:data:`medmodal.run.report.REPORT_SECTIONS`): the run report never imports this module.
"""

from __future__ import annotations

import html

import numpy as np

from medmodal.data.dataset import MultimodalDataset
from medmodal.evaluate.decision import decide
from medmodal.evaluate.spec import EvalSpec
from medmodal.explain.draw import draw, png_base64
from medmodal.explain.forward import resolve_target
from medmodal.explain.methods import create_explainer, default_methods
from medmodal.explain.run import Plan, explain_sample, title_of
from medmodal.explain.shapley import MAX_MODALITIES
from medmodal.predictor import Predictor, prediction_frame
from medmodal.run.report import REPORT_SECTIONS, Section

KINDS = ("Most confident correct", "Most confident wrong", "Most uncertain")


def case_scores(
    probs: np.ndarray, labels: np.ndarray, predicted: np.ndarray, task: str, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct, confidence, margin) per sample; a small margin = an uncertain case."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels)
    if task == "binary":
        correct = predicted == y
        conf = np.where(predicted == 1, p, 1 - p)
        return correct, conf, np.abs(p - threshold)
    if task == "multiclass":
        top2 = np.sort(p, axis=1)[:, -2:]
        return predicted == y, top2[:, 1], top2[:, 1] - top2[:, 0]
    correct = (predicted == y).all(axis=1)
    return correct, np.maximum(p, 1 - p).mean(axis=1), np.abs(p - threshold).min(axis=1)


def pick_cases(
    probs: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    task: str,
    threshold: float,
    k: int,
) -> dict[str, list[int]]:
    """Up to ``k`` sample indices of each kind in :data:`KINDS` (ties: dataset order)."""
    correct, conf, margin = case_scores(probs, labels, predicted, task, threshold)
    idx = np.arange(len(conf))
    by_conf = idx[np.argsort(-conf, kind="stable")]
    return {
        KINDS[0]: [int(i) for i in by_conf if correct[i]][:k],
        KINDS[1]: [int(i) for i in by_conf if not correct[i]][:k],
        KINDS[2]: [int(i) for i in idx[np.argsort(margin, kind="stable")]][:k],
    }


def gallery_plan(predictor: Predictor) -> Plan:
    """One method per modality (its first default) and Shapley with 2 to 6 modalities."""
    steps: Plan = []
    for m in predictor.processors:
        name = default_methods(predictor, m)[0]
        steps.append((name, m, create_explainer(name, predictor, m)))
    if 2 <= len(predictor.processors) <= MAX_MODALITIES:
        steps.append(("shapley", None, create_explainer("shapley", predictor, None)))
    return steps


@REPORT_SECTIONS.register("gallery")
def gallery_sections(
    predictor: Predictor, ds: MultimodalDataset, probs: np.ndarray, spec: EvalSpec
) -> list[Section]:
    """The report's explanation gallery section (none when ``spec.gallery`` is 0 or for a
    survival target)."""
    if spec.gallery <= 0 or spec.task == "survival":
        return []
    return [("gallery", "Explanation gallery", gallery_html(predictor, ds, probs, spec))]


def gallery_html(
    predictor: Predictor, ds: MultimodalDataset, probs: np.ndarray, spec: EvalSpec
) -> str:
    """The gallery section's HTML body: ``spec.gallery`` cases of each kind (figures as base64
    PNG; every text escaped)."""
    k = spec.gallery
    if ds.labels is None or k <= 0:
        return "<p>No gallery: the samples have no labels.</p>"
    steps = gallery_plan(predictor)
    predicted = decide(probs, spec.task, spec.threshold)
    sets = predictor.prediction_sets(ds.ids, probs)
    frame = prediction_frame(ds, probs, spec, sets).to_dict("records")
    cases = pick_cases(probs, np.asarray(ds.labels), predicted, spec.task, spec.threshold, k)
    methods = ", ".join(dict.fromkeys(f"{n} ({m})" if m else n for n, m, _ in steps))
    parts = [
        "<style>figure.case{margin:1em 0}figure.case img{max-width:49%;vertical-align:top}</style>",
        f"<p>Up to {k} cases of each kind, explained for the predicted class with: "
        f"{html.escape(methods)}. Red / warm colours push towards the predicted class.</p>",
    ]
    for kind, idx in cases.items():
        parts.append(f"<h3>{html.escape(kind)} ({len(idx)})</h3>")
        if not idx:
            parts.append("<p>None.</p>")
        for i in idx:
            parts.append(_case(predictor, steps, ds, i, probs[i], frame[i]))
    return "".join(parts)


def _case(
    predictor: Predictor,
    steps: Plan,
    ds: MultimodalDataset,
    i: int,
    prob: np.ndarray,
    row: dict,
) -> str:
    target = resolve_target(predictor.label_map, prob, None)
    title = title_of(str(row["sample_id"]), row, predictor.label_map.classes, target)
    imgs = []
    for att in explain_sample(predictor, steps, ds, i, target):
        alt = f"{att.method} of {att.modality or 'the modalities'}"
        data = png_base64(draw(att, title))
        imgs.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
    return (
        f'<figure class="case"><figcaption>{html.escape(title)}</figcaption>'
        f"{''.join(imgs)}</figure>"
    )
