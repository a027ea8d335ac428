"""Real-data multimodal benchmark: single-modality vs fused AUROC, with each data set's pairing status.

* PTB-XL (``ptbxl``, real patient pairing: ECG + cardiologist's report + demographics of one
  record): folds 1-8 train, 9 validation (epoch selection on macro-AUROC), 10 test; macro-AUROC
  over NORM/MI/STTC/CD/HYP with a patient-grouped 95% bootstrap CI. Arms ``ptbxl_honest``
  (ECG-only, demographics-only, ECG + demographics with concat / attention / late fusion, several
  seeds) and ``ptbxl_report`` (report-only, masked-report-only, ECG + report + demographics: the
  report reads the cardiologist's diagnosis), plus each fused model's test-time modality removal.
  Classical arm ``gbm``: per-lead statistics + R-peak / heart-rate features + gradient boosting
  (one HistGradientBoosting model per superclass; the number of trees picked on fold 9), with and
  without the demographics, on the same folds; paired bootstrap deltas against the deep rows.
* WDBC rows + BreastMNIST images paired **by class** (``paired``: ``wdbc_breastmnist_mechanics``,
  NOT real patients): image-only, table-only and the same fusions, as a mechanics check.
* COVID-19 CXR (real patient pairing): a summary read from ``benchmarks/results/covid_cxr.json``.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_cpu.lock python benchmarks/multimodal.py
    ... python benchmarks/multimodal.py --arms gbm --merge      # refresh the classical arm only

Writes benchmarks/results/multimodal.json and .md. Budget: ~10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import common as C
import numpy as np
import pandas as pd
import torch

from medmodal import run as steps
from medmodal.config import load_config
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset
from medmodal.datasets.ptbxl import SUPERCLASSES
from medmodal.evaluate import compute_metrics

NAME = "multimodal"
REAL = "real patient pairing"
NOT_REAL = "NOT real: paired by class"
STRODTHOFF = (
    "Strodthoff N., Wagner P., Schaeffter T., Samek W. Deep learning for ECG analysis: benchmarks "
    "and insights from PTB-XL. IEEE JBHI 25(5):1519-1528 (2021)"
)
ARMS = ["ptbxl_honest", "ptbxl_report", "gbm", "paired"]

# Modalities -> label shown in the tables.
PTBXL_LABELS = {
    ("ecg",): "ECG only",
    ("report",): "report only (reads the cardiologist's diagnosis)",
    (
        "report_masked",
    ): "masked report only (diagnostic words masked; still the cardiologist's description)",
    ("demo",): "demographics only",
    ("ecg", "demo"): "ECG + demographics (clinically honest fusion)",
    ("ecg", "report", "demo"): "ECG + report + demographics (report reads the diagnosis)",
    ("ecg_features",): "per-lead statistics + gradient boosting (classical)",
    ("ecg_features", "demo"): "per-lead statistics + demographics + gradient boosting (classical)",
}
PAIRED_LABELS = {
    ("image",): "ultrasound image only",
    ("record",): "WDBC table only",
    ("image", "record"): "image + table (NOT the same patients)",
}

PTBXL_ENCODERS = {
    "ecg": {
        "name": "resnet1d",
        "widths": [16, 32, 64, 128],
        "blocks": [1, 1, 1, 1],
        "dropout": 0.1,
    },
    "report": {"name": "bigru", "embed_dim": 64, "hidden": 64},
    "demo": {"name": "mlp"},
}
PAIRED_ENCODERS = {"image": {"name": "baseline_cnn"}, "record": {"name": "mlp"}}
PTBXL_TRAIN = {
    "epochs": 8,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "monitor": "auroc",
    "early_stopping": 3,
    "threads": 2,
}
PAIRED_TRAIN = {
    "epochs": 30,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "monitor": "auroc",
    "early_stopping": 8,
    "threads": 2,
}
FUSIONS = ("concat", "attention", "late")
HONEST = [(("ecg",), None), (("demo",), None), *((("ecg", "demo"), f) for f in FUSIONS)]
REPORT = [
    (("report",), None),
    (("report_masked",), None),
    *((("ecg", "report", "demo"), f) for f in FUSIONS),
]
GBM = {
    "learning_rate": 0.05,
    "max_iter": [100, 200, 400],
    "max_leaf_nodes": 15,
    "l2_regularization": 1.0,
}


def row_key(r: dict[str, Any]) -> tuple[str, tuple[str, ...], str | None]:
    return r["dataset"], tuple(r["modalities"]), r["fusion"]


# -- deep arms ----------------------------------------------------------------------------------
def load(dataset: str, manifest: Path, schema: Schema, work: Path, seed: int) -> steps.LoadedData:
    """Read and decode every sample of a prepared manifest once (all its modalities)."""
    cfg = load_config(
        {
            "name": f"{dataset}_load",
            "seed": seed,
            "data": {
                "manifest": str(manifest),
                "schema": schema.model_dump(mode="json", exclude_none=True),
            },
        }
    )
    return steps.load_data(cfg, work / dataset / "load")


def model_config(
    loaded: steps.LoadedData,
    dataset: str,
    modalities: tuple[str, ...],
    fusion: str | None,
    encoders: dict[str, dict[str, Any]],
    train: dict[str, Any],
    seed: int,
    work: Path,
    bootstrap: int,
) -> Any:
    name = "+".join(modalities) + (f"_{fusion}" if fusion else "")
    return load_config({
        "name": f"{dataset}_{name}",
        "seed": seed,
        "output_dir": str(work / dataset / f"seed{seed}" / name),
        "data": {**loaded.cfg.data.model_dump(mode="json", by_alias=True), "modalities": list(modalities)},
        "model": {"encoders": {m: encoders["report" if m == "report_masked" else m] for m in modalities},
                  "fusion": {"name": fusion or "concat"}},
        "train": train,
        "evaluate": {"bootstrap": bootstrap, "report": False, "ablation": len(modalities) > 1 and bootstrap > 0},
    })  # fmt: skip


def run_one(
    loaded: steps.LoadedData,
    dataset: str,
    modalities: tuple[str, ...],
    fusion: str | None,
    encoders: dict[str, dict[str, Any]],
    train: dict[str, Any],
    seed: int,
    work: Path,
    bootstrap: int,
) -> dict[str, Any]:
    """Train + evaluate one model on a subset of the loaded modalities (processors fitted on train only)."""
    cfg = model_config(loaded, dataset, modalities, fusion, encoders, train, seed, work, bootstrap)
    t0, c0 = time.perf_counter(), time.process_time()
    sub = loaded.select(modalities).with_config(cfg)
    run = steps.train_and_evaluate(sub, steps.assign_splits(sub), Path(cfg.output_dir or work))
    test, val = run.metrics["test"], run.metrics["val"]
    ci = test.get("ci", {}).get("auroc", {})
    row = {
        "dataset": dataset, "kind": "deep", "modalities": list(modalities),
        "fusion": fusion if len(modalities) > 1 else None, "seed": seed,
        "test_auroc": test["auroc"], "test_auroc_ci": [ci.get("low"), ci.get("high")],
        "test_auprc": test["auprc"], "val_auroc": val["auroc"],
        "per_class_auroc": {k: v.get("auroc") for k, v in test["per_class"].items()},
        "best_epoch": run.metrics["best_epoch"], "epochs": run.metrics["epochs_run"], "n": run.metrics["n"],
        "wall_seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1),
        "test_ids": pd.read_csv(run.run_dir / "predictions_test.csv")["sample_id"].tolist(),
        "test_probs": C.rounded(run.test_probs),
    }  # fmt: skip
    if "ablation" in test:
        row["ablation"] = test["ablation"]
    keys = (
        "dataset",
        "modalities",
        "fusion",
        "seed",
        "test_auroc",
        "val_auroc",
        "best_epoch",
        "wall_seconds",
    )
    print(json.dumps({k: row[k] for k in keys}), flush=True)
    return row


def ptbxl_deep(
    plan: list[tuple[tuple[str, ...], str | None]],
    data_dir: Path,
    work: Path,
    seeds: list[int],
    bootstrap: int,
    epochs: int | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Deep PTB-XL rows: every planned row for ``seeds[0]`` (CIs, removal table); the rows without
    the report also for the other seeds (the seed spread)."""
    ds = get_dataset("ptbxl")
    prep = ds.prepare(work / "ptbxl" / "data", data_dir, verify="all")
    train = {**PTBXL_TRAIN, **({"epochs": epochs} if epochs else {})}
    t0 = time.perf_counter()
    loaded = {"full": load("ptbxl", prep.manifest, Schema.load(prep.schema), work, seeds[0])}
    facts = ptbxl_facts(prep.facts)
    if any("report_masked" in mods for mods, _ in plan):
        masked = ds.prepare(
            work / "ptbxl" / "data_masked", data_dir, verify="csv", report_mask=True
        )
        schema = Schema.load(masked.schema)
        schema = schema.model_copy(
            update={"modalities": {"report_masked": schema.modalities["report"]}}
        )
        loaded["masked"] = load("ptbxl_masked", masked.manifest, schema, work, seeds[0])
        facts["report_mask_terms"] = masked.facts["report_mask_terms"]
    facts["read_seconds"] = round(time.perf_counter() - t0, 1)
    rows = []
    for mods, fusion in plan:
        which = "masked" if "report_masked" in mods else "full"
        row = run_one(
            loaded[which], "ptbxl", mods, fusion, PTBXL_ENCODERS, train, seeds[0], work, bootstrap
        )
        if (
            "report" not in mods and which == "full"
        ):  # the seed spread of the rows without the report
            keep = ("test_auroc", "val_auroc", "best_epoch", "wall_seconds", "cpu_seconds", "seed")
            row["other_seeds"] = [
                {k: o[k] for k in keep}
                for o in (
                    run_one(
                        loaded[which], "ptbxl", mods, fusion, PTBXL_ENCODERS, train, extra, work, 0
                    )
                    for extra in seeds[1:]
                )
            ]
        rows.append(row)
    for r in rows:
        r.update(
            pairing=REAL,
            label=PTBXL_LABELS[tuple(r["modalities"])],
            train=train,
            records=facts["rows"],
            split_counts=facts["split_counts"],
        )
    return rows, facts


def ptbxl_facts(facts: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "rows",
        "records",
        "patients",
        "superclass_counts_all_records",
        "no_diagnostic_statement",
        "split_counts",
        "ages_capped",
        "verified",
    )
    return {k: facts[k] for k in keys}


def seed_spread(rows: list[dict[str, Any]]) -> None:
    """Per PTB-XL deep row: test AUROC mean / sd over its seeds and, for ECG models, the per-seed
    change vs the ECG-only model of the same seed."""
    ecg = next((r for r in rows if r["modalities"] == ["ecg"]), None)
    ecg_by_seed = (
        {}
        if ecg is None
        else {
            ecg["seed"]: ecg["test_auroc"],
            **{o["seed"]: o["test_auroc"] for o in ecg.get("other_seeds", [])},
        }
    )
    for r in rows:
        if r.get("kind") != "deep":
            continue
        by_seed = {
            r.get("seed", 0): r["test_auroc"],
            **{o["seed"]: o["test_auroc"] for o in r.get("other_seeds", [])},
        }
        vals = list(by_seed.values())
        r["seeds"] = list(by_seed)
        r["seed_mean"] = float(np.mean(vals))
        r["seed_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        shared = [s for s in by_seed if s in ecg_by_seed]
        if ecg is not None and "ecg" in r["modalities"] and r is not ecg and shared:
            d = np.asarray([by_seed[s] - ecg_by_seed[s] for s in shared])
            r["vs_ecg_only"] = {
                "per_seed": d.tolist(),
                "mean": float(d.mean()),
                "sd": float(d.std(ddof=1)) if len(d) > 1 else None,
            }


def paired_runs(
    data_dir: Path, work: Path, seed: int, bootstrap: int, epochs: int | None
) -> tuple[list, dict]:
    prep = get_dataset("wdbc_breastmnist_mechanics").prepare(
        work / "paired" / "data", data_dir, seed=seed
    )
    name = "wdbc_breastmnist_mechanics"
    loaded = load(name, prep.manifest, Schema.load(prep.schema), work, seed)
    plan: list[tuple[tuple[str, ...], str | None]] = [(("image",), None), (("record",), None)]
    plan += [(("image", "record"), f) for f in (*FUSIONS, "gated", "mean")]
    train = {**PAIRED_TRAIN, **({"epochs": epochs} if epochs else {})}
    rows = [
        run_one(loaded, name, mods, f, PAIRED_ENCODERS, train, seed, work, bootstrap)
        for mods, f in plan
    ]
    for r in rows:
        r.update({"pairing": NOT_REAL, "label": PAIRED_LABELS[tuple(r["modalities"])]})
        r.pop("test_probs", None), r.pop("test_ids", None)
    return rows, dict(prep.facts)


# -- classical arm: per-lead statistics + gradient boosting ----------------------------------------
def ecg_features(path: str) -> np.ndarray:
    """Per lead: mean, sd, min, max, 5/25/50/75/95th percentiles, skew, kurtosis, mean |diff| and the
    median amplitude at the R peaks; from lead II: heart rate, RR sd / min / max, RMSSD, beat count."""
    import wfdb
    from scipy.signal import butter, find_peaks, sosfiltfilt
    from scipy.stats import kurtosis, skew

    rec = wfdb.rdrecord(path)
    x, fs = np.nan_to_num(rec.p_signal.astype(float)), float(rec.fs)
    stats = [
        x.mean(0),
        x.std(0),
        x.min(0),
        x.max(0),
        *np.percentile(x, [5, 25, 50, 75, 95], axis=0),
        skew(x, axis=0),
        kurtosis(x, axis=0),
        np.abs(np.diff(x, axis=0)).mean(0),
    ]
    lead = rec.sig_name.index("II") if "II" in rec.sig_name else 1
    band = sosfiltfilt(butter(2, [5, 15], btype="band", fs=fs, output="sos"), x[:, lead])
    env = np.abs(band)
    peaks, _ = find_peaks(env, distance=int(0.3 * fs), height=0.35 * np.percentile(env, 99))
    rr = np.diff(peaks) / fs
    amp = np.median(x[peaks], axis=0) if len(peaks) else np.full(x.shape[1], np.nan)
    hr = (
        [60 / rr.mean(), rr.std(), rr.min(), rr.max(), np.sqrt(np.mean(np.diff(rr) ** 2))]
        if len(rr) > 2
        else [np.nan] * 5
    )
    return np.concatenate([np.concatenate(stats), amp, hr, [len(peaks)]])


def gbm_arm(
    data_dir: Path, work: Path, seed: int, bootstrap: int
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """One HistGradientBoosting per superclass on folds 1-8; trees picked on fold 9; test fold 10."""
    prep = get_dataset("ptbxl").prepare(work / "ptbxl" / "data", data_dir, verify="all")
    frame = pd.read_csv(prep.manifest)
    t0 = time.perf_counter()
    feats = np.stack([ecg_features(p) for p in frame["ecg"]])
    seconds = round(time.perf_counter() - t0, 1)
    female = (frame["sex"] == "female").astype(float).where(frame["sex"].notna())
    demo = np.column_stack([frame["age"], female, frame["height"], frame["weight"]])
    test = frame["split"].to_numpy() == "test"
    index = {
        "sample_id": frame.loc[test, "sample_id"].tolist(),
        "patient_id": frame.loc[test, "patient_id"].tolist(),
        "y": frame.loc[test, list(SUPERCLASSES)].to_numpy().astype(int).tolist(),
    }
    rows = []
    for mods, x in (
        (("ecg_features",), feats),
        (("ecg_features", "demo"), np.column_stack([feats, demo])),
    ):
        rows.append(gbm_row(mods, x, frame, seed, bootstrap))
        rows[-1]["features"] = {"n": int(x.shape[1]), "seconds": seconds}
        print(
            json.dumps(
                {k: rows[-1][k] for k in ("modalities", "test_auroc", "test_auroc_ci", "val_auroc")}
            ),
            flush=True,
        )
    return rows, index, ptbxl_facts(prep.facts)


def gbm_row(
    mods: tuple[str, ...], x: np.ndarray, frame: pd.DataFrame, seed: int, bootstrap: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    y = frame[list(SUPERCLASSES)].to_numpy().astype(int)
    split = frame["split"].to_numpy()
    test, classes = split == "test", list(SUPERCLASSES)
    prob_val, prob_test, trees = fit_gbm(x, y, split, seed)
    s = C.scores(
        y[test],
        prob_test,
        "multilabel",
        classes,
        ["auroc", "auprc"],
        groups=frame.loc[test, "patient_id"].to_numpy(),
        n_boot=bootstrap,
        seed=seed,
    )
    val = C.scores(y[split == "val"], prob_val, "multilabel", classes, ["auroc"], n_boot=0)
    per_class = compute_metrics(y[test], prob_test, "multilabel", classes)["per_class"]
    counts = {k: int((split == k).sum()) for k in ("train", "val", "test")}
    return {
        "dataset": "ptbxl", "kind": "baseline", "modalities": list(mods), "fusion": None, "seed": seed,
        "pairing": REAL, "label": PTBXL_LABELS[mods], "test_auroc": s["auroc"], "test_auroc_ci": s["auroc_ci"],
        "test_auprc": s["auprc"], "val_auroc": val["auroc"],
        "per_class_auroc": {c: per_class[c]["auroc"] for c in SUPERCLASSES}, "trees_per_class": trees,
        "n": counts, "records": len(frame), "split_counts": counts, "params": GBM,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "test_ids": frame.loc[test, "sample_id"].tolist(), "test_probs": C.rounded(prob_test),
    }  # fmt: skip


def fit_gbm(
    x: np.ndarray, y: np.ndarray, split: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per superclass: the number of trees (of ``GBM['max_iter']``) with the best fold-9 AUROC."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    tr, va, te = split == "train", split == "val", split == "test"
    prob_val, prob_test, trees = (
        np.zeros((va.sum(), y.shape[1])),
        np.zeros((te.sum(), y.shape[1])),
        [],
    )
    for k in range(y.shape[1]):
        best = None
        for n in GBM["max_iter"]:
            m = HistGradientBoostingClassifier(
                learning_rate=GBM["learning_rate"],
                max_iter=n,
                max_leaf_nodes=GBM["max_leaf_nodes"],
                l2_regularization=GBM["l2_regularization"],
                random_state=seed,
            )
            m.fit(x[tr], y[tr, k])
            pv = m.predict_proba(x[va])[:, 1]
            auc = roc_auc_score(y[va, k], pv)
            if best is None or auc > best[0]:
                best = (auc, n, pv, m.predict_proba(x[te])[:, 1])
        _, n, prob_val[:, k], prob_test[:, k] = best
        trees.append(n)
    return prob_val, prob_test, trees


def comparisons(ptb: dict[str, Any], seed: int, bootstrap: int) -> list[dict[str, Any]]:
    """Deep seed-0 rows minus the classical row with the same inputs: paired patient-grouped bootstrap."""
    index = ptb.get("test_index")
    base = {tuple(r["modalities"]): r for r in ptb["rows"] if r.get("kind") == "baseline"}
    if not index or not base:
        return []
    out = []
    for r in ptb["rows"]:
        twin = {("ecg",): ("ecg_features",), ("ecg", "demo"): ("ecg_features", "demo")}.get(
            tuple(r["modalities"])
        )
        b = base.get(twin) if twin else None
        if r.get("kind") != "deep" or b is None:
            continue
        item = {
            "deep": _model(r),
            "baseline": b["label"],
            "deep_auroc": r["test_auroc"],
            "deep_seed_mean": r.get("seed_mean"),
            "deep_seed_sd": r.get("seed_sd"),
            "baseline_auroc": b["test_auroc"],
        }
        if not r.get("test_probs"):  # rows run before test probabilities were stored: CI check only
            seeds = [r["test_auroc"], *(o["test_auroc"] for o in r.get("other_seeds", []))]
            out.append({**item, "delta": None, "text": C.range_verdict(seeds, b["test_auroc_ci"])})
            continue
        if r["test_ids"] != index["sample_id"] or b["test_ids"] != index["sample_id"]:
            raise RuntimeError(f"{r['label']}: test rows differ from the classical arm's")
        d = C.delta(
            index["y"],
            r["test_probs"],
            b["test_probs"],
            "multilabel",
            list(SUPERCLASSES),
            groups=index["patient_id"],
            n_boot=bootstrap,
            seed=seed,
        )
        out.append({**item, **d, "text": C.verdict(d)})
    return out


# -- markdown ---------------------------------------------------------------------------------
_f = C.num


def _auroc(r: dict[str, Any]) -> str:
    lo, hi = r["test_auroc_ci"]
    return f"{_f(r['test_auroc'])} [{_f(lo)}, {_f(hi)}]" if lo is not None else _f(r["test_auroc"])


def _spread(r: dict[str, Any]) -> str:
    if r.get("kind") == "baseline":
        return "deterministic"
    if r.get("seed_sd") is None:
        return "one seed"
    return f"{r['seed_mean']:.3f} +/- {r['seed_sd']:.3f} ({len(r['seeds'])} seeds)"


def _vs_ecg(r: dict[str, Any]) -> str:
    v = r.get("vs_ecg_only")
    if not v:
        return ""
    sd = f" +/- {v['sd']:.3f}" if v.get("sd") is not None else ""
    return f"{v['mean']:+.3f}{sd} (" + ", ".join(f"{d:+.3f}" for d in v["per_seed"]) + ")"


def _records(r: dict[str, Any]) -> str:
    """Records used (PTB-XL: with the train / val / test split) of one row."""
    n = r.get("n") or {}
    if r["dataset"] == "ptbxl":
        s = r.get("split_counts") or n
        return f"{r.get('records', sum(s.values())):,} ({s.get('train')} / {s.get('val')} / {s.get('test')})"
    return f"{sum(n.values()):,}" if n else "n/a"


def _model(r: dict[str, Any]) -> str:
    return r["label"] + (f", **{r['fusion']}** fusion" if r["fusion"] else "")


def to_markdown(res: dict[str, Any]) -> str:
    ptb, paired = res.get("ptbxl", {}), res.get("paired", {})
    L = [
        "# Multimodal benchmark on real data: single-modality vs fused AUROC",
        "",
        "**Pairing status matters more than any number here.** PTB-XL and COVID-19 CXR are *real patient "
        "pairings* (every modality of a row comes from the same patient and visit). WDBC + BreastMNIST is "
        "**NOT real**: table rows and ultrasound images come from different patients and were paired at "
        "random within a class, so its fusion rows only show that the code combines two independent class "
        "signals; they are not multimodal evidence.",
        "",
        *headline(ptb),
        "## All rows",
        "",
    ]
    head = [
        "data set",
        "pairing",
        "records (train / val / test)",
        "model",
        "test AUROC [95% CI]",
        "mean +/- sd over seeds",
        "val AUROC",
        "best epoch / epochs",
        "wall",
    ]
    body = [
        [
            r["dataset"],
            r["pairing"],
            _records(r),
            _model(r),
            _auroc(r),
            _spread(r),
            _f(r["val_auroc"]),
            f"{r['best_epoch']} / {r['epochs']}" if r.get("epochs") else "-",
            f"{r['wall_seconds'] / 60:.1f} min",
        ]
        for r in [*ptb.get("rows", []), *paired.get("rows", [])]
    ]
    L += C.table(head, body)
    if ptb:
        L += _ptbxl_section(ptb)
    if paired:
        L += _paired_section(paired)
    L += _covid_section(res["covid_cxr"])
    L += _caveats(res)
    rows = [*ptb.get("rows", []), *paired.get("rows", [])]
    L += [
        "",
        *C.reproduce_section(rows, res.get("env", {})),
    ]
    return "\n".join(L)


def _ptbxl_section(ptb: dict[str, Any]) -> list[str]:
    f = ptb["facts"]
    L = [
        "",
        "## PTB-XL (real patient pairing: 12-lead ECG + report + demographics of one record)",
        "",
        f"Protocol: the subset in `../shared/data/ptbxl` ({f['records']:,} records; {len(f['no_diagnostic_statement'])} "
        f"without a diagnostic SCP statement excluded as in Strodthoff et al.; {f['rows']} records of "
        f"{f['patients']} patients kept), `strat_fold` 1-8 train / 9 validation / 10 test "
        f"(split sizes {f['split_counts']}; patient-level, checked), every file verified against PhysioNet's "
        f"SHA-256 ({f['verified']}). Target: multilabel diagnostic superclasses; metric: macro-AUROC over "
        "NORM/MI/STTC/CD/HYP on fold 10, best epoch by validation macro-AUROC on fold 9; 95% CI from "
        f"{ptb['bootstrap']} patient-grouped bootstrap resamples of fold 10. Seeds "
        f"{ptb.get('seeds', [ptb['seed']])} (see below).",
        "",
        f"Encoders ({ptb['encoders']}): ECG `resnet1d` on 12 leads x 1000 samples at 100 Hz with per-lead "
        "standardisation fitted on train; report: word tokens (vocabulary from train) + `bigru`; demographics: `mlp` "
        f"(age capped at 90, sex, height, weight; median imputation + missing indicators). Training: {ptb['train']}.",
        "",
        f"Per row: seed {ptb['seed']}'s macro-AUROC with its CI and per-class AUROCs; the mean +/- sd of the test "
        f"macro-AUROC over seeds {ptb.get('seeds', [ptb['seed']])} for the rows without the report (same data, "
        "same split; the seed changes initialisation and batch order); and for every model with the ECG, the change vs "
        "the ECG-only model of the same seed (mean +/- sd, then each seed; the report rows: first seed only).",
        "",
        "| model | macro-AUROC [95% CI] | NORM | MI | STTC | CD | HYP | mean +/- sd over seeds | change vs ECG only |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ptb["rows"]:
        pc = r["per_class_auroc"]
        L.append(
            f"| {_model(r)} | {_auroc(r)} | "
            + " | ".join(_f(pc.get(c)) for c in ("NORM", "MI", "STTC", "CD", "HYP"))
            + f" | {_spread(r)} | {_vs_ecg(r)} |"
        )
    L += [
        "",
        "**Report rows read the cardiologist's words.** The report is the cardiologist's free-text "
        'interpretation of the same ECG and usually names the diagnosis ("sinusrhythmus normales ekg", '
        '"old inferior myocardial infarction"), so a report-only or report-fused model predicts the '
        "label from the labeller's own statement; it is not a measure of what the ECG shows. The masked "
        f"variant replaces {f.get('report_mask_terms', 'n/a')} diagnostic words (stems in German / English / Swedish, "
        "see `medmodal.datasets.ptbxl.MASK_STEMS`) with [MASK]; masking across three languages is "
        "partial, and what is left (rhythm, axis, lead names, descriptive findings) is still the "
        "cardiologist's reading. The clinically honest comparison is ECG only vs ECG + demographics.",
        "",
        *_masking_note(ptb["rows"]),
        *_fusion_note(ptb["rows"]),
        f"Context only: {STRODTHOFF} report macro-AUROC about 0.93 on the five superclasses for the "
        f"**whole release** (21,799 records, same fold protocol). This subset has {f['rows']:,} records "
        f"(~{100 * f['rows'] / 21799:.0f}% of the release; {f['split_counts'].get('train'):,} for training), so "
        "the numbers above are not comparable with it; compare the rows with each other.",
        "",
        *_baseline_note(ptb),
        "### Test-time modality removal (fused PTB-XL models)",
        "",
        "Each fused model evaluated on fold 10 with one modality removed (its missing-modality path), "
        "and the paired-bootstrap change of macro-AUROC vs all modalities (negative = the model relies on it).",
        "",
        "| model | removed | macro-AUROC | change [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    L += _ablation_rows(ptb["rows"])
    return L


def _masking_note(rows: list[dict[str, Any]]) -> list[str]:
    """What masking did, from the measured report-only rows."""
    by = {tuple(r["modalities"]): r["test_auroc"] for r in rows if r["fusion"] is None}
    raw, masked = by.get(("report",)), by.get(("report_masked",))
    if raw is None or masked is None:
        return []
    verdict = (
        "removed little of it: masking does not make the report a fair input here"
        if raw - masked < 0.05
        else "removed part of it, not all"
    )
    return [
        f"Measured: report only {raw:.3f}, masked report only {masked:.3f} macro-AUROC; the mask {verdict}. "
        'What survives the mask (the report\'s fixed phrasing, e.g. "sinusrhythmus [MASK] ekg" or '
        '"sinus rhythm. [MASK] ecg.", where the [MASK] tokens sit, rhythm words, lead names) still '
        "encodes the cardiologist's reading, so masked-report rows read the diagnosis too.",
        "",
    ]


def _fusion_note(rows: list[dict[str, Any]]) -> list[str]:
    """ECG + demographics vs ECG only, per fusion, from the per-seed changes."""
    parts, gains = [], []
    for r in rows:
        v = r.get("vs_ecg_only")
        if r["modalities"] == ["ecg", "demo"] and v:
            sd = v.get("sd") or 0.0
            parts.append(f"{r['fusion']} {v['mean']:+.3f} +/- {sd:.3f}")
            gains.append(v["mean"] - 2 * sd > 0)
    if not parts:
        return []
    verdict = (
        "a gain larger than twice the seed spread for " + str(sum(gains)) + " fusion(s)"
        if any(gains)
        else "no fusion beats the ECG alone by more than the seed-to-seed spread"
    )
    removal = [
        r["ablation"]["demo"]["delta_auroc"]
        for r in rows
        if r["modalities"] == ["ecg", "demo"]
        and (r.get("ablation") or {}).get("demo", {}).get("delta_auroc") is not None
    ]
    tail = (
        f" Removing the demographics at test time changes these models' macro-AUROC by "
        f"{min(removal):+.3f} to {max(removal):+.3f} (removal table below)."
        if removal
        else ""
    )
    return [
        f"ECG + demographics vs ECG only (same seed, mean +/- sd over seeds): {', '.join(parts)} macro-AUROC: "
        f"{verdict}.{tail}",
        "",
    ]


def _ablation_rows(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        for m, a in (r.get("ablation") or {}).items():
            d = a.get("delta_auroc")
            delta = (
                f"{d:+.3f} [{a['delta_low']:+.3f}, {a['delta_high']:+.3f}]"
                if d is not None
                else "n/a"
            )
            p = a.get("p_value")
            out.append(
                f"| {_model(r)} | {m} | {_f(a.get('auroc'))} | {delta} | {'n/a' if p is None else f'{p:.3f}'} |"
            )
    return out


def _paired_section(paired: dict[str, Any]) -> list[str]:
    f = paired["facts"]
    L = [
        "",
        "## WDBC + BreastMNIST (NOT real patients: paired by class for mechanics only)",
        "",
        f"`wdbc_breastmnist_mechanics`: {f['rows']} pairs ({f['pairs']}); a malignant WDBC row is paired with "
        'a malignant BreastMNIST image and a benign row with a "normal, benign" image, at random (seed '
        f"{f['seed']}). Images stay in their official BreastMNIST split; rows are dealt to the splits without "
        f"replacement; no image or row is in two splits. Unused: images {f['unused_images']}, rows "
        f"{f['unused_rows']}. Encoders: `baseline_cnn` (28 px) and `mlp`; training {paired['train']}; "
        f"binary AUROC (malignant) on the test pairs with a {paired['bootstrap']}-resample bootstrap CI.",
        "",
        "Because the two halves of a pair share only the class, a fused AUROC above both single ones shows "
        "that the fusion combines two independent noisy class signals (an ensemble effect); it says nothing "
        "about what ultrasound adds to cytology for a patient. Here the WDBC table alone is already "
        "near-perfect, so the fused models lean on it (see the removal table) and there is nothing to gain.",
        "",
        "| model | test AUROC [95% CI] | val AUROC |",
        "|---|---|---|",
    ]
    for r in paired["rows"]:
        L.append(f"| {_model(r)} | {_auroc(r)} | {_f(r['val_auroc'])} |")
    L += ["", "| model | removed | AUROC | change [95% CI] | p |", "|---|---|---|---|---|"]
    L += _ablation_rows(paired["rows"])
    return L


def _covid_section(c: dict[str, Any]) -> list[str]:
    L = ["", "## COVID-19 CXR (real patient pairing: chest X-ray + clinical notes + tabular)", ""]
    if c["status"] == "pending":
        return [
            *L,
            f"Pending: `{c['path']}` does not exist yet (written by `benchmarks/covid_cxr.py`).",
        ]
    L += [
        "Summary read from `benchmarks/results/covid_cxr.json`; the full tables, protocol and caveats (note "
        "masking, date confound, nested fusion selection, classical baselines) are in "
        "`benchmarks/results/covid_cxr.md`. Protocol there: patient-grouped stratified 5-fold cross-validation, "
        "AUROC on pooled out-of-fold predictions with a patient-grouped bootstrap 95% CI."
    ]
    for t, body in c["targets"].items():
        L += [
            "",
            f"Target `{t}` ({body['rows']} rows, {body['patients']} patients):",
            "",
            *C.table(
                ["model", "pooled OOF AUROC [95% CI]"],
                [[r["label"], C.with_ci(r["auroc"], r.get("auroc_ci"))] for r in body["rows_"]],
            ),
        ]
    return L


def _caveats(res: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Caveats",
        "",
        "- PTB-XL: CIs and removal tables are from the first seed; the seed spread shows how much a row moves "
        "with initialisation alone. The WDBC + BreastMNIST rows are one seed.",
        *_size_caveat(res.get("ptbxl", {})),
        "- Report-based rows read the cardiologist's own diagnosis; masking is partial (see above).",
        "- The fused models were trained with all modalities present (no modality dropout), so the "
        "removal table shows reliance, not robustness to a missing modality.",
        *_val_gap(res.get("ptbxl", {}).get("rows", [])),
        "- WDBC + BreastMNIST is not a patient pairing; its numbers are a mechanics check only.",
        "- Wall times are for a shared 2-core machine; other work running at the same time slows them "
        "(load averages above).",
    ]


def _size_caveat(ptb: dict[str, Any]) -> list[str]:
    if not ptb:
        return []
    f = ptb["facts"]
    y = np.asarray((ptb.get("test_index") or {}).get("y") or np.zeros((0, len(SUPERCLASSES))))
    pos = (
        ", ".join(f"{c} {int(n)}" for c, n in zip(SUPERCLASSES, y.sum(0), strict=True))
        if len(y)
        else "n/a"
    )
    return [
        f"- PTB-XL: a {f['rows']:,}-record subset of the release, short CPU training (a small 1D ResNet, at most "
        f"{ptb.get('train', PTBXL_TRAIN)['epochs']} epochs, early stopping); the full-release literature figure "
        f"is context, not a target met or missed. Fold 10 has {f['split_counts'].get('test')} records (positives: "
        f"{pos}), so per-class AUROCs of rare classes are noisy."
    ]


def _val_gap(rows: list[dict[str, Any]]) -> list[str]:
    gaps = [
        r["val_auroc"] - r["test_auroc"]
        for r in rows
        if "ecg" in r["modalities"] and r.get("kind") == "deep"
    ]
    if not gaps:
        return []
    return [
        f"- Validation (fold 9) macro-AUROCs of the PTB-XL models with the ECG are {min(gaps):+.3f} to "
        f"{max(gaps):+.3f} above test (fold 10): the epoch is selected on fold 9, and fold 10 may simply be "
        "harder; read the test column."
    ]


def headline(ptb: dict[str, Any]) -> list[str]:
    """The honest PTB-XL comparison with its record count and the classical arm of the same run."""
    if not ptb:
        return []
    f = ptb["facts"]
    rows = {(tuple(r["modalities"]), r["fusion"]): r for r in ptb["rows"]}
    lines = [
        "## Headline: PTB-XL ECG (+ demographics), macro-AUROC on fold 10",
        "",
        f"{f['rows']:,} records of {f['patients']:,} patients (train {f['split_counts'].get('train')} / val "
        f"{f['split_counts'].get('val')} / test {f['split_counts'].get('test')}).",
        "",
    ]
    for deep_key, base_key in (
        ((("ecg",), None), (("ecg_features",), None)),
        ((("ecg", "demo"), "concat"), (("ecg_features", "demo"), None)),
    ):
        d, b = rows.get(deep_key), rows.get(base_key)
        if not d:
            continue
        text = f"- {_model(d)}: {_auroc(d)} (seed {d.get('seed', 0)}); {_spread(d)}"
        if b:
            comp = next((c for c in ptb.get("comparisons", []) if c["deep"] == _model(d)), None)
            text += f". {b['label'].capitalize()}: {_auroc(b)}: {comp['text'] if comp else 'not compared'}"
        lines.append(text + ".")
    return [*lines, ""]


def _baseline_note(ptb: dict[str, Any]) -> list[str]:
    comp = ptb.get("comparisons") or []
    if not comp:
        return []
    lines = [
        "**Deep vs classical on the same fold-10 records** (paired patient-grouped bootstrap of the macro-AUROC "
        "difference, deep seed 0 minus gradient boosting, where the deep run stored its test predictions; otherwise the "
        "deep model's test AUROC over seeds against the classical 95% CI; the classical features are 12 x 12 per-lead statistics "
        "(mean, sd, min, max, 5/25/50/75/95th percentiles, skew, kurtosis, mean |diff|, median amplitude at the R "
        "peaks) + heart rate, RR sd / min / max, RMSSD and beat count from lead II; one HistGradientBoosting per "
        f"superclass, {GBM['learning_rate']} learning rate, trees in {GBM['max_iter']} picked on fold 9):",
        "",
    ]
    lines += C.table(
        [
            "deep model",
            "classical model",
            "deep (seed 0)",
            "deep mean +/- sd over seeds",
            "classical",
            "verdict",
        ],
        [
            [
                c["deep"],
                c["baseline"],
                _f(c["deep_auroc"]),
                "n/a"
                if c.get("deep_seed_sd") is None
                else f"{c['deep_seed_mean']:.3f} +/- {c['deep_seed_sd']:.3f}",
                _f(c["baseline_auroc"]),
                c["text"],
            ]
            for c in comp
        ],
    )
    return [*lines, ""]


def covid_summary(path: Path) -> dict[str, Any]:
    """Headline rows of ``covid_cxr.json``: deep arms, nested selection, classical baselines."""
    data = C.read_json(path)
    if data is None:
        return {"status": "pending", "path": str(path)}
    out: dict[str, Any] = {"status": "read", "path": str(path), "targets": {}}
    for t, body in data.get("targets", {}).items():
        rows = [
            {"label": r["label"], "auroc": r["auroc"], "auroc_ci": r.get("auroc_ci")}
            for r in body["runs"]
        ]
        rows += [
            {
                "label": f"fusion picked per fold on inner validation, {n} notes",
                "auroc": v["auroc"],
                "auroc_ci": v.get("auroc_ci"),
            }
            for n, v in (body.get("nested") or {}).items()
            if v
        ]
        rows += [
            {
                "label": f"{b['label']} (classical)",
                "auroc": b["auroc"],
                "auroc_ci": b.get("auroc_ci"),
            }
            for b in body.get("baselines", [])
        ]
        out["targets"][t] = {
            "rows": body["data"]["rows"],
            "patients": body["data"]["patients"],
            "rows_": rows,
        }
    return out


# -- main ---------------------------------------------------------------------------------------
def load_previous(out: Path) -> dict[str, Any]:
    old = C.read_json(out.with_suffix(".json")) or {}
    legacy = C.legacy_provenance(out.with_suffix(".json"), old.get("command"))
    for part in ("ptbxl", "paired"):
        for r in (old.get(part) or {}).get("rows", []):
            r.setdefault("provenance", legacy)
            r.setdefault("kind", "deep")
            r.setdefault("seed", old[part].get("seed", 0))
            if part == "ptbxl":
                r.setdefault("records", old[part]["facts"]["rows"])
                r.setdefault("split_counts", old[part]["facts"]["split_counts"])
    for key in ("command", "wall_seconds", "cpu_seconds", "load_start", "load_end", "rendered"):
        old.pop(key, None)  # older layout: now per row / per invocation
    return old


def derive(res: dict[str, Any]) -> None:
    ptb = res.get("ptbxl")
    if ptb:
        seed_spread(ptb["rows"])
        ptb["comparisons"] = comparisons(ptb, ptb.get("seed", 0), ptb.get("bootstrap", 1000))
    res["covid_cxr"] = covid_summary(C.RESULTS / "covid_cxr.json")


def run_ptbxl(args: argparse.Namespace, res: dict[str, Any], data: Path, work: Path) -> None:
    plan = (HONEST if "ptbxl_honest" in args.arms else []) + (
        REPORT if "ptbxl_report" in args.arms else []
    )
    if not plan and "gbm" not in args.arms:
        return
    ptb = res.setdefault("ptbxl", {"rows": []})
    ptb.update(
        {
            "seed": args.seeds[0],
            "bootstrap": args.bootstrap,
            "encoders": PTBXL_ENCODERS,
            "reference": STRODTHOFF,
            "train": {**PTBXL_TRAIN, **({"epochs": args.epochs} if args.epochs else {})},
        }
    )
    rows: list[dict[str, Any]] = []
    if plan:
        ptb["seeds"] = args.seeds
        rows, facts = ptbxl_deep(plan, data, work, args.seeds, args.bootstrap, args.epochs)
        ptb["facts"] = {**ptb.get("facts", {}), **facts}
    if "gbm" in args.arms:
        base, ptb["test_index"], facts = gbm_arm(data, work, args.seeds[0], args.bootstrap)
        ptb["facts"] = {**facts, **ptb.get("facts", {}), "rows": facts["rows"]}
        rows += base
    prov = C.provenance()
    for r in rows:
        r["provenance"] = prov
    order = [*HONEST, *REPORT, (("ecg_features",), None), (("ecg_features", "demo"), None)]
    ptb["rows"] = C.merge_rows(ptb["rows"], rows, row_key)
    ptb["rows"].sort(key=lambda r: order.index((tuple(r["modalities"]), r["fusion"])))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME, arms=ARMS, seeds=[0, 1, 2])
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override every recipe's epochs (development runs only)",
    )
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    old = C.previous_results(args, out, load_previous, to_markdown, derive)
    if old is None:
        return
    data = C.data_dir(args)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    res: dict[str, Any] = {**old, "benchmark": NAME, "env": C.environment()}
    run_ptbxl(args, res, data, work)
    if "paired" in args.arms:
        rows, facts = paired_runs(data, work, args.seeds[0], args.bootstrap, args.epochs)
        prov = C.provenance()
        for r in rows:
            r["provenance"] = prov
        res["paired"] = {
            "rows": rows,
            "facts": facts,
            "seed": args.seeds[0],
            "bootstrap": args.bootstrap,
            "train": {**PAIRED_TRAIN, **({"epochs": args.epochs} if args.epochs else {})},
            "encoders": PAIRED_ENCODERS,
        }
    derive(res)
    C.finish(out, res, old, args.arms, t0, to_markdown)
    print(f"wrote {out}.md in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
