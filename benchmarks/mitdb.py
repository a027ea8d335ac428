"""MIT-BIH Arrhythmia, inter-patient heartbeat classification (de Chazal et al. 2004 protocol).

Train on DS1 (a fixed record-grouped subset of DS1 held out for epoch selection), test on DS2,
paced records excluded, AAMI classes N / S / V / F, argmax decision rule. Arms:

* ``fused``: the beat window + RR features through the fusion path (concat), several seeds;
* ``waveform``: the beat window only (cnn1d encoder); ``rr``: the RR features only (mlp);
* ``fused_monitor_val_loss``: ``fused`` with epochs selected on the validation loss;
* ``fused_bagged``: ``fused`` cross-fitted over 5 record groups of DS1, the 5 models' mean on
  DS2 and per-class offsets chosen on the out-of-fold predictions (``mitdb_bagged.py``);
* ``random_fused``: the fused model on a *leaky* random beat-level split, shown next to the
  inter-patient result to show how much a beat-level split overstates performance;
* ``lda`` / ``logreg`` (classical baselines, deterministic): RR intervals + morphology of each
  beat (MLII amplitudes at fixed offsets from the R peak, QRS width / energy / extremes) with a
  linear discriminant (equal class priors, as de Chazal's weighted LDA) or a class-weighted
  logistic regression (C picked on the DS1 validation records), trained on the same DS1 training
  records as the deep arms.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_cpu.lock python benchmarks/mitdb.py
    ... python benchmarks/mitdb.py --arms lda logreg --merge      # refresh the baselines only

Writes benchmarks/results/mitdb.json and benchmarks/results/mitdb.md. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import common as C
import mitdb_bagged as B
import numpy as np
import pandas as pd
import torch

from medmodal import api
from medmodal.datasets import get_dataset
from medmodal.evaluate import EvalSpec, bootstrap_ci

NAME = "mitdb"
CLASSES = ["N", "S", "V", "F"]
# de Chazal P., O'Dwyer M., Reilly R.B., IEEE TBME 51(7):1196-1206 (2004): DS2 (test) results
# of their final linear-discriminant classifier, per-class sensitivity / positive predictivity
# in %, as reported in the paper's results table and widely reproduced in later inter-patient
# papers. Their DS1/DS2 keep 201 (DS1) and 202 (DS2), one subject, in both sets.
PUBLISHED = {
    "source": "de Chazal, O'Dwyer, Reilly, IEEE TBME 51(7):1196-1206, 2004 (DS2 test results)",
    "sensitivity": {"N": 86.9, "S": 75.9, "V": 77.7, "F": 89.4},
    "ppv": {"N": 99.2, "S": 38.5, "V": 81.9, "F": 8.6},
}
# Mondéjar-Guerra V., Novo J., Rouco J., Penedo M.G., Ortega M., Heartbeat classification fusing
# temporal and morphological information of ECGs via ensemble of classifiers, Biomed Signal
# Process Control 47:41-48 (2019): the DS2 figures their repository's README reports for the
# ensemble of SVMs (github.com/mondejar/ecg-classification); the paper's per-class Se / PPV could
# not be read here, so they are not quoted.
MONDEJAR = {
    "source": "Mondéjar-Guerra et al., BSPC 47:41-48, 2019 (ensemble of SVMs; DS2 accuracy and "
    "jk index from the authors' repository README; per-class values not available here)",
    "accuracy": 94.5,
    "jk_index": 0.773,
}
# Issue #28's targets: DS2 sensitivity per class (%), and accuracy above the LDA baseline's.
TARGETS = {"N": 90.0, "S": 85.0, "V": 95.0, "F": 30.0}
# The mitdb dataset options of every arm, chosen on the DS1 validation records only (DS2 never
# scored; fused arm, seed 0, 10 epochs; validation macro-AUROC / Se N S V F %):
#   record-mean RR, no template 0.903 / 80.7 72.7 78.2 47.6; running-mean RR 0.915 / 80.1 69.9 82.5 57.1;
#   templates 0.947 / 93.1 72.7 96.0 28.6; templates + running RR 0.958 / 91.1 71.3 98.5 33.3;
#   templates + balanced sampler (no class weights) 0.946 / 94.8 72.7 95.7 14.3.
# The class-weight strength, then on the same records (templates + running RR, 8 epochs, seed 0;
# chosen by the validation balanced accuracy = mean Se, declared before the runs; AUROC / Se N S
# V F % / accuracy): balanced 0.959 / 97.3 69.9 98.2 14.3 / 96.9 (mean Se 69.9); sqrt 0.962 /
# 99.2 68.5 98.2 19.0 / 98.6 (71.2); none 0.954 / 100.0 47.6 97.2 0.0 / 99.1 (61.2): sqrt.
# (21 F beats in the validation records: their Se is a coarse signal.)
WEIGHT_SELECTION = {"balanced": 69.9, "sqrt": 71.2, "none": 61.2}
# DS2 means over seeds 0-2 of the fused arm with balanced class weights (the run these replace).
BALANCED_RUN = {"commit": "8e16c52", "N": 82.6, "S": 85.0, "V": 90.7, "F": 23.4, "accuracy": 82.8}
DATA_OPTIONS: dict[str, Any] = {"rr_reference": "running", "templates": True}
ARMS: dict[str, list[str]] = {"fused": ["signal", "rr"], "waveform": ["signal"], "rr": ["rr"]}
DEEP_ARMS = [*ARMS, "fused_monitor_val_loss", "fused_bagged", "random_fused"]
BASELINE_ARMS = ["lda", "logreg"]
ENCODERS: dict[str, dict[str, Any]] = {
    "signal": {"name": "cnn1d", "channels": [16, 32, 64], "dropout": 0.1},
    "rr": {"name": "mlp", "hidden": [64, 32], "dropout": 0.1},
}
TRAIN: dict[str, Any] = {
    "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adam",
    "scheduler": "cosine", "class_weights": "sqrt", "monitor": "auroc",
}  # fmt: skip
RR_COLUMNS = [
    "pre_rr",
    "post_rr",
    "local_rr",
    "record_rr",
    "pre_rr_norm",
    "post_rr_norm",
    "pre_post_ratio",
    "local_rr_norm",
    "pre_local_ratio",
]
# Morphology sample offsets from the R peak (ms): P wave region, QRS, T wave (de Chazal-style).
OFFSETS_MS = [*np.linspace(-250, -100, 4), *np.linspace(-50, 100, 10), *np.linspace(150, 500, 9)]
LOGREG_C = [0.01, 0.1, 1.0]


def make_config(
    name: str,
    prepared: Any,
    modalities: list[str],
    seed: int,
    epochs: int,
    work: Path,
    bootstrap: int,
    threads: int,
    monitor: str,
) -> dict[str, Any]:
    return {
        "name": name,
        "seed": seed,
        "output_dir": str(work / name),
        "data": {
            "manifest": str(prepared.manifest),
            "schema": str(prepared.schema),
            "modalities": modalities,
        },
        "model": {"encoders": {m: ENCODERS[m] for m in modalities}, "fusion": {"name": "concat"}},
        "train": {**TRAIN, "epochs": epochs, "threads": threads, "monitor": monitor},
        "evaluate": {"bootstrap": bootstrap, "report": False, "ablation": len(modalities) > 1},
    }


def fold_fitter(epochs: int, threads: int, work: Path, seed: int) -> Any:
    """``fit(prepared, name)``: one fused model of the recipe on that manifest (the bagged arm)."""

    def fit(prepared: Any, name: str) -> Any:
        cfg = make_config(name, prepared, ARMS["fused"], seed, epochs, work, 0, threads, "auroc")
        cfg["evaluate"]["ablation"] = False
        return api.fit(cfg, progress=False)

    return fit


def per_class(pred: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Se / PPV per class (%), accuracy, confusion matrix; patient-grouped bootstrap CIs."""
    y, p = pred["label"].to_numpy(), pred["predicted"].to_numpy()
    cm = pd.crosstab(pd.Categorical(y, CLASSES), pd.Categorical(p, CLASSES), dropna=False)
    cmv = cm.to_numpy()
    out: dict[str, Any] = {
        "n": int(len(pred)),
        "accuracy": 100 * float((y == p).mean()),
        "confusion_matrix": cmv.tolist(),
        "sensitivity": {},
        "ppv": {},
    }
    for k, c in enumerate(CLASSES):
        tp = cmv[k, k]
        out["sensitivity"][c] = 100 * tp / cmv[k].sum() if cmv[k].sum() else None
        out["ppv"][c] = 100 * tp / cmv[:, k].sum() if cmv[:, k].sum() else None
    out["support"] = {c: int(cmv[k].sum()) for k, c in enumerate(CLASSES)}
    if n_boot:
        probs = pred[[f"prob_{c}" for c in CLASSES]].to_numpy()
        names = [f"{m}[{c}]" for c in CLASSES for m in ("recall", "ppv")] + ["accuracy"]
        spec = EvalSpec.for_task("multiclass", CLASSES, n_boot=n_boot, seed=seed)
        ci = bootstrap_ci(y, probs, spec, metrics=names, groups=pred["patient_id"].to_numpy())
        out["ci95"] = {k: [_pct(v["low"]), _pct(v["high"])] for k, v in ci.items()}
    return out


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * float(v)


def s_without_232(pred: pd.DataFrame) -> dict[str, Any]:
    """Record 232 holds 1382 of DS2's 1837 S beats: S sensitivity without it."""
    rec = pred["sample_id"].str.split("_").str[0]
    m = (rec != "232") & (pred["label"] == "S")
    hit = int((pred.loc[m, "predicted"] == "S").sum())
    return {"n": int(m.sum()), "sensitivity": 100 * hit / max(int(m.sum()), 1)}


def f_analysis(pred: pd.DataFrame) -> dict[str, Any]:
    """Where the F beats are and what became of them, per record: the F beats, what they were
    predicted as, and the beats of other classes predicted F."""
    rec = pred["sample_id"].str.split("_").str[0]
    is_f, said_f = pred["label"] == "F", pred["predicted"] == "F"
    return {
        "f_beats_by_record": {str(k): int(v) for k, v in rec[is_f].value_counts().items()},
        "f_predicted_as": {str(k): int(v) for k, v in pred.loc[is_f, "predicted"].value_counts().items()},
        "predicted_f_by_record_and_class": {
            f"{r} {c}": int(n)
            for (r, c), n in pred[said_f & ~is_f].groupby([rec[said_f & ~is_f], "label"]).size().items()
            if n >= 20
        },
    }  # fmt: skip


def run_arm(
    name: str,
    prepared: Any,
    modalities: list[str],
    args: argparse.Namespace,
    work: Path,
    epochs: int,
    seed: int,
    monitor: str = "auroc",
) -> dict[str, Any]:
    print(f"== {name} seed {seed}: {modalities}, {epochs} epochs, monitor {monitor}", flush=True)
    cfg = make_config(
        f"{name}_seed{seed}",
        prepared,
        modalities,
        seed,
        epochs,
        work,
        args.bootstrap,
        args.threads,
        monitor,
    )
    t0 = time.perf_counter()
    run = api.fit(cfg, progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    pred = pd.read_csv(run.run_dir / "predictions_test.csv", dtype={"patient_id": str})
    val = pd.read_csv(run.run_dir / "predictions_val.csv", dtype={"patient_id": str})
    row: dict[str, Any] = {
        "arm": name,
        "modalities": modalities,
        "seed": seed,
        "epochs": epochs,
        "monitor": monitor,
        "best_epoch": run.metrics["best_epoch"],
        "n": run.metrics["n"],
        "wall_seconds": round(wall, 1),
        "train_seconds": round(run.metrics["train_seconds"], 1),
        "test": per_class(pred, args.bootstrap, seed),
        "val": per_class(val, 0, seed),
        "test_macro_auroc": run.metrics["test"]["auroc"],
        "config": {
            "encoders": {m: ENCODERS[m] for m in modalities},
            "fusion": "concat",
            "train": {**TRAIN, "epochs": epochs, "monitor": monitor},
        },
    }
    if "random" not in name:
        row["test"]["S_without_record_232"] = s_without_232(pred)
        row["test"]["f_analysis"] = f_analysis(pred)
    if run.metrics["test"].get("ablation"):
        row["modality_removed_at_test_auroc"] = run.metrics["test"]["ablation"]
    print(
        json.dumps(
            {k: row[k] for k in ("arm", "seed", "best_epoch", "wall_seconds")}
            | {"Se": row["test"]["sensitivity"], "PPV": row["test"]["ppv"]}
        ),
        flush=True,
    )
    return row


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and sample standard deviation of Se / PPV / accuracy over the seeds of one arm."""
    if not rows:
        return None
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
    for key in ("sensitivity", "ppv"):
        out[key] = {}
        for c in CLASSES:
            v = np.array(
                [r["test"][key][c] if r["test"][key][c] is not None else np.nan for r in rows]
            )
            out[key][c] = {
                "mean": float(np.nanmean(v)),
                "min": float(np.nanmin(v)),
                "max": float(np.nanmax(v)),
                "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else None,
            }
    acc = np.array([r["test"]["accuracy"] for r in rows])
    out["accuracy"] = {
        "mean": float(acc.mean()),
        "min": float(acc.min()),
        "max": float(acc.max()),
        "sd": float(acc.std(ddof=1)) if len(acc) > 1 else None,
    }
    return out


# -- classical baselines: RR + morphology features, linear models -------------------------------
def beat_features(record: str, r_samples: np.ndarray, folder: Path) -> np.ndarray:
    """Per beat: MLII samples at ``OFFSETS_MS`` from R, R amplitude, QRS width (ms), energy, min, max.

    The lead is band-passed 0.5-35 Hz (zero phase) and standardised over the whole record (the deep
    arms standardise per record too)."""
    import wfdb
    from scipy.signal import butter, sosfiltfilt

    rec = wfdb.rdrecord(str(folder / record))
    lead = rec.sig_name.index("MLII") if "MLII" in rec.sig_name else 0
    fs = float(rec.fs)
    x = sosfiltfilt(butter(2, [0.5, 35], btype="band", fs=fs, output="sos"), rec.p_signal[:, lead])
    x = (x - x.mean()) / (x.std() + 1e-8)
    n = len(x)

    def at(offsets_ms: Any) -> np.ndarray:
        shift = np.round(np.asarray(offsets_ms) * fs / 1000).astype(int)
        return x[np.clip(r_samples[:, None] + shift, 0, n - 1)]

    samples = at(OFFSETS_MS)
    qrs = at(np.arange(-100, 101, 1000 / fs))  # +-100 ms around R, every sample
    r_amp = x[np.clip(r_samples, 0, n - 1)]
    centre = qrs.shape[1] // 2
    above = np.abs(qrs) >= 0.3 * np.abs(r_amp)[:, None]
    width = np.array([_run_length(a, centre) for a in above]) * 1000 / fs
    inner = qrs[:, centre - int(0.05 * fs) : centre + int(0.1 * fs)]
    return np.column_stack(
        [samples, r_amp, width, (inner**2).sum(1) / fs, inner.min(1), inner.max(1)]
    )


def _run_length(mask: np.ndarray, centre: int) -> int:
    """Length of the run of True through ``centre`` (0 when the centre is False)."""
    if not mask[centre]:
        return 0
    lo = hi = centre
    while lo > 0 and mask[lo - 1]:
        lo -= 1
    while hi < len(mask) - 1 and mask[hi + 1]:
        hi += 1
    return hi - lo + 1


def feature_table(frame: pd.DataFrame, folder: Path) -> np.ndarray:
    """RR columns of the manifest + morphology features, one row per beat (manifest order)."""
    morph = np.zeros((len(frame), len(OFFSETS_MS) + 5))
    for record, idx in frame.groupby("record").indices.items():
        morph[idx] = beat_features(str(record), frame["r_sample"].to_numpy()[idx], folder)
    rr = frame[RR_COLUMNS].to_numpy(dtype=float)
    return np.column_stack([rr, morph])


def linear_model(kind: str, c: float = 1.0) -> Any:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "lda":
        clf: Any = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=[0.25] * 4)
    else:
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), clf)


def run_baselines(
    kinds: list[str], prepared: Any, data_dir: Path, n_boot: int
) -> list[dict[str, Any]]:
    """Train on the deep arms' DS1 training records, (logreg: C on the DS1 validation records), test DS2."""
    frame = pd.read_csv(prepared.manifest, dtype={"patient_id": str, "record": str})
    t0 = time.perf_counter()
    x = feature_table(frame, data_dir / NAME)
    feature_seconds = time.perf_counter() - t0
    y = frame["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    split = frame["split"].to_numpy()
    tr, va = split == "train", split == "val"
    rows = []
    for kind in kinds:
        t1 = time.perf_counter()
        chosen = None
        if kind == "logreg":
            val_auc = {
                c: _macro_auroc(y[va], linear_model(kind, c).fit(x[tr], y[tr]).predict_proba(x[va]))
                for c in LOGREG_C
            }
            chosen = max(LOGREG_C, key=lambda c: val_auc[c])
        model = linear_model(kind, chosen or 1.0).fit(x[tr], y[tr])
        rows.append(baseline_row(kind, frame, model.predict_proba(x), y, chosen, n_boot))
        rows[-1].update(
            {
                "feature_seconds": round(feature_seconds, 1),
                "wall_seconds": round(time.perf_counter() - t1, 1),
            }
        )
        print(
            json.dumps(
                {"arm": kind, "Se": rows[-1]["test"]["sensitivity"], "PPV": rows[-1]["test"]["ppv"]}
            ),
            flush=True,
        )
    return rows


def _macro_auroc(y: np.ndarray, prob: np.ndarray) -> float:
    from medmodal.evaluate import compute_metrics

    return float(compute_metrics(y, prob, "multiclass", CLASSES)["auroc"] or 0.0)


def baseline_row(
    kind: str, frame: pd.DataFrame, prob: np.ndarray, y: np.ndarray, c: float | None, n_boot: int
) -> dict[str, Any]:
    def pred_frame(mask: np.ndarray) -> pd.DataFrame:
        f = frame.loc[mask, ["sample_id", "patient_id", "label"]].copy()
        f["predicted"] = np.asarray(CLASSES)[prob[mask].argmax(1)]
        for k, cls in enumerate(CLASSES):
            f[f"prob_{cls}"] = prob[mask, k]
        return f

    test = pred_frame(frame["split"].to_numpy() == "test")
    row = {
        "arm": kind,
        "kind": "baseline",
        "modalities": ["rr", "morphology"],
        "seed": None,
        "epochs": None,
        "best_epoch": None,
        "n": {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")},
        "test": per_class(test, n_boot, 0),
        "val": per_class(pred_frame(frame["split"].to_numpy() == "val"), 0, 0),
        "test_macro_auroc": _macro_auroc(
            test["label"].map({c_: i for i, c_ in enumerate(CLASSES)}).to_numpy(),
            test[[f"prob_{c_}" for c_ in CLASSES]].to_numpy(),
        ),
        "config": {
            "features": {
                "rr": RR_COLUMNS,
                "morphology_offsets_ms": [round(float(o), 1) for o in OFFSETS_MS],
                "extra": ["r_amplitude", "qrs_width_ms", "qrs_energy", "qrs_min", "qrs_max"],
            },
            "model": "LDA, lsqr + auto shrinkage, equal priors"
            if kind == "lda"
            else f"logistic regression, balanced class weights, C {c} (of {LOGREG_C}, by DS1-val macro AUROC)",
        },
    }
    row["test"]["S_without_record_232"] = s_without_232(test)
    return row


# -- markdown -----------------------------------------------------------------------------------
def fmt(v: float | None, ci: list[float | None] | None = None) -> str:
    return C.with_ci(v, ci, 1)


def _metric_cells(t: dict[str, Any]) -> list[str]:
    ci = t.get("ci95", {})
    return (
        [fmt(t["sensitivity"][c], ci.get(f"recall[{c}]")) for c in CLASSES]
        + [fmt(t["ppv"][c], ci.get(f"ppv[{c}]")) for c in CLASSES]
        + [fmt(t["accuracy"], ci.get("accuracy"))]
    )


def _range(agg: dict[str, Any], key: str, c: str | None = None) -> str:
    d = agg[key] if c is None else agg[key][c]
    return f"{d['mean']:.1f} ({d['min']:.1f}-{d['max']:.1f})"


HEADLINE_ARMS = {
    "fused": "fused CNN + RR",
    "fused_bagged_argmax": f"fused, bag of {B.K} record-group models, argmax",
    "fused_bagged": f"fused, bag of {B.K} record-group models + out-of-fold offsets",
}


def headline(res: dict[str, Any]) -> list[str]:
    """Se / PPV of N, S, V, F and accuracy: fused arms over seeds (range), the baselines, de Chazal."""
    aggs = {a: res[f"{a}_over_seeds"] for a in HEADLINE_ARMS if res.get(f"{a}_over_seeds")}
    base = [r for r in res["results"] if r.get("kind") == "baseline"]
    head = ["model", *(f"Se {c}" for c in CLASSES), *(f"PPV {c}" for c in CLASSES), "accuracy"]
    body = [
        [
            f"**{HEADLINE_ARMS[a]}, mean (range) over seeds {', '.join(map(str, agg['seeds']))}**",
            *(_range(agg, "sensitivity", c) for c in CLASSES),
            *(_range(agg, "ppv", c) for c in CLASSES),
            _range(agg, "accuracy"),
        ]
        for a, agg in aggs.items()
    ]
    body += [[f"{r['arm']} (classical, deterministic)", *_metric_cells(r["test"])] for r in base]
    pub = PUBLISHED
    body.append(
        [
            "de Chazal et al. 2004 (published LDA)",
            *(f"{pub['sensitivity'][c]:.1f}" for c in CLASSES),
            *(f"{pub['ppv'][c]:.1f}" for c in CLASSES),
            "n/a",
        ]
    )
    lines = [
        "## Headline: DS2 sensitivity (Se) and positive predictivity (PPV), %",
        "",
        *C.table(head, body),
        "",
    ]
    for a, agg in aggs.items():
        if base:
            lines += [
                f"Where {a} loses (its range over seeds against each classical arm's "
                "patient-grouped 95% CI; no paired test):",
                "",
                *[f"- vs {b['arm']}: " + loses(agg, b["test"]) for b in base],
                "",
            ]
        lines += [*targets(agg, base, a), ""]
    if len(aggs) > 1:
        lines += [_met_summary(aggs, base), ""]
    if "fused" in aggs and TRAIN["class_weights"] != "balanced":
        b = BALANCED_RUN
        lines += [
            f"The fused recipe with balanced class weights (the previous run, in mitdb.json at "
            f"commit {b['commit']}, seeds 0-2): Se N {b['N']}, S {b['S']}, V {b['V']}, F {b['F']} %, "
            f"accuracy {b['accuracy']} %: S met, N / V / F and accuracy missed. The weight strength "
            "trades S and F sensitivity against N sensitivity and accuracy.",
            "",
        ]
    return lines


def _met(agg: dict[str, Any], base: list[dict[str, Any]]) -> list[str]:
    """The targets one arm's mean over seeds meets."""
    met = [f"Se {c}" for c, v in TARGETS.items() if agg["sensitivity"][c]["mean"] >= v]
    lda = next((b["test"]["accuracy"] for b in base if b["arm"] == "lda"), None)
    return met + (["accuracy"] if lda is not None and agg["accuracy"]["mean"] > lda else [])


def _met_summary(aggs: dict[str, dict[str, Any]], base: list[dict[str, Any]]) -> str:
    met = {a: _met(agg, base) for a, agg in aggs.items()}
    n = len(TARGETS) + 1
    per_arm = "; ".join(f"{a}: {', '.join(m) or 'none'}" for a, m in met.items())
    verdict = (
        "no arm meets all of them" if all(len(m) < n for m in met.values()) else "met by one arm"
    )
    return f"Targets met (of {n}, mean over seeds): {per_arm}. All {n} at once: **{verdict}**."


def targets(agg: dict[str, Any], base: list[dict[str, Any]], arm: str) -> list[str]:
    """Issue #28's targets against one arm's mean over seeds (and its range)."""
    out = [f"Targets (DS2, {arm}, mean over seeds):"]
    for c, v in TARGETS.items():
        d = agg["sensitivity"][c]
        verdict = "met" if d["mean"] >= v else f"**missed by {v - d['mean']:.1f}**"
        out.append(f"- Se {c} >= {v:.0f} %: {_range(agg, 'sensitivity', c)}: {verdict}")
    lda = next((b["test"]["accuracy"] for b in base if b["arm"] == "lda"), None)
    if lda is not None:
        acc = agg["accuracy"]["mean"]
        verdict = "met" if acc > lda else f"**missed by {lda - acc:.1f} points**"
        out.append(f"- accuracy above the LDA's {lda:.1f} %: {acc:.1f} %: {verdict}")
    return out


def loses(agg: dict[str, Any], t: dict[str, Any]) -> str:
    """Metrics where every seed of the deep model is below (above) a baseline's 95% CI."""
    ci = t.get("ci95", {})
    checks = [
        (f"Se {c}", agg["sensitivity"][c], t["sensitivity"][c], ci.get(f"recall[{c}]"))
        for c in CLASSES
    ]
    checks += [(f"PPV {c}", agg["ppv"][c], t["ppv"][c], ci.get(f"ppv[{c}]")) for c in CLASSES]
    checks.append(("accuracy", agg["accuracy"], t["accuracy"], ci.get("accuracy")))
    worse, better = [], []
    for label, d, v, bounds in checks:
        if v is None or not bounds or bounds[0] is None:
            continue
        text = f"{label} ({d['min']:.1f}-{d['max']:.1f} vs {v:.1f})"
        if d["max"] < bounds[0]:
            worse.append(text)
        elif d["min"] > bounds[1]:
            better.append(text)
    out = (
        "**the deep model loses** on " + ", ".join(worse)
        if worse
        else "the deep model loses on no metric"
    )
    out += "; it is better on " + ", ".join(better) if better else "; it is better on no metric"
    return (
        out
        + " (every seed outside the baseline's CI); the rest is within the CI or mixed across seeds."
    )


def _arm_row(r: dict[str, Any]) -> list[Any]:
    t = r["test"]
    met = all((t["sensitivity"][c] or 0) >= v for c, v in TARGETS.items())
    label = r["arm"] + (" (**leaky**, beat-level random split)" if "random" in r["arm"] else "")
    label += " (classical)" if r.get("kind") == "baseline" else ""
    weights = ((r.get("config") or {}).get("train") or {}).get("class_weights")
    if weights and weights != TRAIN["class_weights"]:  # a row run with an earlier recipe
        label += f" ({weights} class weights, earlier run)"
    epochs = f"{r['best_epoch']} / {r['epochs']}" if r.get("epochs") else "-"
    seed = "-" if r["seed"] is None else r["seed"]
    wall = f"{r['wall_seconds'] / 60:.1f} min"
    return [label, seed, *_metric_cells(t), "yes" if met else "**no**", epochs, wall]


def _seed_row(label: str, agg: dict[str, Any]) -> list[Any]:
    met = all(agg["sensitivity"][c]["mean"] >= v for c, v in TARGETS.items())
    ds = [
        *(agg["sensitivity"][c] for c in CLASSES),
        *(agg["ppv"][c] for c in CLASSES),
        agg["accuracy"],
    ]
    ms = [f"{d['mean']:.1f} ± {d['sd']:.1f}" for d in ds]
    seeds = ", ".join(map(str, agg["seeds"]))
    return [f"**{label}, mean ± sd**", seeds, *ms, "yes (mean)" if met else "**no** (mean)", "", ""]


def main_table(res: dict[str, Any]) -> list[str]:
    head = ["arm", "seed", *(f"Se {c}" for c in CLASSES), *(f"PPV {c}" for c in CLASSES)]
    head += ["accuracy", "Se targets met", "best epoch / epochs", "wall time"]
    body = [_arm_row(r) for r in res["results"]]
    for arm in ("fused", "fused_monitor_val_loss", "fused_bagged"):
        agg = res.get(f"{arm}_over_seeds")
        if agg and len(agg["seeds"]) > 1:
            body.append(_seed_row(arm, agg))
    pub = PUBLISHED
    se = [f"{pub['sensitivity'][c]:.1f}" for c in CLASSES]
    ppv = [f"{pub['ppv'][c]:.1f}" for c in CLASSES]
    body.append(["de Chazal et al. 2004 (published)", "", *se, *ppv, "n/a", "(reference)", "", ""])
    return C.table(head, body)


def to_markdown(res: dict[str, Any]) -> str:
    facts = res["data"]
    lines = [
        "# MIT-BIH Arrhythmia: inter-patient heartbeat classification (de Chazal et al. 2004)",
        "",
        "Protocol: train on DS1, test on DS2 (de Chazal et al. 2004), paced records 102/104/107/217 excluded, AAMI "
        "classes N/S/V/F, **argmax** decision rule except where offsets are named (nothing tuned on DS2). "
        "`fused_bagged`: 5 models cross-fitted over record groups of DS1, their mean probability on DS2, "
        "and per-class log-probability offsets chosen on the out-of-fold DS1 predictions (largest mean Se "
        "with N Se >= 90 %, declared before the runs); its argmax (no offsets) is shown beside it. Deep arms: epochs selected on DS1 "
        f"validation records {facts['val_records']} (record-grouped) by their macro one-vs-rest AUROC; "
        "`fused_monitor_val_loss` selects by the class-weighted validation loss instead (see caveats). Records 201 "
        "and 202 are one subject: 201 is left out of training so the test set is exactly de Chazal's DS2 "
        f"({facts['test_counts']}). Se = sensitivity, PPV = positive predictive value, in %; [95% CI] from a "
        f"patient-grouped bootstrap over the 22 DS2 records ({res['bootstrap']} resamples).",
        "",
        "Classical baselines (`lda`, `logreg`): per beat, the RR features of the manifest (pre-, post-, local and "
        "record-average RR and their ratios) and the MLII lead's morphology (band-passed 0.5-35 Hz, standardised "
        "per record): amplitudes at 23 fixed offsets from the R peak (-250 to +500 ms, covering P, QRS and T), the R "
        "amplitude, the QRS width (samples within +-100 ms above 30% of |R|), energy, minimum and maximum. Trained "
        "on the same DS1 training records as the deep arms; `lda`: shrinkage LDA with equal class priors (de "
        "Chazal's weighted LDA, one lead); `logreg`: class-weighted logistic regression, C picked on the DS1 "
        "validation records. Both are deterministic (no seed).",
        "",
        *headline(res),
        "## All arms",
        "",
        *main_table(res),
        "",
        "## Confusion matrices on DS2 (rows = true, columns = predicted; N, S, V, F)",
        "",
        *confusion_tables(res["results"]),
    ]
    lines += [
        "## Details",
        "",
        *details(res["results"]),
        "",
        "## Caveats",
        "",
        *[f"- {c}" for c in CAVEATS],
        "",
        *C.reproduce_section(res["results"], res.get("env", {})),
    ]
    return "\n".join(lines)


def confusion_tables(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        cm = r["test"]["confusion_matrix"]
        body = [[c, *line] for c, line in zip(CLASSES, cm, strict=True)]
        out += [f"**{r['arm']}**, seed {r['seed']} (n = {r['test']['n']}):", ""]
        out += [*C.table(["true \\ predicted", *CLASSES], body), ""]
    return out


def details(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        t, extra = r["test"], []
        if "S_without_record_232" in t:
            s = t["S_without_record_232"]
            extra.append(
                f"S sensitivity without record 232: {s['sensitivity']:.1f}% of {s['n']} beats"
            )
        v = r["val"]
        where = "random-split validation" if "random" in r["arm"] else "DS1 validation"
        if r["arm"] == "fused_bagged":
            where = "DS1 out of fold (with the offsets)"
            extra += B.details(r, fmt)
        extra.append(
            f"{where} Se N/S/V/F: "
            + "/".join(fmt(v["sensitivity"][c]) for c in CLASSES)
            + ", PPV: "
            + "/".join(fmt(v["ppv"][c]) for c in CLASSES)
        )
        if r.get("test_macro_auroc") is not None:
            extra.append(f"macro one-vs-rest AUROC {r['test_macro_auroc']:.3f}")
        if r.get("modality_removed_at_test_auroc"):
            ab = r["modality_removed_at_test_auroc"]
            extra.append(
                "AUROC with a modality removed at test time: "
                + ", ".join(f"without {m}: {a['auroc']:.3f}" for m, a in ab.items())
            )
        out.append(f"- **{r['arm']}**, seed {r['seed']}: " + "; ".join(extra) + ".")
    return out


CAVEATS = [
    "de Chazal's numbers are quoted from the paper (DS2 results of their final linear "
    "discriminant classifier); they were not recomputed here. Their split keeps records 201 "
    "(DS1) and 202 (DS2), the same subject, in both sets; ours leaves 201 out of training, so "
    "our training set is one record smaller and the test set is the same 22 records.",
    "S sensitivity is dominated by record 232 (1382 of the 1837 DS2 S beats, a sick-sinus record "
    "with long pauses); the S sensitivity without record 232 is reported beside it.",
    "S PPV is low for every arm, as in the published inter-patient literature: many N beats of "
    "some DS2 patients are called S. F is the hardest class (803 beats in the whole database, "
    "373 of DS1's in one record, 208); our F sensitivity and PPV are far below de Chazal's F "
    "sensitivity, which they bought with an F PPV of 8.6%.",
    "The RR features include the record-average RR, computed over the whole 30-minute record "
    "(offline, non-causal), as in the usual inter-patient setups; a real-time detector would use "
    "a running average.",
    "Choices made on the DS1 validation records only (5 records, S 143 / V 325 / F 21 beats, so "
    "a noisy guide): RR ratios only instead of all RR columns, CNN widths 16-32-64 rather than "
    "32-64-128, no waveform augmentation; then (a first run on DS2 had shown N beats called F, "
    "from the ~23x F weight) the square root of the balanced class weights, by the validation "
    "mean Se (71.2 vs 69.9 balanced, 61.2 unweighted; an earlier check, before the templates and "
    "the running RR, had preferred balanced weights). "
    "DS2 numbers were nevertheless visible during development (one exploratory script printed them "
    "beside the validation numbers, and a 1-epoch dry run of this script); the recipe was not "
    "changed in response to them, but this is disclosed.",
    "Fused: several seeds (mean ± sd shown); waveform-only, RR-only and the random split: one "
    "seed. The patient-grouped bootstrap CIs (22 test records) show how much the numbers move "
    "with the set of patients, the dominant source of variance in this protocol.",
    "Training used one torch thread: on the 2 shared CPU cores, 2 intra-op threads ran about 5x "
    "slower under load from other processes. Results are reproducible for a given seed and thread "
    "count (float reductions differ slightly between thread counts).",
    "Epoch selection: the first full run selected epochs on the class-weighted validation loss "
    "(the `fused_monitor_val_loss` rows). That loss rose after epoch 1 in every arm while the "
    "validation AUROC kept improving (the 21 validation F beats, weighted ~23x, dominate it), so "
    "every model was the epoch-1 model. The primary rows now select on validation macro AUROC, "
    "a choice motivated by the validation histories, but made after the DS2 numbers of the "
    "loss-selected run had been seen; both are reported, whichever is better.",
    "Classical baselines: one lead (MLII) where de Chazal used both leads' features and fused two "
    "discriminants; their features, offsets and the LDA's equal priors were set before the run and not "
    "tuned on DS2; the logistic regression's C was picked on the DS1 validation records. They are "
    "deterministic, so they have no seed spread; their CIs are the patient-grouped bootstrap over DS2.",
    "fused_bagged: DS1's 21 training records (the 5 validation records included) in 5 record "
    "groups dealt by their S + F counts; each group's model trains on the other 4 groups and "
    "picks its epoch on its own group (the same predictions are then its out-of-fold ones, so "
    "they are mildly optimistic); the offsets rule (largest OOF mean Se with OOF Se N >= 90 %, "
    "N fixed at 0, S / V / F on a grid) was declared before any fold model ran and applied to "
    "DS2 once. The offsets are chosen on single models' OOF probabilities and applied to the "
    "5-model mean, which is smoother. F's OOF beats are mostly record 208's (373 of 415), "
    "predicted by a model that saw 42 F beats.",
    "The random beat-level split (if shown) puts beats of the same patient in train and test; its "
    "much higher numbers are leakage, not skill.",
]


# -- main ---------------------------------------------------------------------------------------
def load_previous(out: Path) -> dict[str, Any]:
    old = C.read_json(out.with_suffix(".json")) or {}
    legacy = C.legacy_provenance(out.with_suffix(".json"), old.get("command"))
    for r in old.get("results", []):
        r.setdefault("provenance", legacy)
        r.setdefault("kind", "deep")
    for key in ("command", "wall_seconds", "seeds", "ablation_seeds"):
        old.pop(key, None)  # older layout: now per row / per invocation
    return old


PROTOCOL = (
    "inter-patient: train DS1 (minus validation records and 201), test DS2; paced excluded; argmax"
)


def data_facts(facts: dict[str, Any]) -> dict[str, Any]:
    keys = ("records_per_split", "records_left_out", "labels_per_split", "q_beats_left_out")
    return {
        **{k: facts[k] for k in keys},
        "val_records": facts["records_per_split"].get("val"),
        "test_counts": facts["labels_per_split"].get("test"),
    }


def derive(res: dict[str, Any]) -> None:
    """Aggregates over seeds, recomputed from the rows (after a run, a merge or for a re-render)."""
    for arm in ("fused", "fused_monitor_val_loss", "fused_bagged"):
        res[f"{arm}_over_seeds"] = over_seeds([r for r in res["results"] if r["arm"] == arm])
    bags = [{**r, "test": r["test_argmax"]} for r in res["results"] if r["arm"] == "fused_bagged"]
    res["fused_bagged_argmax_over_seeds"] = over_seeds(bags)


def run_deep(args: argparse.Namespace, inter: Any, data: Path, work: Path) -> list[dict[str, Any]]:
    rows = []
    for arm in args.arms:
        if arm in ARMS:
            epochs = args.rr_epochs if arm == "rr" else args.epochs
            for seed in args.seeds if arm == "fused" else args.ablation_seeds:
                rows.append(
                    run_arm(arm, inter, ARMS[arm], args, work / "inter_patient", epochs, seed)
                )
        elif arm == "fused_monitor_val_loss":
            rows += [
                run_arm(
                    arm,
                    inter,
                    ARMS["fused"],
                    args,
                    work / "inter_patient",
                    args.epochs,
                    seed,
                    monitor="loss",
                )
                for seed in args.seeds
            ]
        elif arm == "fused_bagged":
            rows += [
                B.bagged_row(inter, seed, args.epochs, args.threads, work, args.bootstrap)
                for seed in args.seeds
            ]
        elif arm == "random_fused":
            seed = args.ablation_seeds[0]
            rnd = get_dataset(NAME).prepare(
                work / "random" / "data", data, split="random", seed=seed, **DATA_OPTIONS
            )
            rows.append(
                run_arm(arm, rnd, ARMS["fused"], args, work / "random", args.random_epochs, seed)
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME, arms=[*DEEP_ARMS, *BASELINE_ARMS], seeds=[0, 1, 2])
    ap.add_argument(
        "--ablation-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of the waveform-only / RR-only / random-split arms (--seeds: fused arms)",
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rr-epochs", type=int, default=10)
    ap.add_argument("--random-epochs", type=int, default=4)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: on 2 shared cores, 2 threads ran ~5x slower)",
    )
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    old = C.previous_results(args, out, load_previous, to_markdown, derive)
    if old is None:
        return
    data = C.data_dir(args)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    inter = get_dataset(NAME).prepare(work / "inter_patient" / "data", data, **DATA_OPTIONS)
    rows = run_deep(args, inter, data, work)
    rows += run_baselines([a for a in args.arms if a in BASELINE_ARMS], inter, data, args.bootstrap)
    prov = C.provenance()
    for r in rows:
        r["provenance"] = prov
    order = [*DEEP_ARMS, *BASELINE_ARMS]
    merged = C.merge_rows(old.get("results", []), rows, lambda r: (r["arm"], r["seed"]))
    merged.sort(key=lambda r: (order.index(r["arm"]), r["seed"] or 0))
    res = {**old, "benchmark": NAME, "env": C.environment(), "bootstrap": args.bootstrap}
    res.update(data=data_facts(inter.facts), published=PUBLISHED, targets_sensitivity=TARGETS)
    res.update(mondejar=MONDEJAR, data_options=DATA_OPTIONS)
    res.update(results=merged, caveats=CAVEATS, protocol=PROTOCOL)
    derive(res)
    C.finish(out, res, old, args.arms, t0, to_markdown)
    print(f"wrote {out}.md in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
