"""Survival: deep Cox model vs scikit-survival's CoxPH, random survival forest and gradient
boosting on the same patient-grouped folds of five clinical tables; a multimodal mortality
result on COVID-19 X-ray + notes + records; and the GBSG2 hormonal-therapy what-if.

Arms:

* ``deep``: medmodal, ``model.survival.method: cox`` (Efron partial likelihood), an MLP on the
  record, best epoch on a patient-grouped 20 % inner validation split (Harrell's C), through
  ``run.cross_validate_loaded`` (the public CV path); ``deep_lh``: the same with the
  logistic-hazard (discrete-time) head (not run by default);
* ``classical``: ``CoxPHSurvivalAnalysis`` (Efron, small ridge), ``RandomSurvivalForest`` and
  ``GradientBoostingSurvivalAnalysis`` fitted on each fold's whole training part (deep's training
  + validation rows; median imputation, one-hot categories, standardisation fitted there) and
  scored on the same test fold (asserted: the same fold assignment);
* ``covid_cxr``: the built-in ``covid_cxr`` (X-ray + note + record) with ``target=survival``:
  died vs survived (no follow-up time exists in the data: see the Markdown), concat fusion,
  notes with outcome words masked, patient-grouped 5-fold CV;
* ``whatif``: a deep Cox model with ``horTh`` as an input on GBSG2, ``api.whatif`` on all rows;
  compared with the hazard ratio of ``horTh`` in a CoxPH model on the same data.

Metric: Harrell's C per test fold, averaged over the folds (risk scores of different fold
models are not on one scale, so they are not pooled), with a patient-grouped bootstrap 95 % CI
(the same patient draws in every fold and repeat, and for every model: paired deltas). Uno's C,
the mean time-dependent AUC at the fold's event-time quartiles and the integrated Brier score
are averaged over the folds too (no CI).

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_cpu.lock python benchmarks/survival.py
    ... python benchmarks/survival.py --arms whatif --merge      # refresh one arm

Writes benchmarks/results/survival.json and .md. Budget: about 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common as C
import numpy as np
import pandas as pd

from medmodal.config import load_config
from medmodal.data.splits import patient_split
from medmodal.evaluate.bootstrap import _group_index, resample_weights
from medmodal.evaluate.survival import harrell_weighted, survival_metrics
from medmodal.run import cross_validate_loaded, load_data, start_run, train_and_evaluate
from medmodal.run.data import LoadedData, fold_splits, strata
from medmodal.whatif import rmst

NAME = "survival"
K = 5
DATASETS = ["whas500", "gbsg2", "veterans", "aids", "flchain"]
REPEATS = {"whas500": 3, "gbsg2": 3, "veterans": 3, "aids": 1, "flchain": 1}
ARMS = ["deep", "deep_ensemble", "deep_lh", "classical", "covid_cxr", "whatif"]
DEFAULT_ARMS = ["deep", "deep_ensemble", "classical", "covid_cxr", "whatif"]
MEMBERS = 5
CLASSICAL = ["coxph", "rsf", "gbsa"]
DEEP = ("deep", "deep_ensemble", "deep_lh")
FOLD_KEYS = ("c_index", "c_index_uno", "mean_auc", "ibs")


def deep_config(name: str, n: int, seed: int, work: Path, method: str) -> dict[str, Any]:
    """The deep recipe, the same for every data set: full-batch Cox (every training row in one
    batch up to 1024, so each risk set is the whole training part), one hidden layer of 32."""
    return {
        "name": f"{name}_{method}_seed{seed}",
        "seed": seed,
        "output_dir": str(work / name / f"{method}_seed{seed}"),
        "data": {"dataset": name, "val_fraction": 0.2},
        "model": {
            "encoders": {"record": {"name": "mlp", "hidden": [32], "dropout": 0.1}},
            "survival": {"method": method, "bins": 20},
        },
        "train": {
            "epochs": 300,
            "batch_size": max(1, min(n, 1024)),
            "lr": 1e-2,
            "weight_decay": 1e-3,
            "optimizer": "adamw",
            "scheduler": "cosine",
            "early_stopping": 50,
            "threads": 1,
        },
        "evaluate": {"bootstrap": 0, "report": False, "ablation": False},
    }


def run_deep(loaded: LoadedData, name: str, seed: int, work: Path, method: str) -> pd.DataFrame:
    """One patient-grouped 5-fold CV of the deep model: out-of-fold risk + curves + fold."""
    cfg = deep_config(name, len(loaded.dataset), seed, work, method)
    ctx = start_run(cfg)
    cv = cross_validate_loaded(ctx, loaded.with_config(ctx.cfg), K)
    return cv.predictions


def run_ensemble(
    loaded: LoadedData, name: str, folds: np.ndarray, seed: int, work: Path, members: int
) -> np.ndarray:
    """Out-of-fold predictions of a deep ensemble on ``folds``: in each fold, ``members`` Cox
    models, each with its own initialisation and its own patient-grouped 20 % inner validation
    split (``run.train_and_evaluate`` on explicit splits); log-risks and curves averaged."""
    ds, strat = loaded.dataset, strata(loaded)
    grid = len(loaded.label_map.times or [])
    oof = np.zeros((len(ds), 1 + grid))
    for f in range(K):
        rest = np.flatnonzero(folds != f)
        for m in range(members):
            member_seed = 1000 * seed + 10 * m + f
            cfg = load_config(deep_config(name, len(ds), member_seed, work, "cox"))
            splits = np.full(len(ds), "test", dtype=object)
            splits[rest] = patient_split([ds.patients[i] for i in rest], strat[rest], 0.2, 0.0,
                                         seed=member_seed)  # fmt: skip
            run_dir = work / name / f"ensemble_seed{seed}" / f"fold_{f}_member_{m}"
            res = train_and_evaluate(loaded.with_config(cfg), splits.astype(str), run_dir)
            assert res.test_probs is not None
            oof[folds == f] += res.test_probs / members
    return oof


# -- classical models ---------------------------------------------------------------------------
def features(loaded: LoadedData) -> tuple[pd.DataFrame, list[str]]:
    """The record columns of the loaded rows (numeric as floats, categories one-hot)."""
    spec = loaded.schema.modalities["record"]
    ids = [str(v) for v in loaded.frame[loaded.schema.id_column]]
    frame = loaded.frame.set_index(pd.Index(ids)).loc[loaded.dataset.ids]
    num = [c for c in spec.input_columns() if c not in spec.categorical]
    X = frame[num].apply(pd.to_numeric, errors="coerce")
    cats = pd.get_dummies(frame[spec.categorical].astype(str), dtype=float, drop_first=True)
    return pd.concat([X, cats], axis=1).reset_index(drop=True), num


def classical_models(seed: int) -> dict[str, Any]:
    from sksurv.ensemble import GradientBoostingSurvivalAnalysis, RandomSurvivalForest
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    return {
        "coxph": CoxPHSurvivalAnalysis(alpha=1e-2, ties="efron"),
        "rsf": RandomSurvivalForest(
            n_estimators=100, min_samples_leaf=15, max_features="sqrt", n_jobs=1,
            random_state=seed, low_memory=False,
        ),
        "gbsa": GradientBoostingSurvivalAnalysis(
            n_estimators=100, max_depth=3, learning_rate=0.1, random_state=seed
        ),
    }  # fmt: skip


def fit_predict(
    model: Any, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """Fit on ``train`` rows (imputation / scaling fitted there), (N_test, 1 + T) predictions."""
    from sksurv.util import Surv

    med = X[train].median()
    Z = X.fillna(med)
    mu, sd = Z[train].mean(), Z[train].std().replace(0, 1)
    Z = ((Z - mu) / sd).to_numpy()
    model.fit(Z[train], Surv.from_arrays(event=y[train, 1] > 0, time=y[train, 0]))
    risk = model.predict(Z[~train])
    fns = model.predict_survival_function(Z[~train])
    lo, hi = fns[0].domain
    curves = np.stack([fn(np.clip(grid, lo, hi)) for fn in fns])
    curves[:, grid < lo] = 1.0
    return np.column_stack([risk, curves])


def run_classical(loaded: LoadedData, folds: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Out-of-fold predictions of each classical model on the deep arm's folds."""
    X, _ = features(loaded)
    y = np.asarray(loaded.dataset.labels, dtype=float)
    grid = np.asarray(loaded.label_map.times)
    out = {m: np.zeros((len(y), 1 + len(grid))) for m in CLASSICAL}
    for f in range(K):
        test = folds == f
        for m, model in classical_models(seed).items():
            out[m][test] = fit_predict(model, X, y, ~test, grid)
    return out


# -- scoring -----------------------------------------------------------------------------------
def fold_means(y: np.ndarray, folds: np.ndarray, pred: np.ndarray, grid: np.ndarray) -> dict:
    """Each metric of ``FOLD_KEYS`` per test fold (survival_metrics), and its mean."""
    per: dict[str, list[float | None]] = {k: [] for k in FOLD_KEYS}
    for f in range(K):
        m = survival_metrics(y[folds == f], pred[folds == f], grid)
        for k in FOLD_KEYS:
            per[k].append(m.get(k))
    out: dict[str, Any] = {"folds": per}
    for k, vals in per.items():
        ok = [v for v in vals if v is not None]
        out[k] = float(np.mean(ok)) if ok else None
    return out


def boot_c(y: np.ndarray, repeats: list[dict[str, Any]], arm: str, w: np.ndarray) -> np.ndarray:
    """Fold-averaged Harrell's C of ``arm`` over every repeat and fold, per weight row."""
    event = y[:, 1] > 0
    vals = []
    for rep in repeats:
        for f in range(K):
            idx = np.flatnonzero(rep["folds"] == f)
            risk = rep["preds"][arm][idx, 0]
            vals.append(harrell_weighted(y[idx, 0], event[idx], risk, w[:, idx]))
    return np.nanmean(np.stack(vals), axis=0)


def summarise(
    loaded: LoadedData, repeats: list[dict[str, Any]], n_boot: int, seed: int
) -> dict[str, Any]:
    """Per arm: fold-averaged metrics, Harrell's C CI; paired deltas of deep vs the others."""
    y = np.asarray(loaded.dataset.labels, dtype=float)
    grid = np.asarray(loaded.label_map.times)
    arms = [a for a in repeats[0]["preds"]]
    idx = _group_index(np.asarray(loaded.dataset.patients), len(y))
    w = resample_weights(np.random.default_rng(seed), len(y), n_boot, idx)
    boots = {a: boot_c(y, repeats, a, w) for a in arms}
    out: dict[str, Any] = {}
    for a in arms:
        reps = [fold_means(y, r["folds"], r["preds"][a], grid) for r in repeats]
        row = {k: float(np.mean([r[k] for r in reps if r[k] is not None])) for k in FOLD_KEYS}
        row["c_index_ci"] = np.quantile(boots[a], [0.025, 0.975]).tolist()
        row["c_index_repeats"] = [r["c_index"] for r in reps]
        row["c_index_folds"] = [r["folds"]["c_index"] for r in reps]
        out[a] = row
    out["deltas"] = {
        f"{d}-{b}": _delta(boots[d], out[d]["c_index"] - out[b]["c_index"], boots[b])
        for d in DEEP
        if d in arms
        for b in arms
        if b not in DEEP
    }
    return out


def _delta(a: np.ndarray, point: float, b: np.ndarray) -> dict[str, Any]:
    d = a - b
    low, high = np.quantile(d, [0.025, 0.975])
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    p = float(min(1.0, 2.0 * (tail + 1) / (d.size + 1)))
    return {"delta": float(point), "low": float(low), "high": float(high), "p_value": p}


# -- arms ----------------------------------------------------------------------------------------
def run_table(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Deep and classical arms on every repeat of one data set, scored together."""
    t0 = time.perf_counter()
    base = load_config(deep_config(name, 0, 0, work, "cox"))
    loaded = load_data(base, work / name / "load")
    repeats = []
    for r in range(REPEATS[name] if not args.quick else 1):
        seed = args.seed + r
        cfg = load_config(deep_config(name, len(loaded.dataset), seed, work, "cox"))
        folds = fold_splits(loaded.with_config(cfg), K)[0]
        preds: dict[str, np.ndarray] = {}
        for arm, method in (("deep", "cox"), ("deep_lh", "logistic_hazard")):
            if arm in args.arms:
                oof = run_deep(loaded, name, seed, work, method)
                C.same_folds(dict(zip(loaded.dataset.ids, folds.tolist(), strict=True)),
                             dict(zip(oof["sample_id"], oof["fold"].tolist(), strict=True)), name)  # fmt: skip
                cols = ["risk"] + [c for c in oof.columns if c.startswith("surv_")]
                preds[arm] = oof[cols].to_numpy(dtype=float)
        if "deep_ensemble" in args.arms:
            preds["deep_ensemble"] = run_ensemble(loaded, name, folds, seed, work, MEMBERS)
        if "classical" in args.arms:
            preds.update(run_classical(loaded, folds, seed))
        repeats.append({"seed": seed, "folds": folds, "preds": preds})
        print(f"{name} repeat {r}: {time.perf_counter() - t0:.0f} s", flush=True)
    y = np.asarray(loaded.dataset.labels)
    return {
        "dataset": name,
        "n": len(y),
        "events": int(y[:, 1].sum()),
        "features": features(loaded)[0].shape[1],
        "repeats": len(repeats),
        "seeds": [r["seed"] for r in repeats],
        "arms": summarise(loaded, repeats, args.bootstrap, args.seed),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "provenance": C.provenance(),
    }


def run_covid(args: argparse.Namespace, work: Path, data_dir: Path) -> dict[str, Any]:
    """Died vs survived from X-ray + masked note + record (binary: no follow-up time)."""
    from medmodal import api

    t0 = time.perf_counter()
    cfg = {
        "name": "covid_cxr_died",
        "seed": args.seed,
        "output_dir": str(work / "covid_cxr"),
        "data": {
            "dataset": "covid_cxr",
            "data_dir": str(data_dir),
            "dataset_options": {"target": "survival", "image_size": 64, "mask_notes": True},
            "val_fraction": 0.15,
        },
        "model": {
            "encoders": {
                "image": {"name": "baseline_cnn", "filters": 16, "hidden": 64},
                "note": {"name": "embedding_mlp", "out_dim": 64, "dropout": 0.2},
                "record": {"name": "mlp"},
            },
            "fusion": {"name": "concat"},
            "modality_dropout": 0.1,
        },
        "train": {
            "epochs": 30, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4,
            "optimizer": "adamw", "class_weights": "balanced", "early_stopping": 8, "threads": 1,
        },
        "evaluate": {"bootstrap": args.bootstrap, "report": False, "ablation": True},
    }  # fmt: skip
    cv = api.cross_validate(cfg, k=K)
    p = cv.pooled
    return {
        "target": "died vs survived (binary; no follow-up time)",
        "n": p["n"],
        "patients": len(set(cv.predictions["patient_id"])),
        "died": int((cv.predictions["label"] == "died").sum()),
        "auroc": p["auroc"],
        "auroc_ci": [p["ci"]["auroc"]["low"], p["ci"]["auroc"]["high"]],
        "per_fold_auroc": cv.per_fold["auroc"],
        "ablation": p.get("ablation"),
        "missing_modalities": p.get("missing_modalities") or None,
        "recipe": cfg["model"] | {"train": cfg["train"]},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "provenance": C.provenance(),
    }


WHATIF_SEEDS = 5


def run_whatif(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """GBSG2: deep Cox models with horTh as an input (one per seed: other initialisation and
    validation rows), api.whatif on all rows; the first seed's outputs are kept. CoxPH's HR of
    horTh on the same rows is the reference."""
    from medmodal import api

    t0 = time.perf_counter()
    per_seed = []
    for seed in range(args.seed, args.seed + WHATIF_SEEDS):
        cfg = deep_config("gbsg2", 686, seed, work, "cox")
        cfg["output_dir"] = str(work / "whatif" / f"model_seed{seed}")
        cfg["data"]["test_fraction"] = 0.0
        run = api.fit(cfg, progress=False)
        manifest = run.run_dir / "data" / "manifest.csv"
        first = seed == args.seed
        res = api.whatif(run.checkpoint, manifest, treatment="horTh",
                         out_dir=work / "whatif" / "out" if first else None,
                         n_boot=args.bootstrap if first else 0, seed=seed)  # fmt: skip
        e = res.summary["effects"][0]
        per_seed.append({"seed": seed, "val_c_index": run.metrics["val"]["c_index"],
                         "hazard_ratio": e["hazard_ratio"], "mean_delta_rmst": e["mean_delta_rmst"]})  # fmt: skip
        if first:
            summary = res.summary
    loaded = load_data(load_config(cfg), work / "whatif" / "load")
    return {
        "whatif": summary,
        "seeds": per_seed,
        "coxph": cox_reference(loaded, summary["horizon"], args.seed),
        "outputs": sorted(p.name for p in (work / "whatif" / "out").iterdir()),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "provenance": C.provenance(),
    }


def cox_reference(loaded: LoadedData, horizon: float, seed: int) -> dict[str, Any]:
    """CoxPH on every row: hazard ratio of horTh yes vs no (bootstrap CI, 200 resamples), and
    its mean RMST difference to ``horizon`` from its curves with horTh set to yes / no."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    X, _ = features(loaded)
    y = np.asarray(loaded.dataset.labels, dtype=float)
    Z = X.fillna(X.median())
    mu, sd = Z.mean(), Z.std().replace(0, 1)
    col = "horTh_yes"

    def fit(idx: np.ndarray) -> Any:
        m = CoxPHSurvivalAnalysis(alpha=1e-4, ties="efron")
        return m.fit(((Z - mu) / sd).to_numpy()[idx], Surv.from_arrays(y[idx, 1] > 0, y[idx, 0]))

    j = list(Z.columns).index(col)
    model = fit(np.arange(len(y)))
    hr = float(np.exp(model.coef_[j] / sd[col]))
    rng = np.random.default_rng(seed)
    boots = [np.exp(fit(rng.integers(0, len(y), len(y))).coef_[j] / sd[col]) for _ in range(200)]
    grid = np.asarray(loaded.label_map.times)
    area = {}
    for v in (0.0, 1.0):
        Zv = ((Z.assign(**{col: v}) - mu) / sd).to_numpy()
        fns = model.predict_survival_function(Zv)
        lo, hi = fns[0].domain
        curves = np.stack([np.where(grid < lo, 1.0, fn(np.clip(grid, lo, hi))) for fn in fns])
        area[v] = rmst(curves, grid, horizon).mean()
    return {"hr": hr, "hr_ci": np.quantile(boots, [0.025, 0.975]).tolist(), "n_boot": 200,
            "mean_delta_rmst": float(area[1.0] - area[0.0]),
            "covariates": list(Z.columns), "events": int(y[:, 1].sum())}  # fmt: skip


# -- Markdown ------------------------------------------------------------------------------------
LABEL = {"deep": "medmodal deep Cox (MLP)", "deep_lh": "medmodal logistic hazard (MLP)",
         "deep_ensemble": f"medmodal deep Cox, ensemble of {MEMBERS}",
         "coxph": "CoxPH (sksurv)", "rsf": "random survival forest", "gbsa": "gradient boosting"}  # fmt: skip


def table_rows(row: dict[str, Any]) -> list[list[str]]:
    arms = {k: v for k, v in row["arms"].items() if k != "deltas"}
    out = []
    for a, v in arms.items():
        spread = ", ".join(C.num(x) for x in v["c_index_repeats"])
        out.append([LABEL.get(a, a), C.with_ci(v["c_index"], v["c_index_ci"]), spread,
                    C.num(v["c_index_uno"]), C.num(v["mean_auc"]), C.num(v["ibs"])])  # fmt: skip
    return out


def verdict_lines(row: dict[str, Any]) -> list[str]:
    """Per deep arm: against the best classical model and against CoxPH (paired deltas)."""
    arms = row["arms"]
    if "coxph" not in arms:
        return []
    best = max(CLASSICAL, key=lambda a: arms[a]["c_index"])
    out = []
    for d in (d for d in DEEP if d in arms):
        d_best, d_cox = arms["deltas"][f"{d}-{best}"], arms["deltas"][f"{d}-coxph"]
        at_or_above = arms[d]["c_index"] >= arms[best]["c_index"]
        out += [
            f"- {LABEL[d]} vs the best classical model ({LABEL[best]}): "
            f"{C.verdict(d_best, 'deep', best)}" + ("" if at_or_above else " (below it)"),
            f"- {LABEL[d]} vs CoxPH: {C.verdict(d_cox, 'deep', 'CoxPH')}",
        ]
    return out


def render(result: dict[str, Any]) -> str:
    rows = result.get("tables", [])
    lines = ["# Survival: deep Cox model vs classical survival models", "", *HEADER, ""]
    lines += tally(rows)
    for row in rows:
        lines += [f"## {row['dataset']}", "",
                  f"{row['n']} patients, {row['events']} events, {row['features']} features; "
                  f"{row['repeats']} x patient-grouped 5-fold CV (seeds {row['seeds']}).", ""]  # fmt: skip
        heads = ["model", "Harrell's C [95% CI]", "C per repeat", "Uno's C", "mean td-AUC", "IBS"]
        lines += C.table(heads, table_rows(row)) + [""] + verdict_lines(row) + [""]
    lines += covid_lines(result.get("covid_cxr")) + whatif_lines(result.get("whatif"))
    lines += runtime_lines(result)
    lines += C.reproduce_section([*rows, *(result.get(k) or {} for k in ("covid_cxr", "whatif"))],
                                 result.get("environment", {}))  # fmt: skip
    return "\n".join(lines)


HEADER = [
    "Harrell's C per test fold averaged over the folds (and repeats), patient-grouped bootstrap "
    "95 % CI (1000 resamples; the same patient draws for every model, so deltas are paired). "
    "Uno's C (truncated at the 90 % time quantile), the mean cumulative/dynamic AUC at each fold's "
    "event-time quartiles and the integrated Brier score (10-90 % time quantiles; lower is better) "
    "are fold averages without CI; the IPCW metrics estimate censoring on the test fold itself. "
    "Every model sees the same folds; the deep model trains on 80 % of each training part and "
    "picks its epoch on the other 20 % (validation Harrell's C), the classical models fit the "
    "whole training part with fixed settings (CoxPH ridge 0.01; RSF 100 trees, leaf 15; gradient "
    "boosting 100 trees of depth 3). The deep recipe is the same for all five tables: MLP with one "
    "hidden layer of 32, dropout 0.1, full batch (every training row, up to 1024, in one batch, so "
    "each Cox risk set is the whole training part), AdamW lr 0.01, weight decay 1e-3, cosine "
    "schedule, up to 300 epochs, patience 50. It was chosen among three recipes on one pilot "
    "repeat of veterans, gbsg2 and whas500 with other folds (seed 100; same data, so not a clean "
    "hold-out); the classical settings were not tuned. FLCHAIN's `chapter` (cause of death) is not an input: it "
    "is known only for those who died (with it every model scores C ~0.98).",
    "",
    "The ensemble arm averages, in each fold, five such deep models (each with its own "
    "initialisation and its own inner validation split; log-risks and curves averaged). It was "
    "added after the single-model results were seen (the single model lost to CoxPH beyond the "
    "CI on whas500 and veterans): a second look, not an arm planned in advance. Both are shown.",
]


def tally(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, counted for each deep arm."""
    lines = []
    for d in DEEP:
        done = [r for r in rows if {d, "coxph"} <= set(r["arms"])]
        if not done:
            continue
        above, below_cox = [], []
        for r in done:
            a = r["arms"]
            best = max(CLASSICAL, key=lambda m: a[m]["c_index"])
            if a[d]["c_index"] >= a[best]["c_index"]:
                above.append(r["dataset"])
            if a["deltas"][f"{d}-coxph"]["high"] < 0:
                below_cox.append(r["dataset"])
        lines += [
            f"- {LABEL[d]}: at or above the best classical model's C on {len(above)} of "
            f"{len(done)} tables ({', '.join(above) or 'none'}; target: at least 3 of 5); "
            "below CoxPH beyond the paired 95 % CI on "
            + (", ".join(f"**{b}**" for b in below_cox) if below_cox else "no table")
            + " (target: none).",
        ]
    return ["## Summary", "", *lines, ""] if lines else []


def covid_lines(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    abl = c.get("ablation") or {}
    removed = "; ".join(
        f"without {m}: {C.num(v.get('auroc'))} ({C.signed(v.get('delta_auroc'))})"
        for m, v in abl.items()
    )
    return [
        "## Multimodal: COVID-19 X-ray + notes + records (covid_cxr)",
        "",
        "What the data allow: the collection records whether a patient **died or survived** for "
        "a third of the rows, and no follow-up time: `offset` is days from symptom onset (or "
        "admission) to the film, not to death or discharge, and neither date is given. So no "
        "time-to-event model can be fitted honestly; the outcome used is death as a binary label "
        "(Harrell's C of a binary outcome without times would be its AUROC), predicted from the "
        "X-ray, the note (outcome and diagnosis words masked) and the record fields together, "
        "concat fusion, patient-grouped 5-fold CV, rows with a missing note kept (absent "
        "modality).",
        "",
        f"- {c['n']} films of {c['patients']} patients, {c['died']} films of patients who died: "
        f"AUROC {C.with_ci(c['auroc'], c['auroc_ci'])} (pooled out-of-fold, patient-grouped "
        f"bootstrap); per fold {C.num(c['per_fold_auroc']['mean'])} +/- "
        f"{C.num(c['per_fold_auroc']['std'])}.",
        f"- One modality removed at test time (change vs all): {removed or 'n/a'}.",
        "- The classical baselines of benchmarks/results/covid_cxr.md on the same target "
        "(logistic regression on the record fields 0.650 [0.487, 0.792]; TF-IDF on masked notes "
        "0.609) and its caveats apply: 20 patients who died, case reports rather than a cohort, "
        "notes that describe the course. This is a mortality classifier, not a survival model.",
        "",
    ]


def whatif_lines(w: dict[str, Any] | None) -> list[str]:
    if not w:
        return []
    s, cox, seeds = w["whatif"], w["coxph"], w["seeds"]
    eff = s["effects"][0]
    hrs = [r["hazard_ratio"] for r in seeds]
    drs = [r["mean_delta_rmst"] for r in seeds]
    return [
        "## What-if: GBSG2 hormonal therapy (`horTh`)",
        "",
        f"A deep Cox model with `horTh` as one of its inputs (S-learner), trained on 80 % of the "
        f"686 patients (epoch picked on the other 20 %, validation C "
        f"{C.num(seeds[0]['val_c_index'])}), then `medmodal whatif` on all 686: each patient's "
        f"curve with `horTh` set to each value, RMST to {s['horizon']:g} days. Repeated with "
        f"{len(seeds)} seeds (other initialisation and validation rows) for the spread that "
        "comes from fitting the model, which the bootstrap over patients does not cover.",
        "",
        f"- Deep model (seed {seeds[0]['seed']}): mean RMST difference ({eff['value']} - "
        f"{eff['reference']}) {C.with_ci(eff['mean_delta_rmst'], eff['mean_delta_rmst_ci'], 1)} "
        f"days; implied hazard ratio (geometric mean of each patient's cumulative-hazard ratio at "
        f"the horizon) {C.with_ci(eff['hazard_ratio'], eff['hazard_ratio_ci'])} (CIs: bootstrap "
        f"over patients, model fixed). Over the {len(seeds)} seeds: hazard ratio "
        f"{min(hrs):.2f}-{max(hrs):.2f}, RMST difference {min(drs):+.0f} to {max(drs):+.0f} days.",
        f"- CoxPH on the same 686 patients and covariates: hazard ratio of horTh yes vs no "
        f"{C.with_ci(cox['hr'], cox['hr_ci'])} (bootstrap, {cox['n_boot']} resamples, refitted "
        f"each time); its mean RMST difference to the same horizon {cox['mean_delta_rmst']:+.1f} "
        "days.",
        f"- Agreement: the deep model's hazard ratio {eff['hazard_ratio']:.2f} (seeds "
        f"{min(hrs):.2f}-{max(hrs):.2f}) lies "
        + ("inside" if cox["hr_ci"][0] <= eff["hazard_ratio"] <= cox["hr_ci"][1] else "**outside**")
        + f" CoxPH's 95 % CI [{cox['hr_ci'][0]:.2f}, {cox['hr_ci'][1]:.2f}]; both say hormonal "
        "therapy goes with a lower hazard of recurrence or death in these data. The propensity "
        "model below finds that who had it depends on the covariates, so even this agreement is "
        "an association, not an effect.",
        f"- Propensity (logistic regression of horTh on the other covariates): "
        f"{s['overlap']['summary']}",
        f"- {s['caveat']}",
        f"- Outputs: {', '.join(w['outputs'])}.",
        "",
    ]


def runtime_lines(result: dict[str, Any]) -> list[str]:
    """Wall and CPU time of the runs (the budget is 30 minutes on 2 cores)."""
    inv = result.get("invocations") or []
    if not inv:
        return []
    parts = [
        f"`{', '.join(i['arms'])}`: {i['wall_seconds'] / 60:.1f} min wall, "
        f"{(i.get('cpu_seconds') or 0) / 60:.1f} min CPU (load average at the end "
        f"{i.get('load_average_at_end')})"
        for i in inv
    ]
    return ["## Run time", "", *[f"- {p}" for p in parts], *RUNTIME_NOTE, ""]


RUNTIME_NOTE = [
    "- The full run shared the 2 cores with another benchmark's two worker processes that ran "
    "outside the CPU lock for its first 20 minutes (load average ~5.6): whas500 took 15 "
    "minutes of wall time (its first repeat 1.5), so the wall time is above "
    "the 30-minute budget while the CPU time (one thread) is about half of it.",
]


def load(path: Path) -> dict[str, Any]:
    return C.read_json(path.with_suffix(".json")) or {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(ap, NAME, arms=ARMS, default_arms=DEFAULT_ARMS)
    ap.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="one repeat per data set")
    args = ap.parse_args()
    old = C.previous_results(args, args.out, load, render)
    if old is None:
        return
    t0, work = time.perf_counter(), Path(args.work)
    result = dict(old)
    stages = {
        "tables": lambda: C.merge_rows(
            old.get("tables", []),
            [run_table(n, args, work) for n in args.datasets],
            lambda r: r["dataset"],
        ),
        "covid_cxr": lambda: run_covid(args, work, C.data_dir(args)),
        "whatif": lambda: run_whatif(args, work),
    }
    wanted = {"tables": bool({*DEEP, "classical"} & set(args.arms))}
    for key, stage in stages.items():
        if wanted.get(key, key in args.arms):
            result[key] = stage()
            result["environment"] = C.environment()
            C.write_result(args.out, result, render)  # after each stage: a later failure keeps it
    C.finish(args.out, result, old, args.arms, t0, render)


if __name__ == "__main__":
    main()
