"""COVID-19 chest X-ray + clinical notes + clinical fields: patient-grouped 5-fold CV, two targets.

Targets (built-in dataset ``covid_cxr``): ``finding`` (COVID-19 vs every other finding, ``todo``
rows excluded) and ``survival`` (died vs survived). For each target:

* deep arms (``api.cross_validate(config, k=5)``): image-only, text-only (raw notes, notes with
  diagnosis / outcome words masked, masked words + numbers), tabular-only, and the six fusions
  (concat, mean, sum, late, attention, gated) on image + note + record with raw and with masked
  notes. Patient-grouped, stratified folds (the same for every run of a target; asserted), AUROC
  on pooled out-of-fold predictions with a patient-grouped bootstrap 95% CI, per-fold mean +/- std,
  and (fusions) AUROC with each modality removed at test time;
* **nested fusion selection** (the headline): in each outer fold, the fusion with the best AUROC
  on that fold's *inner validation split* is used to predict the outer test fold; the pooled
  AUROC of those predictions needs no choice made on the reported folds;
* classical baselines (``baselines``) on the same folds (``patient_kfold`` with the same seed,
  asserted equal to the deep runs' folds): TF-IDF (word 1-2 grams) + logistic regression on raw
  and on masked notes, logistic regression and gradient boosting on the clinical record fields,
  and one logistic regression on TF-IDF + record features (raw and masked notes); C tuned by
  patient-grouped inner CV on each training part only. Paired patient-grouped bootstrap deltas
  say where the deep model loses.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_cpu.lock python benchmarks/covid_cxr.py
    ... python benchmarks/covid_cxr.py --arms baselines --merge      # refresh the baselines only

Writes benchmarks/results/covid_cxr.json and .md. Budget: ~12 minutes on 2 CPU cores.

MiniLM note embeddings are memoised in-process (``embed_minilm`` wrapped in an LRU cache, keyed
by the normalised note): every run re-reads the dataset through the public API, and without the
memo each run would recompute the same ~500 embeddings (~30 s each time). Results are identical.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import common as C
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medmodal import api
from medmodal.data.preprocess import text as text_mod
from medmodal.data.splits import patient_kfold
from medmodal.datasets import get_dataset
from medmodal.datasets.covid_cxr import CLASSES, MASK_TERMS, mask_terms

NAME = "covid_cxr"
K = 5
FUSIONS = ["concat", "mean", "sum", "late", "attention", "gated"]
ALL = ["image", "note", "record"]
SINGLES = ["image", "text_raw", "text_masked", "text_masked_numbers", "tabular"]
ARM_GROUPS = {
    "single": SINGLES,
    "fusion_raw": [f"{f}_raw" for f in FUSIONS],
    "fusion_masked": [f"{f}_masked" for f in FUSIONS],
}
ARMS = [*ARM_GROUPS, "baselines", *(i for ids in ARM_GROUPS.values() for i in ids)]
DEFAULT_ARMS = [*ARM_GROUPS, "baselines"]
BASELINE_C = [0.1, 1.0, 10.0]
RESULT_LAYOUT = {
    "targets.<finding|survival>.data": "rows, patients, per_class, excluded rows, merged patient ids, "
    "rows per patient, absent notes, confounder checks",
    "targets.<t>.index": "sample_id, patient_id, y (1 = positive class), fold: the row order of every "
    "oof_prob below and the folds every arm used",
    "targets.<t>.runs[]": "deep arms: id, label, modalities, fusion (null = single modality), notes "
    "(raw | masked | masked+numbers | null), auroc, auroc_ci, auprc, balanced_accuracy, per_fold, "
    "val_auroc_folds (inner-validation AUROC per outer fold), ablation (multimodal runs), best_epochs, "
    "oof_prob, provenance",
    "targets.<t>.baselines[]": "classical arms: id, label, features, model, auroc, auroc_ci, auprc, "
    "balanced_accuracy, per_fold, C per fold, oof_prob, provenance",
    "targets.<t>.nested": "per note variant: fusion picked per outer fold on inner-validation AUROC, "
    "pooled AUROC [CI] of those predictions",
    "targets.<t>.comparisons[]": "deep arm vs classical arm: paired patient-grouped bootstrap AUROC delta",
    "targets.<t>.summary": "best single modality, best raw-note fusion (picked on the reported folds), "
    "text raw vs masked AUROC",
}


@functools.cache
def _embed_cached(text: str, path: Any = None) -> np.ndarray:
    return _EMBED(text, path)


_EMBED = text_mod.embed_minilm


def install_embedding_memo() -> None:
    """Memoise the frozen MiniLM embedding per normalised note (same values, computed once)."""
    text_mod.embed_minilm = _embed_cached


# -- deep arms ----------------------------------------------------------------------------------
def run_specs() -> list[dict[str, Any]]:
    """Every deep run of one target: id, modalities, fusion, note masking."""
    specs = [
        {
            "id": "image",
            "label": "image only",
            "modalities": ["image"],
            "fusion": None,
            "notes": None,
        },
        {
            "id": "text_raw",
            "label": "text only, raw notes",
            "modalities": ["note"],
            "fusion": None,
            "notes": "raw",
        },
        {
            "id": "text_masked",
            "label": "text only, diagnosis/outcome words masked",
            "modalities": ["note"],
            "fusion": None,
            "notes": "masked",
        },
        {
            "id": "text_masked_numbers",
            "label": "text only, words + numbers masked",
            "modalities": ["note"],
            "fusion": None,
            "notes": "masked+numbers",
        },
        {
            "id": "tabular",
            "label": "tabular only",
            "modalities": ["record"],
            "fusion": None,
            "notes": None,
        },
    ]
    for notes in ("raw", "masked"):
        specs += [
            {
                "id": f"{f}_{notes}",
                "label": f"{f} fusion, {notes} notes",
                "modalities": ALL,
                "fusion": f,
                "notes": notes,
            }
            for f in FUSIONS
        ]
    return specs


def make_config(
    spec: dict[str, Any], target: str, recipe: dict[str, Any], seed: int, data_dir: Path, work: Path
) -> dict[str, Any]:
    notes = spec["notes"]
    options = {
        "target": target,
        "image_size": recipe["image_size"],
        "image_augment": recipe["image_augment"],
        "mask_notes": notes in ("masked", "masked+numbers"),
        "mask_numbers": notes == "masked+numbers",
    }
    fusion = {
        "name": spec["fusion"] or "concat",
        **recipe["fusion_kwargs"].get(spec["fusion"] or "", {}),
    }
    multimodal = len(spec["modalities"]) > 1
    return {
        "name": f"covid_cxr_{target}_{spec['id']}",
        "seed": seed,
        "output_dir": str(work / target / spec["id"]),
        "data": {
            "dataset": "covid_cxr",
            "data_dir": str(data_dir),
            "dataset_options": options,
            "modalities": spec["modalities"],
            "val_fraction": recipe["val_fraction"],
        },
        "model": {
            "encoders": recipe["encoders"],
            "fusion": fusion,
            "modality_dropout": recipe["modality_dropout"] if multimodal else 0.0,
        },
        "train": dict(recipe["train"]),
        "evaluate": {"bootstrap": recipe["bootstrap"], "report": False, "ablation": True},
    }


def recipe_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "image_size": args.image_size,
        "image_augment": {"flip": 0.5, "rotate": 10, "scale": 0.1, "intensity": 0.1},
        "encoders": {
            "image": {"name": "baseline_cnn", "filters": 16, "hidden": 64},
            "note": {"name": "embedding_mlp", "out_dim": 64, "dropout": 0.2},
            "record": {"name": "mlp"},
        },
        "fusion_kwargs": {},
        "modality_dropout": 0.1,
        "val_fraction": 0.15,
        "bootstrap": args.bootstrap,
        "train": {
            "epochs": args.epochs,
            "batch_size": 32,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "optimizer": "adamw",
            "scheduler": "cosine",
            "class_weights": "balanced",
            "monitor": "auroc",
            "early_stopping": 8,
            "threads": 1,
        },
    }


def run_one(
    spec: dict[str, Any], target: str, recipe: dict[str, Any], seed: int, data_dir: Path, work: Path
) -> dict[str, Any]:
    """One cross-validation (in a worker process): its summary row with its OOF predictions."""
    t0, c0 = time.perf_counter(), time.process_time()
    cv = api.cross_validate(make_config(spec, target, recipe, seed, data_dir, work), k=K)
    row = summarise(spec, cv, time.perf_counter() - t0, CLASSES[target][1])
    row["cpu_seconds"] = round(time.process_time() - c0, 1)
    return row


def summarise(spec: dict[str, Any], cv: api.CVResult, wall: float, positive: str) -> dict[str, Any]:
    p, pred = cv.pooled, cv.predictions
    per_patient = pred.groupby("patient_id")["fold"].nunique()
    if (per_patient > 1).any():
        raise RuntimeError(
            f"patients in more than one fold: {list(per_patient[per_patient > 1].index)[:5]}"
        )
    prob_col = f"prob_{positive}"
    ci = p.get("ci", {}).get("auroc", {})
    row: dict[str, Any] = {
        **{k: spec[k] for k in ("id", "label", "modalities", "fusion", "notes")},
        "n": int(len(pred)),
        "auroc": p["auroc"],
        "auroc_ci": [ci.get("low"), ci.get("high")],
        "auprc": p.get("auprc"),
        "balanced_accuracy": p.get("balanced_accuracy"),
        "per_fold": {
            "auroc_mean": cv.per_fold["auroc"]["mean"],
            "auroc_std": cv.per_fold["auroc"]["std"],
            "auroc_folds": cv.per_fold["auroc"]["folds"],
        },
        "val_auroc_folds": [r.metrics.get("val", {}).get("auroc") for r in cv.folds],
        "best_epochs": [r.metrics["best_epoch"] for r in cv.folds],
        "missing_modalities": {
            c.removeprefix("present_"): int((~pred[c].astype(bool)).sum())
            for c in pred.columns
            if c.startswith("present_")
        },
        "wall_seconds": round(wall, 1),
        "index": {
            "sample_id": pred["sample_id"].tolist(),
            "patient_id": pred["patient_id"].astype(str).tolist(),
            "y": (pred["label"] == prob_col.removeprefix("prob_")).astype(int).tolist(),
            "fold": pred["fold"].astype(int).tolist(),
        },
        "oof_prob": C.rounded(pred[prob_col]),
    }
    if "ablation" in p:
        keys = ("auroc", "delta_auroc", "delta_low", "delta_high", "p_value")
        row["ablation"] = {
            m: {k: v for k, v in a.items() if k in keys} for m, a in p["ablation"].items()
        }
    return row


def attach(block: dict[str, Any], row: dict[str, Any], what: str) -> None:
    """Put a row's sample order / folds in the target's index (the first one sets it) or assert them."""
    index = row.pop("index")
    if "index" not in block:
        block["index"] = index
        return
    ours = dict(zip(block["index"]["sample_id"], block["index"]["fold"], strict=True))
    C.same_folds(ours, dict(zip(index["sample_id"], index["fold"], strict=True)), what)
    if index["sample_id"] != block["index"]["sample_id"]:
        order = {s: i for i, s in enumerate(index["sample_id"])}
        row["oof_prob"] = [row["oof_prob"][order[s]] for s in block["index"]["sample_id"]]


def data_facts(target: str, data_dir: Path, work: Path) -> dict[str, Any]:
    """Counts and confounder checks from the prepared manifest (no model involved)."""
    prepared = get_dataset("covid_cxr").prepare(work / target / "_data", data_dir, target=target)
    m = pd.read_csv(prepared.manifest, dtype=str, keep_default_na=False, na_values=[""])
    year = m["year"].astype(float)
    positive = list(prepared.facts["per_class"])[1]
    y = (m["label"] == positive).astype(int).to_numpy()
    per_patient = m.groupby("patient_id").size()
    by_class = {}
    for c, g in m.groupby("label"):
        gy = g["year"].astype(float)
        by_class[c] = {
            "rows": len(g),
            "patients": int(g["patient_id"].nunique()),
            "note_absent": int(g["note"].isna().sum()),
            "dated_2020": int((gy >= 2020).sum()),
            "dated_before_2020": int((gy < 2020).sum()),
            "no_year": int(gy.isna().sum()),
            "offset_present": int(g["offset"].notna().sum()),
        }
    checks = {
        # AUROC of trivial metadata scores: how far the target can be read from source/date alone.
        "auroc_dated_2020": _auc(y, (year >= 2020).astype(float).to_numpy()),
        "auroc_note_present": _auc(y, m["note"].notna().astype(float).to_numpy()),
        "auroc_offset_present": _auc(y, m["offset"].notna().astype(float).to_numpy()),
    }
    return {
        **{k: v for k, v in prepared.facts.items() if k not in ("folder",)},
        "rows_per_patient": {
            "median": float(per_patient.median()),
            "max": int(per_patient.max()),
            "patients_with_several_rows": int((per_patient > 1).sum()),
        },
        "patients_with_both_labels": int((m.groupby("patient_id")["label"].nunique() > 1).sum()),
        "by_class": by_class,
        "confounder_checks": checks,
    }


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


# -- classical baselines ------------------------------------------------------------------------
BASELINES = [
    {
        "id": "tfidf_raw",
        "label": "TF-IDF + logistic regression, raw notes",
        "notes": "raw",
        "record": None,
        "deep": "text_raw",
    },
    {
        "id": "tfidf_masked",
        "label": "TF-IDF + logistic regression, masked notes",
        "notes": "masked",
        "record": None,
        "deep": "text_masked",
    },
    {
        "id": "record_lr",
        "label": "logistic regression, record fields",
        "notes": None,
        "record": "linear",
        "deep": "tabular",
    },
    {
        "id": "record_gbm",
        "label": "gradient boosting, record fields",
        "notes": None,
        "record": "gbm",
        "deep": "tabular",
    },
    {
        "id": "tfidf_record_raw",
        "label": "one logistic regression on TF-IDF (raw notes) + record fields",
        "notes": "raw",
        "record": "linear",
        "deep": "nested:raw",
    },
    {
        "id": "tfidf_record_masked",
        "label": "one logistic regression on TF-IDF (masked notes) + record fields",
        "notes": "masked",
        "record": "linear",
        "deep": "nested:masked",
    },
]


def record_columns(schema_path: Path) -> tuple[list[str], list[str]]:
    """Numeric and categorical columns of the ``record`` modality (the deep arms' inputs)."""
    from medmodal.data.schema import Schema

    spec = Schema.load(schema_path).modalities["record"]
    cats = list(spec.categorical or [])
    return [c for c in spec.columns if c not in cats], cats


def baseline_model(
    spec: dict[str, Any], numeric: list[str], cats: list[str], c: float, seed: int
) -> Any:
    """A scikit-learn pipeline on the manifest frame (note text and/or record columns)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if spec["notes"]:
        parts.append(
            ("note", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), "note")
        )
    if spec["record"]:
        parts.append(
            (
                "num",
                make_pipeline(
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                    StandardScaler(),
                ),
                numeric,
            )
        )
        parts.append(
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                cats,
            )
        )
    features = ColumnTransformer(parts, sparse_threshold=1.0 if spec["notes"] else 0.0)
    if spec["record"] == "gbm":
        clf: Any = HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=200, class_weight="balanced", random_state=seed
        )
    else:
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    return make_pipeline(features, clf)


def baseline_frame(prepared: Any, numeric: list[str]) -> pd.DataFrame:
    """The manifest with each note as the deep text model reads it (normalised, and masked with the
    schema's ``mask_terms`` / ``mask_numbers`` when the notes are masked) and numeric record fields."""
    from medmodal.data.schema import Schema

    frame = pd.read_csv(prepared.manifest, dtype=str, keep_default_na=False, na_values=[""])
    pre = Schema.load(prepared.schema).modalities["note"].preprocess
    terms = text_mod.compile_mask_terms(pre.get("mask_terms") or [])
    frame["note"] = [
        text_mod.normalize_text(t, mask_terms=terms, mask_numbers=bool(pre.get("mask_numbers")))
        if isinstance(t, str)
        else ""
        for t in frame["note"]
    ]
    for col in numeric:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def fit_fold(
    spec: dict[str, Any],
    x: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray,
    numeric: list[str],
    cats: list[str],
    seed: int,
) -> tuple[Any, float | None]:
    """The model fitted on one training part; C picked by patient-grouped 3-fold inner CV (AUROC)."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score

    if spec["record"] == "gbm":
        return baseline_model(spec, numeric, cats, 1.0, seed).fit(x, y), None
    inner = StratifiedGroupKFold(3, shuffle=True, random_state=seed)
    score = {
        c: cross_val_score(
            baseline_model(spec, numeric, cats, c, seed),
            x,
            y,
            groups=groups,
            cv=inner,
            scoring="roc_auc",
        ).mean()
        for c in BASELINE_C
    }
    best = max(BASELINE_C, key=lambda c: score[c])
    return baseline_model(spec, numeric, cats, best, seed).fit(x, y), best


def run_baselines(
    target: str, block: dict[str, Any], data_dir: Path, work: Path, seed: int, n_boot: int
) -> list[dict[str, Any]]:
    """Every classical arm of one target on the deep arms' folds (asserted)."""
    frames = {}
    for notes in ("raw", "masked"):
        prepared = get_dataset(NAME).prepare(
            work / target / f"_data_{notes}", data_dir, target=target, mask_notes=notes == "masked"
        )
        numeric, cats = record_columns(prepared.schema)
        frames[notes] = baseline_frame(prepared, numeric)
    frame = frames["raw"]
    labels = frame["label"].map({c: i for i, c in enumerate(CLASSES[target])}).to_numpy()
    folds = patient_kfold(list(frame["patient_id"]), labels, n_splits=K, seed=seed)
    index = {
        "sample_id": frame["sample_id"].tolist(),
        "patient_id": frame["patient_id"].tolist(),
        "y": labels.tolist(),
        "fold": folds.tolist(),
    }
    if "index" in block:
        C.same_folds(
            dict(zip(index["sample_id"], folds.tolist(), strict=True)),
            dict(zip(block["index"]["sample_id"], block["index"]["fold"], strict=True)),
            f"{NAME} {target} baselines",
        )
    rows = []
    for spec in BASELINES:
        x = frames[spec["notes"] or "raw"]
        t0 = time.perf_counter()
        prob, chosen = np.zeros(len(x)), []
        for f in range(K):
            tr, te = folds != f, folds == f
            model, c = fit_fold(
                spec, x[tr], labels[tr], frame["patient_id"].to_numpy()[tr], numeric, cats, seed
            )
            prob[te] = model.predict_proba(x[te])[:, 1]
            chosen.append(c)
        row = score_baseline(
            spec, labels, prob, folds, frame["patient_id"].to_numpy(), seed, n_boot
        )
        row.update(
            {
                "C_per_fold": chosen,
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "index": index,
                "folds_digest": C.fold_digest(index["sample_id"], folds),
            }
        )
        print(
            json.dumps({"target": target, **{k: row[k] for k in ("id", "auroc", "auroc_ci")}}),
            flush=True,
        )
        rows.append(row)
    return rows


def score_baseline(
    spec: dict[str, Any],
    y: np.ndarray,
    prob: np.ndarray,
    folds: np.ndarray,
    groups: np.ndarray,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    s = C.scores(
        y,
        prob,
        "binary",
        ["negative", "positive"],
        ["auroc", "auprc", "balanced_accuracy"],
        groups=groups,
        n_boot=n_boot,
        seed=seed,
    )
    per_fold = [
        roc_auc_score(y[folds == f], prob[folds == f]) if len(set(y[folds == f])) == 2 else None
        for f in range(K)
    ]
    ok = [v for v in per_fold if v is not None]
    return {
        "id": spec["id"],
        "label": spec["label"],
        "notes": spec["notes"],
        "record": spec["record"],
        "compare_with": spec["deep"],
        "n": len(y),
        **s,
        "per_fold": {
            "auroc_mean": float(np.mean(ok)),
            "auroc_std": float(np.std(ok, ddof=1)),
            "auroc_folds": per_fold,
        },
        "oof_prob": C.rounded(prob),
    }


# -- derived: nested selection, comparisons, summary -------------------------------------------
def nested(block: dict[str, Any], notes: str, seed: int, n_boot: int) -> dict[str, Any] | None:
    """Per outer fold, the fusion with the best inner-validation AUROC predicts that fold."""
    runs = {
        r["fusion"]: r
        for r in block["runs"]
        if r["fusion"] and r["notes"] == notes and r.get("oof_prob") and r.get("val_auroc_folds")
    }
    if "index" not in block or set(runs) != set(FUSIONS):
        return None
    idx = block["index"]
    folds, y = np.asarray(idx["fold"]), np.asarray(idx["y"])
    prob, picks = np.zeros(len(y)), []
    for f in range(K):
        best = max(
            FUSIONS, key=lambda name: runs[name]["val_auroc_folds"][f] or -1.0
        )  # ties: list order
        prob[folds == f] = np.asarray(runs[best]["oof_prob"])[folds == f]
        picks.append(
            {
                "fold": f,
                "fusion": best,
                "val_auroc": {n: runs[n]["val_auroc_folds"][f] for n in FUSIONS},
            }
        )
    s = C.scores(
        y,
        prob,
        "binary",
        ["negative", "positive"],
        ["auroc", "auprc", "balanced_accuracy"],
        groups=idx["patient_id"],
        n_boot=n_boot,
        seed=seed,
    )
    return {"notes": notes, "picks": picks, **s, "oof_prob": C.rounded(prob)}


def comparisons(block: dict[str, Any], seed: int, n_boot: int) -> list[dict[str, Any]]:
    """Paired patient-grouped bootstrap: deep arm minus its classical counterpart."""
    if "index" not in block:
        return []
    deep = {r["id"]: r for r in block["runs"] if r.get("oof_prob")}
    deep |= {f"nested:{k}": v for k, v in (block.get("nested") or {}).items() if v}
    idx, out = block["index"], []
    for b in block.get("baselines", []):
        d = deep.get(b["compare_with"])
        if d is None:
            continue
        diff = C.delta(
            idx["y"],
            d["oof_prob"],
            b["oof_prob"],
            "binary",
            ["negative", "positive"],
            groups=idx["patient_id"],
            n_boot=n_boot,
            seed=seed,
        )
        out.append(
            {
                "deep": b["compare_with"],
                "baseline": b["id"],
                "deep_auroc": d["auroc"],
                "baseline_auroc": b["auroc"],
                **diff,
            }
        )
    return out


def target_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["id"]: r for r in runs}
    out: dict[str, Any] = {}
    groups = {
        "best_single": [r for r in runs if r["fusion"] is None and r["notes"] in (None, "raw")],
        "best_fusion_raw_notes": [r for r in runs if r["fusion"] and r["notes"] == "raw"],
        "best_fusion_masked_notes": [r for r in runs if r["fusion"] and r["notes"] == "masked"],
    }
    for key, rows in groups.items():
        if rows:
            best = max(rows, key=lambda r: r["auroc"] or 0)
            out[key] = {"id": best["id"], "auroc": best["auroc"], "auroc_ci": best["auroc_ci"]}
    if "text_raw" in by and "text_masked" in by:
        out["text_raw_minus_masked_auroc"] = by["text_raw"]["auroc"] - by["text_masked"]["auroc"]
    return out


def derive(result: dict[str, Any]) -> None:
    """Recompute what follows from the stored rows (after a run or a merge)."""
    seed, n_boot = result["seed"], result["recipe"]["bootstrap"]
    for block in result["targets"].values():
        block["summary"] = target_summary(block["runs"])
        block["nested"] = {n: nested(block, n, seed, n_boot) for n in ("raw", "masked")}
        block["comparisons"] = comparisons(block, seed, n_boot)


# -- markdown ----------------------------------------------------------------------------------
_f = C.num
_signed = C.signed


def _cell(row: dict[str, Any] | None) -> str:
    return "n/a" if not row else C.with_ci(row["auroc"], row.get("auroc_ci"))


def headline(target: str, block: dict[str, Any]) -> list[str]:
    """The numbers to quote for one target, with what a reviewer needs beside them."""
    nest, sm = block.get("nested") or {}, block.get("summary", {})
    base = {b["id"]: b for b in block.get("baselines", [])}
    comp = {(c["deep"], c["baseline"]): c for c in block.get("comparisons", [])}
    lines = [f"**{target}**:", ""]
    for notes in ("raw", "masked"):
        n = nest.get(notes)
        b = base.get(f"tfidf_record_{notes}")
        picked = sm.get(f"best_fusion_{notes}_notes")
        text = (
            f"- {notes} notes: fusion chosen on inner validation **{_cell(n)}**"
            if n
            else f"- {notes} notes: nested selection not available (fusion runs without inner-validation scores)"
        )
        if n:
            text += f" (picks per fold: {', '.join(p['fusion'] for p in n['picks'])})"
        if picked:
            text += (
                f"; best of six picked on the reported folds ({picked['id'].split('_')[0]}, optimistic): "
                f"{_cell(picked)}"
            )
        if b:
            text += f"; classical TF-IDF + record logistic regression {_cell(b)}"
            text += f": {C.verdict(comp.get((f'nested:{notes}', b['id'])), 'nested fusion', 'classical')}"
        lines.append(text + ".")
    chk = block["data"]["confounder_checks"]
    if target == "finding":
        lines.append(
            f'- Date confound: the flag "dated 2020" alone reaches AUROC {_f(chk["auroc_dated_2020"])}.'
        )
    return [*lines, ""]


def _summary_line(target: str, block: dict[str, Any]) -> str:
    by = {r["id"]: r for r in block["runs"]}
    sm = block.get("summary", {})
    parts = [
        f"{label}: {_cell(by.get(i))}"
        for i, label in (
            ("image", "image"),
            ("text_raw", "text (raw)"),
            ("text_masked", "text (masked)"),
            ("tabular", "tabular"),
        )
    ]
    for key, label in (
        ("best_fusion_raw_notes", "best fusion, raw notes"),
        ("best_fusion_masked_notes", "best fusion, masked notes"),
    ):
        if key in sm:
            parts.append(
                f"{label} ({sm[key]['id'].split('_')[0]}, picked on these folds): {_cell(by.get(sm[key]['id']))}"
            )
    return f"- **{target}**: " + "; ".join(parts) + "."


def protocol(result: dict[str, Any]) -> list[str]:
    r = result["recipe"]
    return [
        "## Protocol",
        "",
        "- Data: built-in dataset `covid_cxr` (621 X-ray rows of the COVID-19 image data collection, fork "
        "hida6/covid-chestxray-dataset @ 584034a; metadata.csv sha256-verified, every image decoded and checked "
        "against the recorded digest). Patient ids that share an image are merged (the merged ids of each target "
        "are in the JSON, `targets.<t>.data`).",
        '- Targets: **finding** = COVID-19 (incl. "COVID-19, ARDS") vs every other finding (78 `todo` rows '
        "excluded); **survival** = died (`survival == N`, positive class) vs survived (`Y`), rows with empty or "
        "`?` survival excluded.",
        f"- `api.cross_validate(config, k={K})`: patient-grouped, label-stratified folds (seed {result['seed']}; "
        "identical folds for every run of a target, classical ones included, and no patient in two folds: all "
        f"asserted); inside each training part a patient-grouped {int(r['val_fraction'] * 100)}% inner validation "
        "split picks the epoch (val AUROC). Processors (image normalisation, tabular imputation / indicators / "
        "scaling) are fitted on each fold's training rows.",
        "- **Nested fusion selection**: for each outer fold, the fusion (of six) with the highest AUROC on that "
        "fold's inner validation split predicts the fold's test rows; the pooled AUROC of these predictions is "
        'the headline, as no choice was made on the reported folds. "Best of six" rows are picked on the '
        "reported folds and are optimistic.",
        f"- AUROC: pooled out-of-fold predictions, 95% CI from {r['bootstrap']} patient-grouped bootstrap "
        "resamples; per-fold AUROC mean +/- std (ddof 1); deep vs classical: paired patient-grouped bootstrap of "
        "the AUROC difference on the same rows.",
        f"- Deep encoders: image `{r['encoders']['image']}` on {r['image_size']}x{r['image_size']} grayscale "
        f"(augment {r['image_augment']}); note `{r['encoders']['note']}` on the frozen all-MiniLM-L6-v2 sentence "
        f"embedding; record `{r['encoders']['record']}` (age, temperature, pO2_saturation, leukocyte / neutrophil "
        "/ lymphocyte counts, offset; sex and view categorical; median imputation + missing indicators). Fusion "
        f"runs: modality dropout {r['modality_dropout']}. Training: {r['train']}.",
        "- Classical baselines (same folds, fitted on the whole training part): TF-IDF of word 1-2 grams "
        "(min_df 2, sublinear tf; an absent note is the empty text) + class-balanced logistic regression; the "
        "record fields (median imputation + missing indicators + scaling, one-hot sex / view) + logistic "
        "regression, or + gradient boosting (HistGradientBoosting, lr 0.05, 200 iterations, balanced); one "
        f"logistic regression on TF-IDF + record features. C in {BASELINE_C} picked by patient-grouped 3-fold "
        "inner CV (AUROC) on each training part only. No image baseline.",
        "- Masked notes: the dataset's `mask_notes=True` replaces these terms by `[MASK]` (case-insensitive, word "
        "boundaries): " + "; ".join(f"*{k}*: {', '.join(v)}" for k, v in MASK_TERMS.items()) + ". "
        "`masked+numbers` also masks every number (ages, dates, doses).",
        "",
    ]


def runs_table(block: dict[str, Any]) -> list[str]:
    head = [
        "run",
        "modalities",
        "notes",
        "pooled AUROC [95% CI]",
        "per-fold AUROC mean +/- std",
        "AUPRC",
        "balanced acc.",
        "best epochs",
        "wall",
    ]
    body = [
        [
            r["label"],
            "+".join(r["modalities"]),
            r["notes"] or "-",
            _cell(r),
            f"{_f(r['per_fold']['auroc_mean'])} +/- {_f(r['per_fold']['auroc_std'])}",
            _f(r["auprc"]),
            _f(r["balanced_accuracy"]),
            r["best_epochs"],
            f"{r['wall_seconds'] / 60:.1f} min",
        ]
        for r in block["runs"]
    ]
    for notes, n in (block.get("nested") or {}).items():
        if n:
            body.append(
                [
                    f"**fusion picked per fold on inner validation, {notes} notes**",
                    "image+note+record",
                    notes,
                    f"**{_cell(n)}**",
                    "-",
                    _f(n["auprc"]),
                    _f(n["balanced_accuracy"]),
                    "-",
                    "-",
                ]
            )
    return C.table(head, body)


def baseline_tables(block: dict[str, Any]) -> list[str]:
    if not block.get("baselines"):
        return []
    head = [
        "classical baseline",
        "pooled AUROC [95% CI]",
        "per-fold AUROC mean +/- std",
        "AUPRC",
        "balanced acc.",
        "C per fold",
        "wall",
    ]
    body = [
        [
            b["label"],
            _cell(b),
            f"{_f(b['per_fold']['auroc_mean'])} +/- {_f(b['per_fold']['auroc_std'])}",
            _f(b["auprc"]),
            _f(b["balanced_accuracy"]),
            b["C_per_fold"],
            f"{b['wall_seconds']:.0f} s",
        ]
        for b in block["baselines"]
    ]
    lines = ["", *C.table(head, body), ""]
    comp = block.get("comparisons") or []
    if comp:
        lines += [
            "Deep minus classical AUROC (same rows, paired patient-grouped bootstrap 95% CI):",
            "",
        ]
        lines += C.table(
            ["deep arm", "classical arm", "deep AUROC", "classical AUROC", "verdict"],
            [
                [
                    c["deep"],
                    c["baseline"],
                    _f(c["deep_auroc"]),
                    _f(c["baseline_auroc"]),
                    C.verdict(c),
                ]
                for c in comp
            ],
        )
        lines.append("")
    return lines


def ablation_table(target: str, block: dict[str, Any]) -> list[str]:
    abl = [run for run in block["runs"] if run.get("ablation")]
    if not abl:
        return []
    body = []
    for run in abl:
        cells = []
        for m in ALL:
            a = run["ablation"].get(m)
            cells.append(
                "-"
                if a is None
                else f"{_f(a['auroc'])} ({_signed(a.get('delta_auroc'))} "
                f"[{_signed(a.get('delta_low'))}, {_signed(a.get('delta_high'))}])"
            )
        body.append([run["label"], _f(run["auroc"]), *cells])
    return [
        "",
        f"AUROC ({target}) when one modality is removed at test time (the model sees it as absent); delta "
        "= AUROC without it minus AUROC with all modalities, paired patient-grouped bootstrap 95% CI:",
        "",
        *C.table(["run", "all", "without image", "without note", "without record"], body),
    ]


def target_section(target: str, block: dict[str, Any]) -> list[str]:
    d = block["data"]
    pcs = ", ".join(f"{k} {v}" for k, v in d["per_class"].items())
    checks = d["confounder_checks"]
    lines = [
        f"## Target: {target}",
        "",
        f"{d['rows']} rows, {d['patients']} patients ({pcs}); excluded: {d['excluded']}; rows per patient "
        f"median {d['rows_per_patient']['median']:.0f}, max {d['rows_per_patient']['max']}; notes absent in "
        f"{d['notes_absent']} rows.",
        "",
        *runs_table(block),
        *baseline_tables(block),
        *ablation_table(target, block),
        "",
        f"Confounder checks ({target}, no model: AUROC of one metadata flag as the score for "
        f"{list(d['per_class'])[1]}; 0.5 = no information, below 0.5 = the flag points the other way): dated "
        f"2020 {_f(checks['auroc_dated_2020'])}, note present {_f(checks['auroc_note_present'])}, offset filled "
        f"in {_f(checks['auroc_offset_present'])}. Per class: "
        + "; ".join(
            f"{c}: {v['rows']} rows / {v['patients']} patients, {v['dated_2020']} dated 2020, "
            f"{v['dated_before_2020']} before 2020, {v['no_year']} undated, {v['note_absent']} without note"
            for c, v in d["by_class"].items()
        )
        + ".",
        "",
    ]
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    env = result.get("env", {})
    rows = [r for b in result["targets"].values() for r in [*b["runs"], *b.get("baselines", [])]]
    lines = [
        "# COVID-19 chest X-ray + clinical notes + clinical fields (Cohen et al.): patient-grouped 5-fold CV",
        "",
        "## Headline (pooled out-of-fold AUROC [95% CI])",
        "",
        *[x for t, b in result["targets"].items() for x in headline(t, b)],
        "## All deep arms",
        "",
        *[_summary_line(t, b) for t, b in result["targets"].items()],
        "",
        *protocol(result),
        *[x for t, b in result["targets"].items() for x in target_section(t, b)],
        *caveats(result),
        *C.reproduce_section(rows, env),
        "Machine-readable results: `benchmarks/results/covid_cxr.json` (layout: see `RESULT_LAYOUT` in "
        "`benchmarks/covid_cxr.py`).",
        "",
    ]
    return "\n".join(lines)


def _ablation_notes(target: str, block: dict[str, Any]) -> list[str]:
    """What the test-time removal table says, in words (computed from the numbers)."""
    runs = [r for r in block["runs"] if r.get("ablation")]
    if not runs:
        return []
    lines = []
    image = [r["ablation"]["image"]["delta_auroc"] for r in runs if "image" in r["ablation"]]
    solo = next((r for r in block["runs"] if r["id"] == "image"), None)
    if image:
        lines.append(
            f"- **What the image adds ({target}).** Removing the image at test time changes the fused AUROC by "
            f"{min(image):+.3f} to {max(image):+.3f} across the {len(image)} fusion runs"
            + (f", and the image-only model reaches {_f(solo['auroc'])}" if solo else "")
            + ": the one-layer CNN at this resolution extracts little"
            + (
                ", not even the source cues a stronger image model would likely exploit. A low image score here "
                "is a limit of the model, not evidence that the images are free of source / date confounding."
                if target == "finding"
                else "."
            )
        )
    for m in ("note", "record"):
        rows = [r["ablation"][m] for r in runs if m in r["ablation"]]
        better = [a for a in rows if (a.get("delta_auroc") or 0) > 0]
        sure = [a for a in better if (a.get("delta_low") or 0) > 0]
        if better and len(better) * 2 > len(rows):
            lines.append(
                f"- **The {m} hurts ({target}).** Removing the {m} at test time *raises* the AUROC in {len(better)} "
                f"of {len(rows)} fusion runs ({len(sure)} with a CI above 0): on this set the {m} adds noise "
                "that the fused model over-fits."
            )
    return lines


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _text_leaks(targets: dict[str, Any]) -> list[str]:
    """Per target: text-only AUROC on raw, masked and masked+numbers notes."""
    leaks = []
    for target, block in targets.items():
        by = {r["id"]: r for r in block["runs"]}
        raw, masked, num = by.get("text_raw"), by.get("text_masked"), by.get("text_masked_numbers")
        if raw and masked:
            leaks.append(
                f"{target}: text-only AUROC {_f(raw['auroc'])} on raw notes, {_f(masked['auroc'])} with "
                f"the diagnosis/outcome words masked"
                + (f", {_f(num['auroc'])} with numbers masked too" if num else "")
            )
    return leaks


def caveats(result: dict[str, Any]) -> list[str]:
    t, r = result["targets"], result["recipe"]
    out = ["## Caveats (read before quoting any number)", ""]
    leaks = _text_leaks(t)
    out += [
        '- **Label leakage through notes.** Many notes name the diagnosis ("COVID-19 positive", "SARS in a '
        '74-year-old man") or the outcome ("the patient died"). '
        + ("; ".join(leaks) + ". " if leaks else "")
        + "Masking removes the explicit words only: dates, places, case-report phrasing and whether a note "
        "exists at all still differ by class, so masked-note numbers are not clean either. Treat every "
        "text and fusion number as an upper bound that a model reading notes written before the diagnosis "
        "would not reach.",
    ]
    f = t.get("finding")
    if f:
        chk = f["data"]["confounder_checks"]
        out += [
            f"- **Source / date confounding (COVID-19 vs other).** COVID-19 rows are mostly 2020 case reports; "
            f"the other findings are mostly older teaching cases (SARS 2003, radiopaedia / textbook cases). The "
            f'flag "dated 2020" alone reaches AUROC {_f(chk["auroc_dated_2020"])}. Images carry the same '
            "confound (scanner, processing, annotations, crop and resolution of the publication figure), so "
            "an image-only AUROC here measures *source* as much as *disease*; it is not evidence of COVID-19 "
            "detection from radiographs. Masking words cannot remove this.",
        ]
    for target, block in t.items():
        out += _ablation_notes(target, block)
    s = t.get("survival")
    if s:
        d = s["data"]
        died = d["by_class"].get("died", {})
        out += [
            f"- **Small survival set.** {d['rows']} rows from {d['patients']} patients, only "
            f"{died.get('rows', '?')} rows / {died.get('patients', '?')} patients who died: each test fold holds "
            "about four patients who died, so per-fold AUROCs swing widely and the pooled CIs are wide. "
            "Survival was recorded for a third of the rows, mostly COVID-19 case reports, in a way that is not "
            "a cohort (case reports favour remarkable courses).",
        ]
    out += [
        "- **Rows per patient.** Patients contribute 1-8 films (follow-up series). Folds are patient-grouped and "
        "the CIs resample patients, but the pooled AUROC still weights patients by their number of films. "
        "Ids that share a film are merged (the dataset's list); the same case published twice with different "
        "figures can remain under two ids.",
        '- **Choices made on the reported folds.** The "best of six" fusion rows pick the winner on the '
        "folds they are reported on (optimistic); the headline uses the nested selection instead. The recipe "
        "(encoders, epochs, masking terms) was set before these runs and not tuned on them.",
        "- **Classical baselines** see the same notes and record fields but no image; they are fitted on the "
        "whole training part (the deep arms hold out an inner validation split for epoch selection).",
        f"- **Small, CPU-budget models.** The image encoder is the one-layer baseline CNN on "
        f"{r['image_size']}x{r['image_size']} images (a ResNet-18 costs ~10x more per image and did not fit "
        "the 30-minute, 2-core budget for ~170 fold trainings); one seed; no hyper-parameter search. "
        "Differences between fusion methods are mostly inside the CIs: do not rank them on this data.",
        "- **Licences.** Images carry per-row licences (the `license` column; 225 rows empty), metadata "
        "CC BY-NC-SA 4.0: research use only.",
        "",
    ]
    return out


# -- main --------------------------------------------------------------------------------------
def expand_arms(arms: list[str]) -> tuple[list[str], bool]:
    """Deep run ids and whether the classical baselines run."""
    ids = [
        i
        for a in arms
        for i in ARM_GROUPS.get(a, [a] if a in SINGLES or a.endswith(("_raw", "_masked")) else [])
    ]
    return list(dict.fromkeys(ids)), "baselines" in arms


def load_previous(out: Path) -> dict[str, Any]:
    """The existing JSON; rows of the older layout get the provenance of the commit that wrote them."""
    old = C.read_json(out.with_suffix(".json")) or {}
    legacy = C.legacy_provenance(out.with_suffix(".json"), old.get("command"))
    for block in old.get("targets", {}).values():
        for r in [*block.get("runs", []), *block.get("baselines", [])]:
            r.setdefault("provenance", legacy)
    for key in ("command", "started", "finished", "wall_seconds", "protocol"):
        old.pop(key, None)  # older layout: now per row / per invocation
    return old


def run_deep(
    ids: list[str], args: argparse.Namespace, result: dict[str, Any], data_dir: Path, work: Path
) -> None:
    specs = [s for s in run_specs() if s["id"] in ids]
    tasks = [(t, s) for t in args.targets for s in specs]
    # Largest first (image runs of the bigger target) so the two workers finish together.
    tasks.sort(key=lambda ts: -(("image" in ts[1]["modalities"]) * 4 + (ts[0] == "finding") * 2))
    prov = C.provenance()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=ctx, initializer=_init_worker
    ) as pool:
        futures = {
            pool.submit(run_one, s, t, result["recipe"], args.seed, data_dir, work): (t, s)
            for t, s in tasks
        }
        for fut in as_completed(futures):
            target, spec = futures[fut]
            row = {**fut.result(), "provenance": prov}
            block = result["targets"][target]
            attach(block, row, f"{NAME} {target} {spec['id']}")
            block["runs"] = C.merge_rows(block["runs"], [row], lambda r: r["id"])
            print(
                json.dumps(
                    {
                        "target": target,
                        **{k: row[k] for k in ("id", "auroc", "auroc_ci", "wall_seconds")},
                    }
                ),
                flush=True,
            )
    order = [s["id"] for s in run_specs()]
    for block in result["targets"].values():
        block["runs"].sort(key=lambda r: order.index(r["id"]))


def _init_worker() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    install_embedding_memo()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME, arms=ARMS, default_arms=DEFAULT_ARMS)
    ap.add_argument("--targets", nargs="+", default=["finding", "survival"], choices=list(CLASSES))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    old = C.previous_results(args, out, load_previous, to_markdown, derive)
    if old is None:
        return
    data_dir = C.data_dir(args)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        **old,
        "benchmark": NAME,
        "seed": args.seed,
        "k": K,
        "recipe": recipe_of(args),
        "mask_terms": mask_terms(),
        "result_layout": RESULT_LAYOUT,
        "env": C.environment(workers=args.jobs, threads_per_worker=1),
    }
    result.setdefault("targets", {})
    for target in args.targets:
        block = result["targets"].setdefault(target, {"runs": []})
        block["data"] = data_facts(target, data_dir, work)
    ids, baselines = expand_arms(args.arms)
    if ids:
        run_deep(ids, args, result, data_dir, work)
    if baselines:
        prov = C.provenance()
        for target in args.targets:
            block = result["targets"][target]
            rows = run_baselines(target, block, data_dir, work, args.seed, args.bootstrap)
            for row in rows:
                row["provenance"] = prov
                attach(block, row, f"{NAME} {target} {row['id']}")
            block["baselines"] = C.merge_rows(block.get("baselines", []), rows, lambda r: r["id"])
    derive(result)
    C.finish(out, result, old, args.arms, t0, to_markdown)
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
