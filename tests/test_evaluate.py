"""Evaluation package: metrics, bootstrap, calibration, report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn import metrics as skm

from medmodal.errors import DataError
from medmodal.evaluate import (
    EvalSpec,
    ReportData,
    ReportParts,
    bootstrap_ci,
    compute_metrics,
    expected_calibration_error,
    fast_auroc,
    fast_average_precision,
    paired_bootstrap_delta,
    reliability_curve,
    write_report,
)
from medmodal.evaluate._core import Engine, prepare
from medmodal.evaluate.bootstrap import resample_weights
from medmodal.utils.io import dump_json

BIN = ["benign", "malignant"]
spec_of = EvalSpec.for_task  # the config's defaults with named fields changed


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _data(task: str, n: int = 300, k: int = 4, seed: int = 0, signal: float = 1.0):
    """Random but informative predictions for ``task``."""
    rng = np.random.default_rng(seed)
    if task == "binary":
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
        return y, p, BIN
    names = [f"c{i}" for i in range(k)]
    if task == "multiclass":
        y = rng.integers(0, k, n)
        z = rng.normal(size=(n, k))
        z[np.arange(n), y] += 1.5 * signal
        return y, _softmax(z), names
    y = (rng.random((n, k)) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=(n, k)))))
    return y, p, names


# ---------------------------------------------------------------- hand-computed cases


def test_binary_hand_computed():
    y = [0, 0, 1, 1, 1, 0]
    p = [0.1, 0.6, 0.7, 0.4, 0.9, 0.2]  # predicted positive: 0.6, 0.7, 0.9
    m = compute_metrics(y, p, "binary", BIN)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]  # rows = true
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # positive/negative pairs ranked correctly: 0.7 > 3 negatives, 0.4 > 2, 0.9 > 3  => 8 / 9
    assert m["auroc"] == pytest.approx(8 / 9)
    # ranking P P N P N N: AP = (1/1 + 2/2 + 3/4) / 3
    assert m["auprc"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert m["brier"] == pytest.approx(0.87 / 6)
    pc = m["per_class"]["malignant"]
    assert pc["support"] == 3 and pc["ppv"] == pc["precision"] and pc["sensitivity"] == pc["recall"]
    assert m["per_class"]["benign"]["recall"] == pytest.approx(2 / 3)  # specificity of positive
    assert m["warnings"] == []


def test_auroc_ties_count_half():
    # pos 0.5 vs neg 0.5 tie -> 1/2, pos 0.5 > 0.2, pos 0.8 beats both: (0.5 + 1 + 2) / 4
    m = compute_metrics([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.8], "binary", BIN)
    assert m["auroc"] == pytest.approx(0.875)


def test_perfect_and_inverted_predictions():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.95])
    good = compute_metrics(y, p, "binary", BIN)
    assert good["auroc"] == 1.0 and good["auprc"] == 1.0 and good["accuracy"] == 1.0
    bad = compute_metrics(y, 1 - p, "binary", BIN)
    assert bad["auroc"] == 0.0  # not flipped to 1 - AUC
    assert bad["accuracy"] == 0.0 and bad["confusion_matrix"] == [[0, 3], [4, 0]]


def test_threshold_is_strict_and_configurable():
    y = [0, 1, 1]
    p = [0.2, 0.5, 0.9]
    assert compute_metrics(y, p, "binary", BIN)["confusion_matrix"] == [[1, 0], [1, 1]]
    assert compute_metrics(y, p, "binary", BIN, threshold=0.4)["accuracy"] == 1.0


def test_multiclass_accuracy_is_argmax_and_cm():
    y = [0, 1, 2, 2]
    p = [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]]
    m = compute_metrics(y, p, "multiclass", ["a", "b", "c"])
    assert m["accuracy"] == 0.5
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert m["per_class"]["c"]["recall"] == 0.5 and m["per_class"]["b"]["precision"] == 0.0


def test_multilabel_accuracy_and_subset_accuracy():
    y = [[1, 0, 1], [0, 1, 0]]
    p = [[0.9, 0.2, 0.3], [0.1, 0.8, 0.4]]  # one wrong cell (row 0, label 2)
    m = compute_metrics(y, p, "multilabel", ["x", "y", "z"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["subset_accuracy"] == 0.5
    assert m["confusion_matrix"][2] == [[1, 0], [1, 0]]  # label z: TN=1, FN=1


def test_string_labels_are_mapped_by_class_names():
    a = compute_metrics(["benign", "malignant", "malignant"], [0.2, 0.7, 0.4], "binary", BIN)
    b = compute_metrics([0, 1, 1], [0.2, 0.7, 0.4], "binary", BIN)
    assert a["auroc"] == b["auroc"] and a["accuracy"] == b["accuracy"]


# ---------------------------------------------------------------- agreement with scikit-learn


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("rounded", [False, True])
def test_agrees_with_sklearn(task: str, rounded: bool):
    y, p, names = _data(task, n=400, seed=3)
    if rounded:  # many tied scores
        p = np.round(p, 1)
        if task == "multiclass":
            p = p / p.sum(axis=1, keepdims=True)
    m = compute_metrics(y, p, task, names)
    if task == "binary":
        pred = (p > 0.5).astype(int)
        assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
        assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
        assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    elif task == "multiclass":
        pred = p.argmax(axis=1)
        auc = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
        assert m["auroc"] == pytest.approx(auc, abs=1e-12)
        onehot = np.eye(len(names))[y]
        assert m["auprc"] == pytest.approx(skm.average_precision_score(onehot, p), abs=1e-12)
        assert m["brier"] == pytest.approx(((p - onehot) ** 2).sum(axis=1).mean())
        for j, name in enumerate(names):
            ovr = skm.roc_auc_score(y == j, p[:, j])
            assert m["per_class"][name]["auroc"] == pytest.approx(ovr, abs=1e-12)
    else:
        pred = (p > 0.5).astype(int)
        assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"), abs=1e-12)
        assert m["auroc_micro"] == pytest.approx(skm.roc_auc_score(y, p, average="micro"))
        assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
        assert m["auprc_micro"] == pytest.approx(
            skm.average_precision_score(y, p, average="micro"), abs=1e-12
        )
        assert m["accuracy"] == pytest.approx(1 - skm.hamming_loss(y, pred))
        assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    if task != "multilabel":
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
        cm = skm.confusion_matrix(y, pred, labels=range(len(names)))
        assert m["confusion_matrix"] == cm.tolist()
    for avg in ("precision", "recall", "f1"):
        fn = getattr(skm, f"{avg}_score")
        want = fn(y, pred, average="macro", zero_division=0)
        assert m[f"{avg}_macro"] == pytest.approx(want), avg


def test_fast_auroc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(1)
    for _ in range(5):
        n = int(rng.integers(20, 2000))
        y = rng.integers(0, 2, n)
        s = np.round(rng.random(n) + 0.3 * y, int(rng.integers(1, 4)))
        w = rng.integers(0, 4, n).astype(float)
        assert fast_auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert fast_average_precision(y, s) == pytest.approx(
            skm.average_precision_score(y, s), abs=1e-12
        )
        assert fast_auroc(y, s, w) == pytest.approx(
            skm.roc_auc_score(y, s, sample_weight=w), abs=1e-12
        )
        assert fast_average_precision(y, s, w) == pytest.approx(
            skm.average_precision_score(y, s, sample_weight=w), abs=1e-12
        )
    assert fast_auroc([1, 1, 1], [0.1, 0.2, 0.3]) is None


# ---------------------------------------------------------------- undefined metrics


def test_class_absent_from_y_true_gives_none_and_warning():
    y, p, names = _data("multiclass", n=200, k=3, seed=2)
    keep = y != 2  # class c2 never occurs in y_true (but is still predicted sometimes)
    y, p = y[keep], p[keep]
    m = compute_metrics(y, p, "multiclass", names)
    c2 = m["per_class"]["c2"]
    assert c2["auroc"] is None and c2["auprc"] is None and c2["recall"] is None
    assert c2["support"] == 0
    assert any("'c2'" in w and "absent" in w for w in m["warnings"])
    assert any(w.startswith("auroc averages 2 of 3 classes") for w in m["warnings"])
    expected = np.mean([skm.roc_auc_score(y == j, p[:, j]) for j in (0, 1)])
    assert m["auroc"] == pytest.approx(expected)  # mean over defined classes, no 0.5 filled in
    json.dumps(m, allow_nan=False)


def test_single_class_binary_is_undefined_not_half():
    m = compute_metrics([0, 0, 0, 0], [0.1, 0.7, 0.3, 0.2], "binary", BIN)
    assert m["auroc"] is None and m["auprc"] is None and m["recall"] is None
    assert m["per_class"]["malignant"]["auroc"] is None
    assert m["accuracy"] == 0.75 and m["specificity"] == 0.75
    assert "auroc is undefined (None)" in m["warnings"]
    json.dumps(m, allow_nan=False)


def test_macro_averages_follow_sklearn_when_a_class_is_never_predicted():
    y = np.array([0, 1, 1, 1, 0, 1])
    p = np.array([0.6, 0.7, 0.9, 0.8, 0.55, 0.6])  # everything called positive
    m = compute_metrics(y, p, "binary", BIN)
    pred = (p > 0.5).astype(int)
    assert m["per_class"]["benign"]["precision"] is None  # undefined stays None per class
    for avg in ("precision", "recall", "f1"):
        want = getattr(skm, f"{avg}_score")(y, pred, average="macro", zero_division=0)
        assert m[f"{avg}_macro"] == pytest.approx(want), avg
    assert m["precision_macro"] == pytest.approx(4 / 6 / 2)  # not inflated to 4/6
    assert any("precision_macro counts precision as 0 for ['benign']" in w for w in m["warnings"])


def test_multiclass_macro_with_absent_and_unused_classes_matches_sklearn():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array(
        [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
         [0.5, 0.4, 0.1], [0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.6, 0.3, 0.1]]
    )  # fmt: skip
    names = ["a", "b", "c", "d"]
    p4 = np.hstack([p * 0.99, np.full((8, 1), 0.01)])  # "d": never true, never predicted
    pred = p4.argmax(axis=1)
    assert 2 in pred and 2 not in y  # "c": predicted once, never true
    m = compute_metrics(y, p4, "multiclass", names)
    for avg in ("precision", "recall", "f1"):
        want = getattr(skm, f"{avg}_score")(y, pred, average="macro", zero_division=0)
        assert m[f"{avg}_macro"] == pytest.approx(want), avg
    with pytest.warns(UserWarning):  # sklearn warns about the predicted-but-absent class
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert any("['d'] neither occur" in w for w in m["warnings"])
    assert m["per_class"]["c"]["recall"] is None and m["per_class"]["d"]["f1"] is None


def test_never_predicted_class_has_no_precision():
    m = compute_metrics([0, 1, 1], [0.1, 0.2, 0.3], "binary", BIN)
    assert m["precision"] is None and m["recall"] == 0.0 and m["f1"] == 0.0
    assert any("never predicted" in w for w in m["warnings"])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("y", "p", "task", "names", "match"),
    [
        ([0, 1, 1], [0.1, 0.9], "binary", BIN, "lengths must match"),
        ([0, 1], [0.1, np.nan], "binary", BIN, "NaN"),
        ([0, 1], [0.1, 1.5], "binary", BIN, r"\[0, 1\]"),
        ([0, 1], [-2.0, 3.0], "binary", BIN, "logits"),
        ([0, 2], [0.1, 0.9], "binary", BIN, "class indices"),
        ([0, 1], [0.1, 0.9], "binary", ["a", "b", "c"], "exactly 2"),
        ([0.5, 1], [0.1, 0.9], "binary", BIN, "integer"),
        ([], [], "binary", BIN, "no samples"),
        ([0, 1], [0.1, 0.9], "regression", BIN, "task must be"),
        ([0, 1], [[0.5, 0.6], [0.2, 0.8]], "multiclass", ["a", "b"], "sum to 1"),
        ([0, 1], [[0.5, 0.5], [0.2, 0.8]], "multiclass", ["a", "b", "c"], r"\(N, 3\)"),
        ([0, 3], [[0.5, 0.5], [0.2, 0.8]], "multiclass", ["a", "b"], "class indices"),
        ([[0, 2]], [[0.5, 0.5]], "multilabel", ["a", "b"], "0/1"),
        ([[0, 1]], [[0.5, 0.5]], "multilabel", ["a", "a"], "duplicates"),
        ([0, 1], [0.1, 0.9], "binary", "ab", "list of names"),
    ],
)
def test_invalid_inputs_raise(y, p, task, names, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, p, task, names)


def test_invalid_threshold_raises():
    with pytest.raises(ValueError, match="threshold"):
        compute_metrics([0, 1], [0.1, 0.9], "binary", BIN, threshold=1.5)


# ---------------------------------------------------------------- calibration


def test_ece_hand_computed():
    y = np.array([1] * 5 + [0] * 5)
    assert expected_calibration_error(y, np.full(10, 0.8)) == pytest.approx(0.3)
    assert expected_calibration_error(y, np.full(10, 0.5)) == pytest.approx(0.0)
    # two bins: 0.2 (observed 0/4 -> gap 0.2) and 0.9 (observed 5/6 -> gap 0.0667)
    p = np.array([0.9] * 5 + [0.2] * 4 + [0.9])
    want = 0.4 * 0.2 + 0.6 * abs(5 / 6 - 0.9)
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(want)
    assert compute_metrics(y, p, "binary", BIN, n_bins=10)["ece"] == pytest.approx(want)


def test_multiclass_ece_uses_top_label():
    y = [0, 1, 2, 0]
    p = [[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.1, 0.2, 0.7]]
    # all top-label confidences 0.7, half correct -> ECE 0.2
    assert expected_calibration_error(y, p, "multiclass", n_bins=5) == pytest.approx(0.2)
    curve = reliability_curve(y, p, "multiclass", n_bins=5)
    assert sum(curve["count"]) == 4 and curve["count"][3] == 4
    assert curve["observed"][3] == 0.5 and curve["mean_confidence"][0] is None
    assert len(curve["bin_edges"]) == 6


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_contains_estimate_and_is_reproducible():
    y, p, names = _data("binary", n=500)
    a = bootstrap_ci(y, p, spec_of("binary", names, n_boot=300, seed=7))
    b = bootstrap_ci(y, p, spec_of("binary", names, n_boot=300, seed=7))
    c = bootstrap_ci(y, p, spec_of("binary", names, n_boot=300, seed=8))
    assert a == b
    assert a["auroc"]["low"] != c["auroc"]["low"]
    point = compute_metrics(y, p, "binary", names)
    for name, r in a.items():
        assert r["value"] == pytest.approx(point[name])
        assert r["low"] <= r["value"] <= r["high"], name
        assert r["n_boot"] == 300


def test_ci_width_shrinks_with_n():
    widths = []
    for n in (200, 5000):
        y, p, names = _data("binary", n=n, seed=n)
        r = bootstrap_ci(y, p, spec_of("binary", names, n_boot=300), metrics=["auroc"])["auroc"]
        widths.append(r["high"] - r["low"])
    assert widths[1] < widths[0] / 3  # ~ 1 / sqrt(25) = 1/5


def test_grouped_bootstrap_resamples_whole_groups():
    y, p, names = _data("binary", n=200, seed=4)
    rep = 5  # every patient contributes 5 identical rows
    y5, p5, g5 = np.repeat(y, rep), np.repeat(p, rep), np.repeat(np.arange(200), rep)
    spec = spec_of("binary", names, n_boot=400)
    naive = bootstrap_ci(y5, p5, spec, metrics=["auroc"])["auroc"]
    grouped = bootstrap_ci(y5, p5, spec, metrics=["auroc"], groups=g5)
    single = bootstrap_ci(y, p, spec, metrics=["auroc"])["auroc"]
    w_naive = naive["high"] - naive["low"]
    w_grouped = grouped["auroc"]["high"] - grouped["auroc"]["low"]
    w_single = single["high"] - single["low"]
    assert w_grouped > 1.6 * w_naive  # rows treated as independent: overconfident
    assert w_grouped == pytest.approx(w_single, rel=0.25)  # same information as 200 patients
    w = resample_weights(np.random.default_rng(0), len(g5), 3, (g5, 200))
    assert (w.reshape(3, 200, rep) == w.reshape(3, 200, rep)[:, :, :1]).all()  # rows move together
    assert (w.sum(axis=1) == len(g5)).all()


def test_bootstrap_skips_undefined_resamples():
    y = np.zeros(30, dtype=int)
    y[0] = 1  # a single positive: absent from ~37% of resamples
    p = np.linspace(0.01, 0.99, 30)
    r = bootstrap_ci(y, p, spec_of("binary", BIN, n_boot=500), metrics=["auroc", "accuracy"])
    assert 200 < r["auroc"]["n_boot"] < 450
    assert r["accuracy"]["n_boot"] == 500
    spec = spec_of("binary", BIN, n_boot=50)
    none = bootstrap_ci(np.zeros(10, int), p[:10], spec, metrics=["auroc"])
    assert none["auroc"] == {
        "value": None, "low": None, "high": None, "n_boot": 0, "n_requested": 50, "ci": 0.95
    }  # fmt: skip


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_vectorised_resamples_equal_compute_metrics_on_resampled_rows(task: str):
    y, p, names = _data(task, n=60, k=3, seed=5)
    prep = prepare(y, p, task, names)
    ref = Engine.unit(prep)
    w = resample_weights(np.random.default_rng(1), prep.n, 4, None)
    eng = Engine(prep, w, ref)
    keys = ["accuracy", "balanced_accuracy", "f1_macro", "auroc", "auprc", "brier", "ece"]
    keys += ["auroc_micro", "subset_accuracy"] if task == "multilabel" else []
    for b in range(4):
        idx = np.repeat(np.arange(prep.n), w[b].astype(int))
        m = compute_metrics(y[idx], p[idx], task, names)
        for key in keys:
            assert eng.value(key)[b] == pytest.approx(m[key], abs=1e-12), (key, b)
        last = names[-1]
        assert eng.value(f"auroc[{last}]")[b] == pytest.approx(m["per_class"][last]["auroc"])


def test_bootstrap_auroc_on_many_rows():
    """1000 x 5000 resamples (the vectorised path); its speed is a benchmark's job, not a test's."""
    y, p, names = _data("binary", n=5000, seed=9)
    r = bootstrap_ci(y, p, spec_of("binary", names, n_boot=1000), metrics=["auroc"])["auroc"]
    assert r["n_boot"] == 1000 and r["value"] == pytest.approx(skm.roc_auc_score(y, p))
    assert r["low"] < r["value"] < r["high"] and r["high"] - r["low"] < 0.05


def test_bootstrap_per_class_and_unknown_metric():
    y, p, names = _data("multiclass", n=300, k=3)
    spec = spec_of("multiclass", names, n_boot=100)
    r = bootstrap_ci(y, p, spec, metrics=["auroc[c1]", "recall[c0]"])
    point = compute_metrics(y, p, "multiclass", names)["per_class"]
    assert r["auroc[c1]"]["value"] == pytest.approx(point["c1"]["auroc"])
    assert r["recall[c0]"]["low"] <= point["c0"]["recall"] <= r["recall[c0]"]["high"]
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(y, p, spec, metrics=["auroc[nope]"])
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(y, p, spec, metrics=["precision"])  # binary-only
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(y, p, spec, groups=[1, 2, 3])


def test_paired_bootstrap_delta():
    y, strong, names = _data("binary", n=600, seed=11, signal=2.0)
    rng = np.random.default_rng(0)
    weak = np.clip(strong + rng.normal(0, 0.35, size=strong.shape), 0, 1)
    same = paired_bootstrap_delta(y, strong, strong, spec_of("binary", names, n_boot=200))
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    assert same["low"] == same["high"] == 0.0
    spec = spec_of("binary", names, n_boot=500)
    r = paired_bootstrap_delta(y, strong, weak, spec)
    va, vb = (compute_metrics(y, q, "binary", names)["auroc"] for q in (strong, weak))
    assert r["delta"] == pytest.approx(va - vb)  # a minus b
    assert r["delta"] > 0 and r["low"] > 0 and r["p_value"] < 0.01
    flipped = paired_bootstrap_delta(y, weak, strong, spec)
    assert flipped["delta"] == pytest.approx(-r["delta"]) and flipped["high"] < 0


# ---------------------------------------------------------------- report and JSON


def _strip_images(doc: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", doc)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_report_is_self_contained_and_escaped(tmp_path, task: str):
    y, p, names = _data(task, n=200, k=3)
    names = [*names[:-1], "a&b"]  # class names are user data too
    m = compute_metrics(y, p, task, names)
    spec = spec_of(task, names, n_boot=50)
    ci = bootstrap_ci(y, p, spec, metrics=["auroc", "accuracy", "auroc[a&b]"])
    bad = [
        {"sample_id": "<script>alert(1)</script>", "modality": "image", "path": "/d/x.png",
         "reason": "truncated <PNG>"},
        DataError("unreadable", sample_id="s2", path="/d/y.png", modality="audio"),
    ]  # fmt: skip
    out = write_report(
        tmp_path / "sub" / "report.html",
        ReportData(y, p, metrics=m, ci=ci),
        spec,
        title="Fusion <v1>",
        parts=ReportParts(
            notes=["first note", "line & more"],
            tables={"Fusion vs single": [{"model": "image", "delta_auroc": 0.01}]},
            bad_samples=bad,
            config={"model": {"fusion": "concat", "lr": np.float32(0.001)}, "note": "<b>x</b>"},
        ),
    )
    doc = out.read_text(encoding="utf-8")
    text = _strip_images(doc)
    assert out.exists() and doc.startswith("<!DOCTYPE html>")
    n_plots = 3 if task == "multilabel" else 4  # multilabel: per-label confusion is a table
    assert len(re.findall(r'src="data:image/png;base64,', doc)) == n_plots
    assert "<script" not in doc.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "truncated &lt;PNG&gt;" in text and "s2" in text and "/d/y.png" in text
    assert "Fusion &lt;v1&gt;" in text and "a&amp;b" in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert f"{m['auroc']:.4f}" in text and f"{m['accuracy']:.4f}" in text
    assert f"{ci['auroc']['low']:.4f}" in text and f"{ci['auroc[a&b]']['high']:.4f}" in text
    assert (
        "fusion: concat" in text
        and "lr: 0.001\n" in text
        and "Fusion vs single" in text
        and "delta_auroc" in text
    )
    assert "http" not in text.lower() and "<link" not in text and "@import" not in text


def test_report_without_optional_parts(tmp_path):
    y, p, names = _data("binary", n=50)
    spec = spec_of("binary", names)
    out = write_report(tmp_path / "r.html", ReportData(y, p), spec, title="t")
    text = _strip_images(out.read_text())
    assert "Skipped samples" not in text and "Configuration" not in text
    assert f"{compute_metrics(y, p, 'binary', names)['auroc']:.4f}" in text
    with pytest.raises(ValueError, match="samples"):
        write_report(tmp_path / "x.html", ReportData(y, p, metrics={"n": 3}), spec, title="t")
    m = compute_metrics(y, p, "binary", names, threshold=0.3)
    with pytest.raises(ValueError, match="threshold 0.3, the spec's is 0.5"):
        write_report(tmp_path / "y.html", ReportData(y, p, metrics=m), spec, title="t")


def test_dump_json_converts_numpy_and_nan_and_refuses_unknown_objects(tmp_path):
    obj = {"a": np.float32(0.5), "b": np.arange(3), "c": float("nan"), 1: (np.int64(2), None)}
    path = dump_json(tmp_path / "d" / "m.json", obj)
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": None, "1": [2, None]}
    with pytest.raises(TypeError, match="cannot write object"):
        dump_json(tmp_path / "bad.json", {"x": object()})
