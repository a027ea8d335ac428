"""Trust benchmark: calibration, conformal prediction sets, subgroups and explanation checks.

For each data arm a small model is trained (seed 0, a few epochs) with temperature scaling and
split-conformal LAC sets at 90% fitted on the validation split (``evaluate.calibrate.method:
temperature``, ``evaluate.conformal: {method: lac, coverage: 0.9}``); APS sets (randomised, the
same ``medmodal.evaluate.conformal`` code) are fitted post hoc on the same calibrated validation
probabilities. Measured on the test split:

* ECE and Brier score before / after temperature scaling;
* coverage, mean set size and empty sets of LAC and APS, overall and per true class (multilabel:
  per label); class-conditional (Mondrian) LAC as a diagnostic of per-class coverage;
* the **exchangeable re-split**: the validation and test predictions pooled and re-split at
  random 200 times (calibration part the size of the validation split), the threshold refitted:
  mean and sd of the coverage. Close to 90% when the method is right and the gap on the official
  test split comes from validation and test not being exchangeable (distribution shift, and the
  validation split also picked the best epoch);
* MIT-BIH DS2 (inter-patient): coverage per test record and a record-grouped re-split;
* subgroup metrics (schema ``subgroups``: sex, age bands) with patient-grouped bootstrap CIs on
  PTB-XL and covid_cxr.

Arms: ``pneumoniamnist`` / ``retinamnist`` (baseline CNN, 28 px, official splits),
``ptbxl`` (ResNet-1D on the 12-lead ECG, folds 1-8 / 9 / 10), ``mitdb`` (beat window + RR
features, DS1 / DS1 validation records / DS2), ``covid_cxr`` (masked notes + clinical fields,
patient-grouped 5-fold CV, inner validation split per fold) and ``explain`` (trains and checks
models through ``benchmarks/explain.py``: Grad-CAM / IG time per sample, randomisation and
deletion checks; ``--reuse-explain`` reads ``benchmarks/results/explain.json`` instead).

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_cpu.lock python benchmarks/trust.py
    MEDMODAL_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/trust.py --quick

``--quick``: one or two epochs, a few MIT-BIH records, 20 re-splits, few bootstrap resamples;
writes to benchmarks/work/trust/quick.{json,md} unless ``--out`` is given (a smoke test, not
results). Writes benchmarks/results/trust.json and .md. Not part of CI.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import common as C
import explain as E
import numpy as np
import pandas as pd
import torch

from medmodal import api
from medmodal.datasets import get_dataset
from medmodal.evaluate.conformal import (
    class_probs,
    class_scores,
    conformal_quantile,
    id_uniforms,
    set_summary,
)

NAME = "trust"
DATA_ARMS = ["pneumoniamnist", "retinamnist", "ptbxl", "mitdb", "covid_cxr"]
ARMS = [*DATA_ARMS, "explain"]
EXPLAIN_ARMS = ["breast_cnn", "breast_resnet18", "mitdb_cnn1d"]
NOMINAL = 0.9
TOLERANCE = 0.03  # coverage within 3 points of nominal (issue target)
TARGET_ARMS = ["pneumoniamnist", "retinamnist", "ptbxl"]
GRADCAM_TARGET_S = 1.0  # Grad-CAM under 1 s per 28 px image on 2 cores
THREADS = 2
TRUST = {
    "calibrate": {"method": "temperature"},
    "conformal": {"method": "lac", "coverage": NOMINAL},
}
MIT_QUICK = {"records": ["106", "119", "220", "100", "213", "228"], "val_records": ["220"]}
PTBXL_ECG = {
    "name": "resnet1d",
    "widths": [16, 32, 64, 128],
    "blocks": [1, 1, 1, 1],
    "dropout": 0.1,
}  # fmt: skip  (benchmarks/multimodal.py PTBXL_ENCODERS["ecg"])
PTBXL_TRAIN = {
    "epochs": 8,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "monitor": "auroc",
    "early_stopping": 3,
}  # fmt: skip  (benchmarks/multimodal.py PTBXL_TRAIN)
MIT_ENCODERS = {"signal": {"name": "cnn1d", "channels": [16, 32, 64], "dropout": 0.1},
                "rr": {"name": "mlp", "hidden": [64, 32], "dropout": 0.1}}  # fmt: skip
MIT_TRAIN = {"batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adam",
             "scheduler": "cosine", "class_weights": "balanced", "monitor": "auroc"}  # fmt: skip


# -- configs -------------------------------------------------------------------------------------
def budget(args: argparse.Namespace) -> dict[str, Any]:
    """Epochs, bootstrap resamples and re-splits of the full run or of ``--quick``."""
    if args.quick:
        return {"pneumoniamnist": 1, "retinamnist": 2, "ptbxl": 1, "mitdb": 1, "covid_cxr": 2,
                "breast_cnn": 1, "breast_resnet18": 1, "bootstrap": 50, "resplits": 20}  # fmt: skip
    return {"pneumoniamnist": 10, "retinamnist": 30, "ptbxl": 8, "mitdb": 8, "covid_cxr": 20,
            "breast_cnn": 5, "breast_resnet18": 4, "bootstrap": 1000, "resplits": 200}  # fmt: skip


def evaluate_block(bootstrap: int) -> dict[str, Any]:
    return {**TRUST, "bootstrap": bootstrap, "report": False, "ablation": False}


def medmnist_config(name: str, work: Path, data: Path, epochs: int, bs: int, boot: int) -> dict:
    return {
        "name": name, "seed": 0, "output_dir": str(work / name),
        "data": {"dataset": name, "data_dir": str(data), "audit": False},
        "model": {"encoders": {"image": {"name": "baseline_cnn"}}},
        "train": {"epochs": epochs, "batch_size": bs, "lr": 1e-3, "threads": THREADS},
        "evaluate": evaluate_block(boot),
    }  # fmt: skip


def ptbxl_config(work: Path, data: Path, epochs: int, boot: int) -> dict:
    return {
        "name": "ptbxl", "seed": 0, "output_dir": str(work / "ptbxl"),
        "data": {"dataset": "ptbxl", "data_dir": str(data), "modalities": ["ecg"], "audit": False},
        "model": {"encoders": {"ecg": PTBXL_ECG}},
        "train": {**PTBXL_TRAIN, "epochs": epochs, "threads": THREADS},
        "evaluate": evaluate_block(boot),
    }  # fmt: skip


def mitdb_config(work: Path, data: Path, epochs: int, boot: int, quick: bool) -> dict:
    prep = get_dataset("mitdb").prepare(work / "mitdb_data", data, **(MIT_QUICK if quick else {}))
    return {
        "name": "mitdb", "seed": 0, "output_dir": str(work / "mitdb"),
        "data": {"manifest": str(prep.manifest), "schema": str(prep.schema),
                 "modalities": ["signal", "rr"], "audit": False},
        "model": {"encoders": MIT_ENCODERS, "fusion": {"name": "concat"}},
        "train": {**MIT_TRAIN, "epochs": epochs, "threads": THREADS},
        "evaluate": evaluate_block(boot),
    }  # fmt: skip


def covid_config(work: Path, data: Path, epochs: int, boot: int) -> dict:
    """The covid_cxr benchmark's text (masked notes) + record recipe, concat fusion."""
    return {
        "name": "covid_cxr", "seed": 0, "output_dir": str(work / "covid_cxr"),
        "data": {"dataset": "covid_cxr", "data_dir": str(data),
                 "dataset_options": {"target": "finding", "mask_notes": True},
                 "modalities": ["note", "record"], "val_fraction": 0.15, "audit": False},
        "model": {"encoders": {"note": {"name": "embedding_mlp", "out_dim": 64, "dropout": 0.2},
                               "record": {"name": "mlp"}},
                  "fusion": {"name": "concat"}, "modality_dropout": 0.1},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4,
                  "optimizer": "adamw", "scheduler": "cosine", "class_weights": "balanced",
                  "monitor": "auroc", "early_stopping": 8, "threads": THREADS},
        "evaluate": evaluate_block(boot),
    }  # fmt: skip


# -- predictions ---------------------------------------------------------------------------------
def read_predictions(path: Path, task: str, classes: list[str]) -> dict[str, Any]:
    """Calibrated probabilities, labels (class index; multilabel 0/1 matrix), ids, patients."""
    f = pd.read_csv(path, dtype={"label": str, "sample_id": str, "patient_id": str})
    if task == "binary":
        p = f[f"prob_{classes[1]}"].to_numpy(dtype=float)
    else:
        p = f[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    if task == "multilabel":
        sets = [set(str(v).split(";")) if isinstance(v, str) else set() for v in f["label"]]
        y = np.array([[c in s for c in classes] for s in sets], dtype=int)
    else:
        y = f["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    return {"p": p, "y": y, "ids": f["sample_id"].tolist(), "patients": f["patient_id"].to_numpy()}


class Scores:
    """Per-sample nonconformity scores of every class (LAC / APS), computed once: a set is every
    class whose score is <= qhat, so a refitted threshold needs no recomputation."""

    def __init__(self, pred: dict[str, Any], task: str, method: str) -> None:
        p = class_probs(pred["p"], task)
        self.task, self.y = task, pred["y"]
        if task == "multilabel":  # (N, K, 2): per-label lac
            self.all = np.stack([class_scores(p[:, j], "lac") for j in range(p.shape[1])], 1)
            self.true = np.take_along_axis(self.all, self.y[:, :, None], axis=2)[:, :, 0]
        else:
            u = id_uniforms(pred["ids"]) if method == "aps" else None
            self.all = class_scores(p, method, u)
            self.true = self.all[np.arange(len(self.y)), self.y]

    def qhat(self, idx: np.ndarray) -> np.ndarray:
        t = self.true[idx]
        if self.task == "multilabel":
            return np.array([conformal_quantile(t[:, j], NOMINAL) for j in range(t.shape[1])])
        return np.array([conformal_quantile(t, NOMINAL)])

    def sets(self, idx: np.ndarray, qhat: np.ndarray) -> np.ndarray:
        if self.task == "multilabel":
            return self.all[idx] <= qhat[None, :, None]
        return self.all[idx] <= qhat[0]

    def coverage(self, idx: np.ndarray, qhat: np.ndarray) -> tuple[float, float]:
        s = self.sets(idx, qhat)
        if self.task == "multilabel":
            covered = self.true[idx] <= qhat[None, :]
            return float(covered.mean()), float(s.sum(axis=2).mean())
        return float((self.true[idx] <= qhat[0]).mean()), float(s.sum(axis=1).mean())


def mondrian_lac(val: dict[str, Any], test: dict[str, Any], task: str, classes: list[str]) -> dict:
    """Class-conditional LAC (one threshold per true class, fitted on that class's validation
    samples): coverage per class on test. Binary / multiclass only."""
    pv, pt = class_probs(val["p"], task), class_probs(test["p"], task)
    sets = np.zeros_like(pt, dtype=bool)
    qhat = []
    for k in range(pv.shape[1]):
        sv = 1.0 - pv[val["y"] == k, k]
        q = conformal_quantile(sv, NOMINAL) if len(sv) else math.inf
        qhat.append(q)
        sets[:, k] = 1.0 - pt[:, k] <= q
    s = set_summary(test["y"], sets, task, classes)
    return {"qhat": qhat, **s}


# -- one data arm ---------------------------------------------------------------------------------
def analyse(
    folds: list[tuple[dict[str, Any], dict[str, Any]]],
    task: str,
    classes: list[str],
    resplits: int,
    grouped: bool = False,
) -> dict[str, Any]:
    """LAC and APS fitted on each fold's validation predictions, sets on its test predictions
    (pooled over folds), per-class summaries, Mondrian LAC and the re-split checks."""
    methods = ["lac"] if task == "multilabel" else ["lac", "aps"]
    out: dict[str, Any] = {}
    for method in methods:
        y_all, sets_all, q_all, val_cov = [], [], [], []
        for val, test in folds:
            both = concat_preds([val, test])
            sc = Scores(both, task, method)
            nv = len(val["y"])
            vi, ti = np.arange(nv), np.arange(nv, len(both["y"]))
            q = sc.qhat(vi)
            q_all.append(q.tolist())
            val_cov.append(sc.coverage(vi, q)[0])
            y_all.append(test["y"])
            sets_all.append(sc.sets(ti, q))
        y, sets = np.concatenate(y_all), np.concatenate(sets_all)
        summary = set_summary(y, sets, task, classes)
        summary.update(qhat=q_all, val_coverage=float(np.mean(val_cov)))
        summary["resplit"] = resplit(folds, task, method, resplits)
        if grouped:
            summary["resplit_grouped"] = resplit(folds, task, method, resplits, by_patient=True)
        out[method] = summary
    if task != "multilabel":
        y = np.concatenate([t["y"] for _, t in folds])
        parts = [mondrian_lac(v, t, task, classes) for v, t in folds]
        if len(parts) == 1:
            out["mondrian_lac"] = parts[0]
        else:  # pool: recompute from per-fold sets would need them; report per-fold mean
            out["mondrian_lac"] = {
                "coverage": float(sum(p["coverage"] * p["n"] for p in parts) / max(1, len(y))),
                "per_class": {
                    c: {
                        "coverage": _wmean(
                            [(p["per_class"][c]["coverage"], p["per_class"][c]["n"]) for p in parts]
                        ),
                        "n": int(sum(p["per_class"][c]["n"] for p in parts)),
                    }
                    for c in classes
                },  # fmt: skip
            }
    return out


def _wmean(pairs: list[tuple[float | None, int]]) -> float | None:
    pairs = [(v, n) for v, n in pairs if v is not None and n]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def concat_preds(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "p": np.concatenate([q["p"] for q in parts]),
        "y": np.concatenate([q["y"] for q in parts]),
        "ids": [i for q in parts for i in q["ids"]],
        "patients": np.concatenate([q["patients"] for q in parts]),
    }


def resplit(
    folds: list[tuple[dict[str, Any], dict[str, Any]]],
    task: str,
    method: str,
    n: int,
    by_patient: bool = False,
) -> dict[str, Any]:
    """Pool each fold's validation + test predictions, re-split at random ``n`` times
    (calibration part = as many samples, or with ``by_patient`` as many patients, as the
    validation split had), refit the threshold: coverage and set size mean, sd and range."""
    rng = np.random.default_rng(0)
    prepared = []
    for val, test in folds:
        both = concat_preds([val, test])
        sc = Scores(both, task, method)
        prepared.append((sc, len(val["y"]), both["patients"], len(set(val["patients"]))))
    cov, size = [], []
    for _ in range(n):
        covered = total = set_total = 0.0
        for sc, nv, patients, nvp in prepared:
            if by_patient:
                uniq = np.unique(patients)
                cal_p = set(rng.choice(uniq, size=nvp, replace=False).tolist())
                mask = np.array([p in cal_p for p in patients])
                cal, te = np.flatnonzero(mask), np.flatnonzero(~mask)
            else:
                perm = rng.permutation(len(patients))
                cal, te = perm[:nv], perm[nv:]
            c, s = sc.coverage(te, sc.qhat(cal))
            covered, set_total, total = (
                covered + c * len(te),
                set_total + s * len(te),
                total + len(te),
            )
        cov.append(covered / total)
        size.append(set_total / total)
    c = np.array(cov)
    return {
        "n": n,
        "by_patient": by_patient,
        "coverage_mean": float(c.mean()),
        "coverage_sd": float(c.std(ddof=1)) if n > 1 else 0.0,
        "coverage_min": float(c.min()),
        "coverage_max": float(c.max()),
        "share_within_3_points": float((np.abs(c - NOMINAL) <= TOLERANCE).mean()),
        "mean_set_size": float(np.mean(size)),
    }


def split_facts(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation vs test of one run: the numbers that say whether the two are alike."""
    keep = ("auroc", "accuracy", "balanced_accuracy", "ece", "brier")
    out = {s: {k: metrics.get(s, {}).get(k) for k in keep} for s in ("val", "test")}
    ci = (metrics.get("test", {}).get("ci") or {}).get("auroc") or {}
    out["test"]["auroc_ci"] = [ci.get("low"), ci.get("high")] if ci else None
    return out


def run_data_arm(arm: str, args: argparse.Namespace, data: Path, b: dict[str, Any]) -> dict:
    work, boot = Path(args.work), b["bootstrap"]
    t0 = time.perf_counter()
    if arm == "covid_cxr":
        cv = api.cross_validate(covid_config(work, data, b[arm], boot), k=5, progress=False)
        pooled = cv.pooled
        task, classes = pooled["task"], list(pooled["class_names"])
        folds = [
            (
                read_predictions(r.run_dir / "predictions_val.csv", task, classes),
                read_predictions(r.run_dir / "predictions_test.csv", task, classes),
            )
            for r in cv.folds
        ]
        metrics = {"test": pooled, "val": {}}
        extra = {
            "protocol": "patient-grouped 5-fold CV; temperature and conformal thresholds fitted "
            "on each fold's inner validation split (15% of its training patients); pooled "
            "out-of-fold test predictions",
            "best_epochs": [r.metrics["best_epoch"] for r in cv.folds],
            "n": {"test": int(pooled["n"]), "val": sum(len(v["y"]) for v, _ in folds)},
            "val_folds": [
                {k: r.metrics["val"].get(k) for k in ("auroc", "accuracy", "ece")} for r in cv.folds
            ],
        }
    else:
        cfg = {
            "pneumoniamnist": lambda: medmnist_config(arm, work, data, b[arm], 128, boot),
            "retinamnist": lambda: medmnist_config(arm, work, data, b[arm], 64, boot),
            "ptbxl": lambda: ptbxl_config(work, data, b[arm], boot),
            "mitdb": lambda: mitdb_config(work, data, b[arm], min(boot, 200), args.quick),
        }[arm]()
        run = api.fit(cfg, progress=False)
        metrics = run.metrics
        task, classes = metrics["test"]["task"], list(metrics["test"]["class_names"])
        folds = [
            (
                read_predictions(run.run_dir / "predictions_val.csv", task, classes),
                read_predictions(run.run_dir / "predictions_test.csv", task, classes),
            )
        ]
        extra = {
            "protocol": "official / fixed split; temperature and conformal thresholds fitted on "
            "the validation split, which also picked the best epoch",
            "best_epoch": metrics["best_epoch"],
            "n": metrics["n"],
            "fitted_on_val": metrics.get("fitted_on_val"),
        }
    test = metrics["test"]
    row: dict[str, Any] = {
        "arm": arm,
        "task": task,
        "classes": classes,
        "recipe": _recipe(arm, b),
        **extra,
        "splits": split_facts(metrics),
        "calibration": test.get("calibration"),
        "lac_run": {k: (test.get("conformal") or {}).get(k) for k in ("coverage", "mean_set_size")},
        "conformal": analyse(folds, task, classes, b["resplits"], grouped=arm == "mitdb"),
        "subgroups": test.get("subgroups"),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    if arm == "mitdb":
        row["per_record"] = per_record(folds[0][0], folds[0][1], task, classes)
        row["val_records"] = sorted({str(p) for p in folds[0][0]["patients"]})
    return row


def _recipe(arm: str, b: dict[str, Any]) -> str:
    return {
        "pneumoniamnist": f"baseline CNN, 28 px, {b[arm]} epochs, batch 128, lr 1e-3",
        "retinamnist": f"baseline CNN, 28 px RGB, {b[arm]} epochs, batch 64, lr 1e-3",
        "ptbxl": f"ResNet-1D on the 12-lead ECG (100 Hz), {b[arm]} epochs, AdamW + cosine",
        "mitdb": f"CNN-1D beat window + MLP RR features (concat), {b[arm]} epochs, balanced "
        "class weights",
        "covid_cxr": f"MiniLM embeddings of masked notes + clinical fields, concat, {b[arm]} "
        "epochs (early stopping 8)",
    }[arm]


def per_record(val: dict[str, Any], test: dict[str, Any], task: str, classes: list[str]) -> list:
    """Coverage of LAC / APS (thresholds from the validation records) per DS2 test record."""
    both = concat_preds([val, test])
    nv = len(val["y"])
    vi, ti = np.arange(nv), np.arange(nv, len(both["y"]))
    rows = []
    cover = {}
    for method in ("lac", "aps"):
        sc = Scores(both, task, method)
        q = sc.qhat(vi)
        cover[method] = sc.true[ti] <= q[0]
        cover[method + "_size"] = sc.sets(ti, q).sum(axis=1)
    pats, y = test["patients"], test["y"]
    for rec in sorted(set(pats)):
        m = pats == rec
        counts = {c: int((y[m] == k).sum()) for k, c in enumerate(classes)}
        rows.append({
            "record": str(rec), "beats": int(m.sum()), "counts": counts,
            "lac_coverage": float(cover["lac"][m].mean()),
            "lac_set_size": float(cover["lac_size"][m].mean()),
            "aps_coverage": float(cover["aps"][m].mean()),
            "aps_set_size": float(cover["aps_size"][m].mean()),
        })  # fmt: skip
    return rows


# -- explain arm ----------------------------------------------------------------------------------
def run_explain(args: argparse.Namespace, data: Path, b: dict[str, Any]) -> dict[str, Any]:
    """The sanity / deletion / time rows of benchmarks/explain.py (run now, or read back)."""
    t0 = time.perf_counter()
    if args.reuse_explain:
        res = C.read_json(C.RESULTS / "explain.json") or {}
        rows = res.get("results", [])
        return {"arm": "explain", "source": "benchmarks/results/explain.json", "rows": rows,
                "wall_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    ns = argparse.Namespace(work=str(Path(args.work) / "explain"))
    runs = {
        "breast_cnn": lambda: E.run_breast(ns, data, "baseline_cnn", b["breast_cnn"]),
        "breast_resnet18": lambda: E.run_breast(ns, data, "resnet18", b["breast_resnet18"]),
        "mitdb_cnn1d": lambda: E.run_mitdb(ns, data),
    }
    rows = []
    for name in args.explain_arms:
        r = runs[name]()
        print({k: r[k] for k in ("arm", "samples", "explain_seconds_per_sample")}, flush=True)
        rows.append(r)
    return {"arm": "explain", "source": "benchmarks/explain.py (run_breast, run_mitdb) in this "
            "run", "rows": rows, "wall_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


# -- targets --------------------------------------------------------------------------------------
def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per issue target: what was asked, what was measured, met or missed."""
    arms = {r["arm"]: r for r in res.get("results", [])}
    out = []
    for a in TARGET_ARMS:
        r = arms.get(a)
        if not r:
            continue
        for method, c in r["conformal"].items():
            if method not in ("lac", "aps"):
                continue
            cov = c["coverage"]
            out.append({
                "target": f"{a}: {method.upper()} test coverage within 3 points of 90%",
                "measured": f"{C.pct(cov)}% (set size {C.num(c['mean_set_size'], 2)}); "
                            f"exchangeable re-split {C.pct(c['resplit']['coverage_mean'])} "
                            f"± {C.pct(c['resplit']['coverage_sd'])}%",
                "met": abs(cov - NOMINAL) <= TOLERANCE,
            })  # fmt: skip
    ex = arms.get("explain")
    for r in (ex or {}).get("rows", []):
        if not str(r["arm"]).startswith("breast") or "gradcam" not in (r.get("methods") or {}):
            continue
        s = r["methods"]["gradcam"]["seconds"]
        out.append({
            "target": f"Grad-CAM under 1 s per 28 px image on 2 cores ({r['arm']})",
            "measured": f"{C.num(s, 3)} s (method alone; api.explain with every default method "
                        f"and PNGs: {C.num(r['explain_seconds_per_sample'], 2)} s)",
            "met": s < GRADCAM_TARGET_S,
        })  # fmt: skip
    return out


# -- Markdown -------------------------------------------------------------------------------------
def _cov(c: dict[str, Any] | None) -> str:
    return "n/a" if not c or c.get("coverage") is None else C.pct(c["coverage"])


def _rs(c: dict[str, Any] | None) -> str:
    if not c:
        return "n/a"
    return (f"{C.pct(c['coverage_mean'])} ± {C.pct(c['coverage_sd'])} "
            f"({C.pct(c['coverage_min'])}-{C.pct(c['coverage_max'])})")  # fmt: skip


def calibration_lines(rows: list[dict[str, Any]]) -> list[str]:
    body = []
    for r in rows:
        cal = r.get("calibration") or {}
        t = cal.get("temperature")
        temp = "per fold" if t is None else ", ".join(f"{x:.2f}" for x in t)
        fv = ((r.get("fitted_on_val") or {}).get("calibration")) or {}
        nll = (f"{C.num(fv.get('val_nll_before'))} → {C.num(fv.get('val_nll_after'))}"
               if fv else "n/a")  # fmt: skip
        better = (cal.get("ece_after") or 0) < (cal.get("ece_before") or 0)
        body.append([r["arm"], temp, nll, C.num(cal.get("ece_before")),
                     C.num(cal.get("ece_after")), C.num(cal.get("brier_before")),
                     C.num(cal.get("brier_after")),
                     "lower" if better else "**not lower**"])  # fmt: skip
    heads = ["arm", "temperature T", "val NLL before → after", "test ECE before",
             "test ECE after", "test Brier before", "test Brier after", "test ECE after T"]  # fmt: skip
    return C.table(heads, body)


def conformal_lines(rows: list[dict[str, Any]]) -> list[str]:
    body = []
    for r in rows:
        for method in ("lac", "aps"):
            c = r["conformal"].get(method)
            if not c:
                continue
            target = r["arm"] in TARGET_ARMS
            met = abs(c["coverage"] - NOMINAL) <= TOLERANCE
            verdict = ("met" if met else "**missed**") if target else "measured (no target)"
            if r["arm"] == "mitdb":
                verdict = "measured (inter-patient shift)"
            body.append([r["arm"], method.upper(), C.pct(c["val_coverage"]), _cov(c),
                         C.num(c["mean_set_size"], 2), C.pct(c["empty"]),
                         _rs(c["resplit"]), _rs(c.get("resplit_grouped")), verdict])  # fmt: skip
    heads = ["arm", "method", "val coverage %", "test coverage %", "mean set size",
             "empty sets %", "exchangeable re-split % (mean ± sd, range)",
             "record-grouped re-split %", "target (90 ± 3)"]  # fmt: skip
    return C.table(heads, body)


def per_class_lines(r: dict[str, Any]) -> list[str]:
    conf = r["conformal"]
    lac, aps, mon = conf.get("lac"), conf.get("aps"), conf.get("mondrian_lac")
    body = []
    for c in r["classes"]:
        pl = lac["per_class"][c]
        cells = [c, pl.get("support", pl["n"]) if r["task"] == "multilabel" else pl["n"],
                 _cov(pl), C.num(pl["mean_set_size"], 2)]  # fmt: skip
        if r["task"] != "multilabel":
            pa = aps["per_class"][c]
            cells += [_cov(pa), C.num(pa["mean_set_size"], 2), _cov(mon["per_class"][c])]
        body.append(cells)
    heads = ["label" if r["task"] == "multilabel" else "true class",
             "positives" if r["task"] == "multilabel" else "n", "LAC coverage %", "LAC size"]  # fmt: skip
    if r["task"] != "multilabel":
        heads += ["APS coverage %", "APS size", "class-conditional LAC coverage %"]
    lines = C.table(heads, body)
    if r["task"] == "multilabel" and lac.get("joint_coverage") is not None:
        lines += ["", f"Every one of the {len(r['classes'])} labels covered at once (joint "
                  f"coverage): {C.pct(lac['joint_coverage'])}% — per-label LAC guarantees "
                  "each label's coverage, not the joint one."]  # fmt: skip
    return lines


def per_record_lines(r: dict[str, Any]) -> list[str]:
    recs = r.get("per_record") or []
    if not recs:
        return []
    body = [[x["record"], x["beats"], " / ".join(str(x["counts"][c]) for c in r["classes"]),
             C.pct(x["lac_coverage"]), C.num(x["lac_set_size"], 2), C.pct(x["aps_coverage"]),
             C.num(x["aps_set_size"], 2)] for x in recs]  # fmt: skip
    low = [x for x in recs if x["lac_coverage"] < NOMINAL - TOLERANCE]
    cov = np.array([x["lac_coverage"] for x in recs])
    lines = [f"### MIT-BIH DS2: coverage per test record ({len(recs)} records)", ""]
    lines += C.table(["record", "beats", "N / S / V / F", "LAC coverage %", "LAC size",
                      "APS coverage %", "APS size"], body)  # fmt: skip
    lines += ["", f"LAC coverage per record: median {C.pct(float(np.median(cov)))}%, range "
              f"{C.pct(float(cov.min()))}-{C.pct(float(cov.max()))}%; {len(low)} of {len(recs)} "
              f"records below 87% ({', '.join(x['record'] for x in low) or 'none'})."]  # fmt: skip
    return lines


def subgroup_lines(r: dict[str, Any]) -> list[str]:
    sg = r.get("subgroups") or {}
    if not sg:
        return []
    body = []
    for var, groups in sg.items():
        for g, v in groups.items():
            vals, ci, conf = v.get("values") or {}, v.get("ci") or {}, v.get("conformal") or {}

            def cell(k: str, vals: dict = vals, ci: dict = ci) -> str:
                c = ci.get(k) or {}
                return C.with_ci(vals.get(k), [c.get("low"), c.get("high")] if c else None)

            body.append([var, g, v["n"], v["patients"], cell("auroc"), cell("accuracy"),
                         C.num(vals.get("ece")), _cov(conf),
                         C.num(conf.get("mean_set_size"), 2)])  # fmt: skip
    lines = [f"### {r['arm']}", ""]
    lines += C.table(["variable", "group", "n", "patients", "AUROC [95% CI]", "accuracy [95% CI]",
                      "ECE", "LAC coverage %", "LAC set size"], body)  # fmt: skip
    return lines + [""]


def explain_lines(ex: dict[str, Any] | None) -> list[str]:
    if not ex:
        return ["Not run (arm `explain`)."]
    body = []
    for r in ex.get("rows", []):
        for m, c in (r.get("methods") or {}).items():
            checks = E._verdict(c["spearman_signed"] < 0.5,
                                c["deletion_auc"] < c["random_deletion_auc"])  # fmt: skip
            body.append([r["arm"], m, C.num(c["spearman_signed"]), C.num(c["deletion_auc"]),
                         C.num(c["random_deletion_auc"]), checks, C.num(c["seconds"], 4),
                         C.num(r["explain_seconds_per_sample"], 3)])  # fmt: skip
    heads = ["arm", "method", "rho signed (vs randomised weights)", "deletion AUC",
             "random order AUC", "checks (rho < 0.5; deletion < random)", "s / sample (method)",
             "s / sample (api.explain, all methods + PNGs)"]  # fmt: skip
    return [f"Source: {ex.get('source')}.", "", *C.table(heads, body)]


def why_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Plain reasons, with each arm's own numbers."""
    out = []
    for r in rows:
        lac = r["conformal"].get("lac")
        if not lac:
            continue
        sv, st = r["splits"]["val"], r["splits"]["test"]
        gap = ""
        if sv.get("accuracy") is not None and st.get("accuracy") is not None:
            gap = (f"validation accuracy {C.pct(sv['accuracy'])}% vs test "
                   f"{C.pct(st['accuracy'])}%, AUROC {C.num(sv.get('auroc'))} vs "
                   f"{C.num(st.get('auroc'))}")  # fmt: skip
        rs = lac["resplit"]
        ok = abs(lac["coverage"] - NOMINAL) <= TOLERANCE
        rs_ok = abs(rs["coverage_mean"] - NOMINAL) <= TOLERANCE
        z = (lac["coverage"] - rs["coverage_mean"]) / rs["coverage_sd"] if rs["coverage_sd"] else 0
        chance = (f"only {C.pct(rs['share_within_3_points'], 0)}% of exchangeable re-splits "
                  f"land within 3 points of 90% with {r['n'].get('val')} calibration samples")  # fmt: skip
        if r["arm"] == "mitdb":
            msg = (f"**mitdb**: LAC coverage on DS2 {C.pct(lac['coverage'])}% overall; the "
                   "inter-patient section below shows what it hides (per class, per record).")  # fmt: skip
        elif ok:
            msg = (f"**{r['arm']}**: LAC test coverage {C.pct(lac['coverage'])}% is within 3 "
                   f"points of 90%" + (f" ({gap})." if gap else "."))  # fmt: skip
            if rs["share_within_3_points"] < 0.9:
                msg += f" Partly luck: {chance}."
        elif rs_ok and abs(z) >= 2:
            msg = (f"**{r['arm']}**: LAC test coverage {C.pct(lac['coverage'])}%, but "
                   f"{C.pct(rs['coverage_mean'])} ± {C.pct(rs['coverage_sd'])}% when the same "
                   "validation + test predictions are re-split at random: the method holds "
                   f"under exchangeability and the official split is {abs(z):.1f} sd away, so "
                   "the official validation and test splits are not exchangeable"
                   + (f" ({gap})" if gap else "") + ". The validation split also picked the "
                   "best epoch, so the model is at its best there and the threshold fitted "
                   "there is too small for the test split.")  # fmt: skip
        elif rs_ok:
            msg = (f"**{r['arm']}**: LAC test coverage {C.pct(lac['coverage'])}%; re-split at "
                   f"random {C.pct(rs['coverage_mean'])} ± {C.pct(rs['coverage_sd'])}% "
                   f"(range {C.pct(rs['coverage_min'])}-{C.pct(rs['coverage_max'])}). The "
                   f"official split is {abs(z):.1f} sd from the re-split mean: calibration "
                   f"noise alone can give this gap ({chance}); a shift between validation and "
                   "test may add to it" + (f" ({gap})" if gap else "") + ".")  # fmt: skip
        else:
            msg = (f"**{r['arm']}**: LAC test coverage {C.pct(lac['coverage'])}% and "
                   f"re-split {C.pct(rs['coverage_mean'])}%: not explained by the split alone "
                   "(small calibration set or a bug: look here first).")  # fmt: skip
        out += [f"- {msg}"]
    return out


def mitdb_lines(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    lac = r["conformal"]["lac"]
    pcs, mon = lac["per_class"], r["conformal"]["mondrian_lac"]["per_class"]
    rs, rg = lac["resplit"], lac.get("resplit_grouped") or {}
    small = sorted(pcs, key=lambda c: pcs[c]["coverage"] or 0)[0]
    near = abs(lac["coverage"] - NOMINAL) <= TOLERANCE
    recs = r.get("per_record") or []
    held = sorted(recs, key=lambda x: -x["counts"].get(small, 0))
    top = held[0] if held else None
    share = (top["counts"][small] / max(1, pcs[small]["n"])) if top else None
    mon_ok = (mon[small]["coverage"] or 0) >= NOMINAL - TOLERANCE
    lines = [
        "### What inter-patient shift does to conformal coverage (MIT-BIH DS2)",
        "",
        f"- Overall LAC coverage on DS2 is {C.pct(lac['coverage'])}% (validation records "
        f"{C.pct(lac['val_coverage'])}%)"
        + (", within 3 points of 90%" if near else ", **not** within 3 points of 90%")
        + f"; N beats are {pcs['N']['n']} of {lac['n']}. Per class: "
        + ", ".join(f"{c} {_cov(v)}%" for c, v in pcs.items())
        + ". Marginal conformal coverage is an average over beats, not a promise per class or "
        "per patient.",
        f"- Beat-level exchangeable re-split of validation + DS2: {_rs(rs)}%. Record-grouped "
        f"re-split (calibration = a random set of as many records as the validation split had, "
        f"{len(set(r.get('val_records') or [])) or 'the same number of'} records): "
        f"{_rs(rg) if rg else 'n/a'}%. Beats of one record are alike and records differ "
        "(rhythm, morphology, lead placement), so a calibration set of a few records is a "
        "small sample of patients, however many beats it holds: the spread over record draws "
        "is the inter-patient shift, and the DS1 validation records are one such draw.",
    ]
    if recs:
        cov = np.array([x["lac_coverage"] for x in recs])
        lines.append(
            f"- Per test record LAC coverage ranges {C.pct(float(cov.min()))}-"
            f"{C.pct(float(cov.max()))}% (table below): a set is calibrated for the population "
            "of records, not for the next patient."
        )
    if top is not None:
        lines.append(
            f"- Worst class {small}: {C.pct(pcs[small]['coverage'])}% of {pcs[small]['n']} "
            f"beats, {C.pct(share, 0)}% of them from record {top['record']}. Class-conditional "
            f"(Mondrian) LAC, one threshold per class fitted on the validation records, gives "
            f"{small} {_cov(mon[small])}%"
            + (
                ": per-class thresholds restore the class's coverage (mean set size over all "
                f"DS2 beats {C.num(r['conformal']['mondrian_lac'].get('mean_set_size'), 2)}, "
                f"marginal LAC {C.num(lac['mean_set_size'], 2)})."
                if mon_ok
                else ": per-class thresholds do not fix it; the validation beats of that class "
                "do not look like the test beats (shift, not only imbalance)."
            )
        )
    return lines + [""]


def to_markdown(res: dict[str, Any]) -> str:
    rows = [r for r in res.get("results", []) if r["arm"] in DATA_ARMS]
    rows.sort(key=lambda r: DATA_ARMS.index(r["arm"]))
    ex = next((r for r in res.get("results", []) if r["arm"] == "explain"), None)
    quick = " (--quick smoke test: tiny budget, not results)" if res.get("quick") else ""
    lines = [
        f"# Trust: calibration, conformal prediction sets, subgroups, explanation checks{quick}",
        "",
        "Each data arm trains one small model (seed 0) whose temperature and LAC conformal "
        "threshold (90%) are fitted on the validation split; APS thresholds are fitted on the "
        "same calibrated validation probabilities (post hoc, same code). Numbers are on the "
        "test split. The exchangeable re-split pools the validation and test predictions and "
        f"re-splits them at random ({_nresplits(rows)} times, calibration part the size of the "
        "validation split) to separate the method from the split.",
        "",
        "## Targets",
        "",
    ]
    tg = targets(res)
    lines += C.table(["target", "measured", "result"],
                     [[t["target"], t["measured"], "met" if t["met"] else "**missed**"]
                      for t in tg])  # fmt: skip
    met = sum(t["met"] for t in tg)
    lines += ["", f"{met} of {len(tg)} targets met.", ""]
    lines += ["## Why coverage misses or holds", "", *why_lines(rows), ""]
    lines += ["## Conformal prediction sets at 90%", "", *conformal_lines(rows), ""]
    lines += [
        "Val coverage is on the split the threshold was fitted on (≥ 90% by construction). "
        "APS sets always hold the top class, so when the model is right more often than 90% "
        "on validation the threshold is 0 and APS sets are singletons: coverage = test accuracy.",
        "",
    ]
    lines += ["## Coverage per true class (per label for PTB-XL)", ""]
    for r in rows:
        lines += [f"### {r['arm']}", "", *per_class_lines(r), ""]
    mit = next((r for r in rows if r["arm"] == "mitdb"), None)
    lines += mitdb_lines(mit)
    if mit:
        lines += per_record_lines(mit) + [""]
    lines += ["## Calibration: temperature scaling fitted on validation", ""]
    lines += calibration_lines(rows) + [""]
    lines += [
        "Temperature scaling minimises the validation NLL; it lowers test ECE only when the "
        "validation split's miscalibration is the test split's. Test ECE not lowered here: "
        + (", ".join(_ece_not_lower(rows)) or "none")
        + ".",
        "",
    ]
    lines += ["## Subgroups (sex, age bands) with patient-grouped bootstrap 95% CIs", ""]
    for r in rows:
        lines += subgroup_lines(r)
    lines += [
        "A subgroup CI is a percentile interval over patient-grouped resamples; ECE is biased "
        "upward on small resamples, so its interval can sit above the point value (not shown).",
        "",
    ]
    lines += ["## Explanations: sanity checks, deletion, time per sample", ""]
    lines += explain_lines(ex) + [""]
    lines += ["## Arms and protocol", ""]
    for r in rows:
        s = r["splits"]["test"]
        lines += [f"- **{r['arm']}** ({r['task']}; classes {', '.join(r['classes'])}): "
                  f"{r['recipe']}. {r['protocol']}. Samples: "
                  f"{', '.join(f'{k} {v}' for k, v in r['n'].items())}. Test AUROC "
                  f"{C.with_ci(s.get('auroc'), s.get('auroc_ci'))}, accuracy "
                  f"{C.num(s.get('accuracy'))}. Wall {C.num(r['wall_seconds'] / 60, 1)} min."]  # fmt: skip
    lines += [""] + C.reproduce_section(res.get("results", []), res.get("env", {}))
    return "\n".join(lines)


def _ece_not_lower(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        cal = r.get("calibration") or {}
        if cal.get("ece_after") is not None and cal["ece_after"] >= cal["ece_before"]:
            out.append(f"{r['arm']} ({C.num(cal['ece_before'])} → {C.num(cal['ece_after'])})")
    return out


def _nresplits(rows: list[dict[str, Any]]) -> str:
    for r in rows:
        return str(r["conformal"]["lac"]["resplit"]["n"])
    return "n/a"


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME, arms=ARMS)
    ap.add_argument("--quick", action="store_true", help="tiny budget smoke test")
    ap.add_argument("--reuse-explain", action="store_true",
                    help="explain arm: read benchmarks/results/explain.json instead of running")  # fmt: skip
    ap.add_argument("--explain-arms", nargs="+", default=EXPLAIN_ARMS, choices=EXPLAIN_ARMS)
    args = ap.parse_args()
    if args.quick:
        if args.out == str(C.RESULTS / NAME):
            args.out = str(C.WORK / NAME / "quick")
        args.work = str(Path(args.work) / "quick")
    out = Path(args.out)
    old = C.previous_results(args, out, lambda p: C.read_json(p.with_suffix(".json")) or {},
                             to_markdown)  # fmt: skip
    if old is None:
        return
    torch.set_num_threads(THREADS)
    data = C.data_dir(args)
    b = budget(args)
    t0, prov = time.perf_counter(), C.provenance()
    new = []
    for arm in args.arms:
        print(f"== {arm}", flush=True)
        row = run_explain(args, data, b) if arm == "explain" else run_data_arm(arm, args, data, b)
        row["provenance"] = prov
        print(f"{arm}: {row['wall_seconds']} s", flush=True)
        new.append(row)
    res = {**old, "benchmark": NAME, "quick": args.quick, "budget": b, "env": C.environment()}
    res["results"] = C.merge_rows(old.get("results", []), new, lambda r: r["arm"])
    res["targets"] = targets(res)
    C.finish(out, res, old, args.arms, t0, to_markdown)
    print(f"wrote {out}.md", flush=True)


if __name__ == "__main__":
    main()
