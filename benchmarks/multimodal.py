"""Real-data multimodal benchmark: single-modality vs fused AUROC, with each data set's pairing status.

* PTB-XL (``ptbxl``, real patient pairing: ECG + cardiologist's report + demographics of one
  record): folds 1-8 train, 9 validation (epoch selection on macro-AUROC), 10 test; macro-AUROC
  over NORM/MI/STTC/CD/HYP with a patient-grouped 95% bootstrap CI. ECG-only, report-only (reads
  the cardiologist's diagnosis), masked-report-only, demographics-only, ECG + demographics and all
  three, each fused with concat / attention / late fusion, plus the test-time modality-removal
  table of every fused model.
* WDBC rows + BreastMNIST images paired **by class** (``wdbc_breastmnist_mechanics``, NOT real
  patients): image-only, table-only and the same fusions, as a mechanics check.
* COVID-19 CXR (real patient pairing): a summary read from ``benchmarks/results/covid_cxr.json``
  (written by ``benchmarks/covid_cxr.py``), or "pending" when that file does not exist.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_bench.lock python benchmarks/multimodal.py

Writes benchmarks/results/multimodal.json and benchmarks/results/multimodal.md. Budget: 30 minutes
on 2 CPU cores. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal import api
from medmodal.config import load_config
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset, resolve_data_dir

RESULTS = Path(__file__).resolve().parent / "results"
REAL = "real patient pairing"
NOT_REAL = "NOT real: paired by class"
STRODTHOFF = ("Strodthoff N., Wagner P., Schaeffter T., Samek W. Deep learning for ECG analysis: benchmarks "
              "and insights from PTB-XL. IEEE JBHI 25(5):1519-1528 (2021)")

# Modalities -> label shown in the tables.
PTBXL_LABELS = {
    ("ecg",): "ECG only",
    ("report",): "report only (reads the cardiologist's diagnosis)",
    ("report_masked",): "masked report only (diagnostic words masked; still the cardiologist's description)",
    ("demo",): "demographics only",
    ("ecg", "demo"): "ECG + demographics (clinically honest fusion)",
    ("ecg", "report", "demo"): "ECG + report + demographics (report reads the diagnosis)",
}
PAIRED_LABELS = {("image",): "ultrasound image only", ("record",): "WDBC table only",
                 ("image", "record"): "image + table (NOT the same patients)"}

PTBXL_ENCODERS = {
    "ecg": {"name": "resnet1d", "widths": [16, 32, 64, 128], "blocks": [1, 1, 1, 1], "dropout": 0.1},
    "report": {"name": "bigru", "embed_dim": 64, "hidden": 64},
    "demo": {"name": "mlp"},
}
PAIRED_ENCODERS = {"image": {"name": "baseline_cnn"}, "record": {"name": "mlp"}}
PTBXL_TRAIN = {"epochs": 8, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw",
               "scheduler": "cosine", "monitor": "auroc", "early_stopping": 3, "threads": 2}
PAIRED_TRAIN = {"epochs": 30, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw",
                "scheduler": "cosine", "monitor": "auroc", "early_stopping": 8, "threads": 2}
FUSIONS = ("concat", "attention", "late")


def load(dataset: str, manifest: Path, schema: Schema, work: Path, seed: int) -> api.Loaded:
    """Read and decode every sample of a prepared manifest once (all its modalities)."""
    cfg = load_config({"name": f"{dataset}_load", "seed": seed,
                       "data": {"manifest": str(manifest), "schema": schema.model_dump(mode="json", exclude_none=True)}})
    return api.load_data(cfg, work / dataset / "load")


def run_one(loaded: api.Loaded, dataset: str, modalities: tuple[str, ...], fusion: str | None,
            encoders: dict[str, dict[str, Any]], train: dict[str, Any], seed: int, work: Path,
            bootstrap: int) -> dict[str, Any]:
    """Train + evaluate one model on a subset of the loaded modalities (processors fitted on train only)."""
    name = "+".join(modalities) + (f"_{fusion}" if fusion else "")
    schema = loaded.schema.model_copy(update={"modalities": {m: loaded.schema.modalities[m] for m in modalities}})
    cfg = load_config({
        "name": f"{dataset}_{name}",
        "seed": seed,
        "output_dir": str(work / dataset / f"seed{seed}" / name),
        "data": {"manifest": str(loaded.manifest), "schema": schema.model_dump(mode="json", exclude_none=True)},
        "model": {"encoders": {m: encoders["report" if m == "report_masked" else m] for m in modalities},
                  "fusion": {"name": fusion or "concat"}},
        "train": train,
        "evaluate": {"bootstrap": bootstrap, "report": False, "ablation": len(modalities) > 1 and bootstrap > 0},
    })
    t0, c0 = time.perf_counter(), time.process_time()
    sub = replace(loaded, cfg=cfg, schema=schema)
    run = api.train_and_evaluate(sub, api.assign_splits(sub), Path(cfg.output_dir or work))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    test, val = run.metrics["test"], run.metrics["val"]
    ci = test.get("ci", {}).get("auroc", {})
    row = {
        "dataset": dataset, "modalities": list(modalities), "fusion": fusion if len(modalities) > 1 else None,
        "test_auroc": test["auroc"], "test_auroc_ci": [ci.get("low"), ci.get("high")],
        "test_auprc": test["auprc"], "val_auroc": val["auroc"],
        "per_class_auroc": {k: v.get("auroc") for k, v in test["per_class"].items()},
        "best_epoch": run.metrics["best_epoch"], "epochs": run.metrics["epochs_run"],
        "n": run.metrics["n"], "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
    }
    if "ablation" in test:
        row["ablation"] = test["ablation"]
    print(json.dumps({k: row[k] for k in ("dataset", "modalities", "fusion", "test_auroc", "val_auroc",
                                          "best_epoch", "wall_seconds")}), flush=True)
    return row


def ptbxl_runs(data_dir: Path, work: Path, seeds: list[int], bootstrap: int, epochs: int | None) -> tuple[list, dict]:
    """Every PTB-XL row for ``seeds[0]`` (CIs, removal table); the other seeds add the seed spread."""
    seed = seeds[0]
    ds = get_dataset("ptbxl")
    prep = ds.prepare(work / "ptbxl" / "data", data_dir, verify="all")
    masked = ds.prepare(work / "ptbxl" / "data_masked", data_dir, verify="csv", report_mask=True)
    schema, schema_masked = Schema.load(prep.schema), Schema.load(masked.schema)
    schema_masked = schema_masked.model_copy(update={"modalities": {"report_masked": schema_masked.modalities["report"]}})
    train = {**PTBXL_TRAIN, **({"epochs": epochs} if epochs else {})}
    plan: list[tuple[str, tuple[str, ...], str | None]] = [
        ("full", ("ecg",), None), ("full", ("report",), None), ("masked", ("report_masked",), None),
        ("full", ("demo",), None),
    ]
    for mods in (("ecg", "demo"), ("ecg", "report", "demo")):
        plan += [("full", mods, f) for f in FUSIONS]
    t0 = time.perf_counter()
    loaded = {"full": load("ptbxl", prep.manifest, schema, work, seed),
              "masked": load("ptbxl_masked", masked.manifest, schema_masked, work, seed)}
    read_seconds = time.perf_counter() - t0
    rows = [run_one(loaded[which], "ptbxl", mods, f, PTBXL_ENCODERS, train, seed, work, bootstrap)
            for which, mods, f in plan]
    for extra in seeds[1:]:  # the seed spread of the rows without the report (the honest comparison)
        for r, (which, mods, f) in zip(rows, plan, strict=True):
            if which != "full" or "report" in mods:
                continue
            o = run_one(loaded[which], "ptbxl", mods, f, PTBXL_ENCODERS, train, extra, work, 0)
            r.setdefault("other_seeds", []).append(
                {k: o[k] for k in ("test_auroc", "val_auroc", "best_epoch", "wall_seconds", "cpu_seconds")} | {"seed": extra})
    _seed_spread(rows, seeds)
    for r in rows:
        r["pairing"] = REAL
        r["label"] = PTBXL_LABELS[tuple(r["modalities"])]
    facts = {k: prep.facts[k] for k in ("rows", "records", "patients", "superclass_counts_all_records",
                                        "no_diagnostic_statement", "split_counts", "ages_capped", "verified")}
    facts["report_mask_terms"] = masked.facts["report_mask_terms"]
    facts["read_seconds"] = round(read_seconds, 1)
    return rows, facts


def _seed_spread(rows: list[dict[str, Any]], seeds: list[int]) -> None:
    """Per row: test AUROC mean / sd over the seeds and, for ECG models, the per-seed change vs ECG only."""
    ecg = next(r for r in rows if r["modalities"] == ["ecg"])
    ecg_by_seed = [ecg["test_auroc"], *(o["test_auroc"] for o in ecg.get("other_seeds", []))]
    for r in rows:
        vals = [r["test_auroc"], *(o["test_auroc"] for o in r.get("other_seeds", []))]
        r["seeds"] = seeds
        r["seed_mean"] = float(np.mean(vals))
        r["seed_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        if "ecg" in r["modalities"] and r is not ecg:
            n = min(len(vals), len(ecg_by_seed))  # the seeds both rows ran
            d = np.asarray(vals[:n]) - np.asarray(ecg_by_seed[:n])
            r["vs_ecg_only"] = {"per_seed": d.tolist(), "mean": float(d.mean()),
                                "sd": float(d.std(ddof=1)) if len(d) > 1 else None}


def paired_runs(data_dir: Path, work: Path, seed: int, bootstrap: int, epochs: int | None) -> tuple[list, dict]:
    prep = get_dataset("wdbc_breastmnist_mechanics").prepare(work / "paired" / "data", data_dir, seed=seed)
    name = "wdbc_breastmnist_mechanics"
    loaded = load(name, prep.manifest, Schema.load(prep.schema), work, seed)
    plan: list[tuple[tuple[str, ...], str | None]] = [(("image",), None), (("record",), None)]
    plan += [(("image", "record"), f) for f in (*FUSIONS, "gated", "mean")]
    train = {**PAIRED_TRAIN, **({"epochs": epochs} if epochs else {})}
    rows = [run_one(loaded, name, mods, f, PAIRED_ENCODERS, train, seed, work, bootstrap) for mods, f in plan]
    for r in rows:
        r["pairing"] = NOT_REAL
        r["label"] = PAIRED_LABELS[tuple(r["modalities"])]
    return rows, dict(prep.facts)


# -- covid_cxr summary (read only; that benchmark is written elsewhere) ----------------------------
def covid_summary(path: Path) -> dict[str, Any]:
    """The runs of ``covid_cxr.json`` (``targets.<t>.runs[]``), or a pending note when it is absent."""
    if not path.is_file():
        return {"status": "pending", "path": str(path)}
    data = json.loads(path.read_text())
    out: dict[str, Any] = {"status": "read", "path": str(path),
                           "command": data.get("command") if isinstance(data, dict) else None}
    targets = data.get("targets") if isinstance(data, dict) else None
    if isinstance(targets, dict):
        out["targets"] = {}
        for t, body in targets.items():
            runs = body.get("runs", []) if isinstance(body, dict) else []
            info = body.get("data", {}) if isinstance(body, dict) else {}
            out["targets"][t] = {
                "rows": info.get("rows"), "patients": info.get("patients"),
                "runs": [{"label": r.get("label") or r.get("id"), "fusion": r.get("fusion"),
                          "auroc": r.get("auroc"), "ci": r.get("auroc_ci"),
                          "fold_mean": (r.get("per_fold") or {}).get("auroc_mean"),
                          "fold_std": (r.get("per_fold") or {}).get("auroc_std")} for r in runs],
            }
    else:  # another layout: every entry with an AUROC
        rows: list[dict[str, Any]] = []
        _collect(data, [], rows)
        out["rows"] = rows
    return out


def _collect(obj: Any, where: list[str], out: list[dict[str, Any]]) -> None:
    if isinstance(obj, dict):
        scalar = {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
        auroc = next((k for k in ("auroc", "test_auroc", "pooled_auroc") if isinstance(obj.get(k), (int, float))), None)
        if auroc is not None:
            ci = obj.get("auroc_ci") or obj.get("ci") or obj.get(f"{auroc}_ci")
            if isinstance(ci, dict):
                ci = ci.get("auroc", ci)
                ci = [ci.get("low"), ci.get("high")] if isinstance(ci, dict) else None
            desc = {k: v for k, v in scalar.items() if isinstance(v, str)}
            out.append({"where": "/".join(where), "auroc": obj[auroc], "ci": ci if isinstance(ci, list) else None,
                        "describe": desc})
            return
        for k, v in obj.items():
            if k not in ("ablation", "per_class", "per_fold", "folds"):
                _collect(v, [*where, str(k)], out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _collect(v, [*where, str(i)], out)


# -- markdown ---------------------------------------------------------------------------------
def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _auroc(r: dict[str, Any]) -> str:
    lo, hi = r["test_auroc_ci"]
    return f"{_f(r['test_auroc'])} [{_f(lo)}, {_f(hi)}]" if lo is not None else _f(r["test_auroc"])


def _spread(r: dict[str, Any]) -> str:
    if r.get("seed_sd") is None:
        return "one seed"
    return f"{r['seed_mean']:.3f} +/- {r['seed_sd']:.3f} ({len(r['seeds'])} seeds)"


def _vs_ecg(r: dict[str, Any]) -> str:
    v = r.get("vs_ecg_only")
    if not v:
        return ""
    sd = f" +/- {v['sd']:.3f}" if v.get("sd") is not None else ""
    return f"{v['mean']:+.3f}{sd} (" + ", ".join(f"{d:+.3f}" for d in v["per_seed"]) + ")"


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
        "| data set | pairing | model | test AUROC [95% CI] | mean +/- sd over seeds | val AUROC | best epoch / epochs | wall (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in [*ptb.get("rows", []), *paired.get("rows", [])]:
        L.append(f"| {r['dataset']} | {r['pairing']} | {_model(r)} | {_auroc(r)} | {_spread(r)} | {_f(r['val_auroc'])} | "
                 f"{r['best_epoch']} / {r['epochs']} | {r['wall_seconds'] / 60:.1f} min ({r.get('cpu_seconds', 0) / 60:.1f}) |")
    if ptb:
        L += _ptbxl_section(ptb)
    if paired:
        L += _paired_section(paired)
    L += _covid_section(res["covid_cxr"])
    L += _caveats(res)
    L += ["", "## Reproduce", "", f"Command: `{res['command']}`", "",
          f"Total wall time: {res['wall_seconds'] / 60:.1f} min (budget 30 min on 2 CPU cores); CPU time of "
          f"the process (all threads): {res['cpu_seconds'] / 60:.1f} min; "
          f"load average at start / end: {res['load_start']} / {res['load_end']}.", "",
          f"Environment: {res['env']}", ""]
    if res.get("rendered"):
        L += [f"Note: {res['rendered']}; the numbers are those of the command above.", ""]
    return "\n".join(L)


def _ptbxl_section(ptb: dict[str, Any]) -> list[str]:
    f = ptb["facts"]
    L = ["", "## PTB-XL (real patient pairing: 12-lead ECG + report + demographics of one record)", "",
         f"Protocol: the ecg_id < 2000 subset in `../shared/data/ptbxl` ({f['records']} records; {len(f['no_diagnostic_statement'])} "
         f"without a diagnostic SCP statement excluded as in Strodthoff et al.; {f['rows']} records of "
         f"{f['patients']} patients kept), `strat_fold` 1-8 train / 9 validation / 10 test "
         f"(split sizes {f['split_counts']}; patient-level, checked), every file verified against PhysioNet's "
         f"SHA-256 ({f['verified']}). Target: multilabel diagnostic superclasses; metric: macro-AUROC over "
         "NORM/MI/STTC/CD/HYP on fold 10, best epoch by validation macro-AUROC on fold 9; 95% CI from "
         f"{ptb['bootstrap']} patient-grouped bootstrap resamples of fold 10. Seeds "
         f"{ptb.get('seeds', [ptb['seed']])} (see below).", "",
         f"Encoders ({ptb['encoders']}): ECG `resnet1d` on 12 leads x 1000 samples at 100 Hz with per-lead "
         "standardisation fitted on train; report: word tokens (vocabulary from train) + `bigru`; demographics: `mlp` "
         f"(age capped at 90, sex, height, weight; median imputation + missing indicators). Training: {ptb['train']}.",
         "",
         f"Per row: seed {ptb['seed']}'s macro-AUROC with its CI and per-class AUROCs; the mean +/- sd of the test "
         f"macro-AUROC over seeds {ptb.get('seeds', [ptb['seed']])} for the rows without the report (same data, "
         "same split; the seed changes initialisation and batch order); and for every model with the ECG, the change vs "
         "the ECG-only model of the same seed (mean +/- sd, then each seed; the report rows: first seed only).", "",
         "| model | macro-AUROC [95% CI] | NORM | MI | STTC | CD | HYP | mean +/- sd over seeds | change vs ECG only |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in ptb["rows"]:
        pc = r["per_class_auroc"]
        L.append(f"| {_model(r)} | {_auroc(r)} | " + " | ".join(_f(pc.get(c)) for c in ("NORM", "MI", "STTC", "CD", "HYP"))
                 + f" | {_spread(r)} | {_vs_ecg(r)} |")
    L += ["", "**Report rows read the cardiologist's words.** The report is the cardiologist's free-text "
          "interpretation of the same ECG and usually names the diagnosis (\"sinusrhythmus normales ekg\", "
          "\"old inferior myocardial infarction\"), so a report-only or report-fused model predicts the "
          "label from the labeller's own statement; it is not a measure of what the ECG shows. The masked "
          f"variant replaces {f['report_mask_terms']} diagnostic words (stems in German / English / Swedish, "
          "see `medmodal.datasets.ptbxl.MASK_STEMS`) with [MASK]; masking across three languages is "
          "partial, and what is left (rhythm, axis, lead names, descriptive findings) is still the "
          "cardiologist's reading. The clinically honest comparison is ECG only vs ECG + demographics.", "",
          *_masking_note(ptb["rows"]),
          *_fusion_note(ptb["rows"]),
          f"Context only: {STRODTHOFF} report macro-AUROC about 0.93 on the five superclasses for the "
          "**whole release** (21,799 records, same fold protocol). This subset has 1,965 records "
          "(~9% of the release; 1,481 for training), so the numbers above are not comparable with it; "
          "compare the rows with each other.", "",
          "### Test-time modality removal (fused PTB-XL models)", "",
          "Each fused model evaluated on fold 10 with one modality removed (its missing-modality path), "
          "and the paired-bootstrap change of macro-AUROC vs all modalities (negative = the model relies on it).", "",
          "| model | removed | macro-AUROC | change [95% CI] | p |", "|---|---|---|---|---|"]
    L += _ablation_rows(ptb["rows"])
    return L


def _masking_note(rows: list[dict[str, Any]]) -> list[str]:
    """What masking did, from the measured report-only rows."""
    by = {tuple(r["modalities"]): r["test_auroc"] for r in rows if r["fusion"] is None}
    raw, masked = by.get(("report",)), by.get(("report_masked",))
    if raw is None or masked is None:
        return []
    verdict = ("removed little of it: masking does not make the report a fair input here"
               if raw - masked < 0.05 else "removed part of it, not all")
    return [f"Measured: report only {raw:.3f}, masked report only {masked:.3f} macro-AUROC; the mask {verdict}. "
            "What survives the mask (the report's fixed phrasing, e.g. \"sinusrhythmus [MASK] ekg\" or "
            "\"sinus rhythm. [MASK] ecg.\", where the [MASK] tokens sit, rhythm words, lead names) still "
            "encodes the cardiologist's reading, so masked-report rows read the diagnosis too.", ""]


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
    verdict = ("a gain larger than twice the seed spread for " + str(sum(gains)) + " fusion(s)" if any(gains)
               else "no fusion beats the ECG alone by more than the seed-to-seed spread")
    removal = [r["ablation"]["demo"]["delta_auroc"] for r in rows if r["modalities"] == ["ecg", "demo"]
               and (r.get("ablation") or {}).get("demo", {}).get("delta_auroc") is not None]
    tail = (f" Removing the demographics at test time changes these models' macro-AUROC by "
            f"{min(removal):+.3f} to {max(removal):+.3f} (removal table below)." if removal else "")
    return [f"ECG + demographics vs ECG only (same seed, mean +/- sd over seeds): {', '.join(parts)} macro-AUROC: "
            f"{verdict}.{tail}", ""]


def _ablation_rows(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        for m, a in (r.get("ablation") or {}).items():
            d = a.get("delta_auroc")
            delta = f"{d:+.3f} [{a['delta_low']:+.3f}, {a['delta_high']:+.3f}]" if d is not None else "n/a"
            p = a.get("p_value")
            out.append(f"| {_model(r)} | {m} | {_f(a.get('auroc'))} | {delta} | {'n/a' if p is None else f'{p:.3f}'} |")
    return out


def _paired_section(paired: dict[str, Any]) -> list[str]:
    f = paired["facts"]
    L = ["", "## WDBC + BreastMNIST (NOT real patients: paired by class for mechanics only)", "",
         f"`wdbc_breastmnist_mechanics`: {f['rows']} pairs ({f['pairs']}); a malignant WDBC row is paired with "
         "a malignant BreastMNIST image and a benign row with a \"normal, benign\" image, at random (seed "
         f"{f['seed']}). Images stay in their official BreastMNIST split; rows are dealt to the splits without "
         f"replacement; no image or row is in two splits. Unused: images {f['unused_images']}, rows "
         f"{f['unused_rows']}. Encoders: `baseline_cnn` (28 px) and `mlp`; training {paired['train']}; "
         f"binary AUROC (malignant) on the test pairs with a {paired['bootstrap']}-resample bootstrap CI.", "",
         "Because the two halves of a pair share only the class, a fused AUROC above both single ones shows "
         "that the fusion combines two independent noisy class signals (an ensemble effect); it says nothing "
         "about what ultrasound adds to cytology for a patient. Here the WDBC table alone is already "
         "near-perfect, so the fused models lean on it (see the removal table) and there is nothing to gain.", "",
         "| model | test AUROC [95% CI] | val AUROC |", "|---|---|---|"]
    for r in paired["rows"]:
        L.append(f"| {_model(r)} | {_auroc(r)} | {_f(r['val_auroc'])} |")
    L += ["", "| model | removed | AUROC | change [95% CI] | p |", "|---|---|---|---|---|"]
    L += _ablation_rows(paired["rows"])
    return L


def _covid_section(c: dict[str, Any]) -> list[str]:
    L = ["", "## COVID-19 CXR (real patient pairing: chest X-ray + clinical notes + tabular)", ""]
    if c["status"] == "pending":
        return [*L, f"Pending: `{c['path']}` does not exist yet. That benchmark (its own patient-grouped "
                    "5-fold cross-validation) is written by `benchmarks/covid_cxr.py`; its full table will be in "
                    "`benchmarks/results/covid_cxr.md`."]
    L += ["Summary read from `benchmarks/results/covid_cxr.json`; the full table, protocol and caveats "
          "(note masking, confounders) are in `benchmarks/results/covid_cxr.md`. Protocol there: "
          "patient-grouped stratified 5-fold cross-validation, AUROC on pooled out-of-fold predictions "
          "with a patient-grouped bootstrap 95% CI (not the fixed-split protocol used above). "
          f"Command there: `{c.get('command')}`."]
    for t, body in (c.get("targets") or {}).items():
        L += ["", f"Target `{t}` ({body.get('rows')} rows, {body.get('patients')} patients; real patient pairing):", "",
              "| model | pooled OOF AUROC [95% CI] | per-fold mean +/- std |", "|---|---|---|"]
        for r in body["runs"]:
            ci = r.get("ci") or [None, None]
            ci_s = f" [{_f(ci[0])}, {_f(ci[1])}]" if ci[0] is not None else ""
            fold = (f"{r['fold_mean']:.3f} +/- {r['fold_std']:.3f}" if r.get("fold_mean") is not None
                    and r.get("fold_std") is not None else "n/a")
            fusion = f", **{r['fusion']}** fusion" if r.get("fusion") and r["fusion"] not in str(r["label"]) else ""
            L.append(f"| {r['label']}{fusion} | {_f(r['auroc'])}{ci_s} | {fold} |")
    if c.get("rows"):
        L += ["", "| entry | AUROC [95% CI] | description |", "|---|---|---|"]
        for r in c["rows"]:
            ci = r.get("ci")
            ci_s = f" [{_f(ci[0])}, {_f(ci[1])}]" if ci and ci[0] is not None else ""
            desc = "; ".join(f"{k}: {v}" for k, v in r["describe"].items())
            L.append(f"| {r['where']} | {_f(r['auroc'])}{ci_s} | {desc} |")
    return L


def _caveats(res: dict[str, Any]) -> list[str]:
    return ["", "## Caveats", "",
            "- PTB-XL: CIs and removal tables are from the first seed; the seed spread shows how much a row moves "
            "with initialisation alone. The WDBC + BreastMNIST rows are one seed.",
            "- PTB-XL: a 1,965-record subset of the release, short CPU training (a small 1D ResNet, "
            f"at most {res.get('ptbxl', {}).get('train', PTBXL_TRAIN)['epochs']} epochs, early stopping); the full-release literature figure is context, not a target met or missed. Fold 10 has "
            "252 records, so per-class AUROCs of rare classes (HYP: 26 positives) are noisy.",
            "- Report-based rows read the cardiologist's own diagnosis; masking is partial (see above).",
            "- The fused models were trained with all modalities present (no modality dropout), so the "
            "removal table shows reliance, not robustness to a missing modality.",
            *_val_gap(res.get("ptbxl", {}).get("rows", [])),
            "- WDBC + BreastMNIST is not a patient pairing; its numbers are a mechanics check only.",
            "- Wall times are for a shared 2-core machine; other work running at the same time slows them "
            "(load averages above)."]


def _lock_prefix() -> str:
    """``flock <lock> `` when this process runs under flock (the shared benchmark lock), else ``""``."""
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    args = [a.decode() for a in parent if a]
    return " ".join(args[:2]) + " " if args and Path(args[0]).name == "flock" else ""


def _val_gap(rows: list[dict[str, Any]]) -> list[str]:
    gaps = [r["val_auroc"] - r["test_auroc"] for r in rows if "ecg" in r["modalities"]]
    if not gaps:
        return []
    return [f"- Validation (fold 9) macro-AUROCs of the PTB-XL models with the ECG are {min(gaps):+.3f} to "
            f"{max(gaps):+.3f} above test (fold 10): the epoch is selected on fold 9, and fold 10 may simply be "
            "harder; read the test column."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["ptbxl", "paired"], choices=["ptbxl", "paired"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="PTB-XL seeds (the first gives the CIs and removal tables); the paired set uses the first")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (development runs only)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "work" / "multimodal"))
    ap.add_argument("--out", default=str(RESULTS / "multimodal"))
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the .md from the existing .json (no training); the covid_cxr summary is re-read")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        res = json.loads(out.with_suffix(".json").read_text())
        res["covid_cxr"] = covid_summary(RESULTS / "covid_cxr.json")
        res["command"] = res["command"].strip()
        res["rendered"] = "markdown re-rendered from this JSON by `python benchmarks/multimodal.py --render-only` (no training)"
        out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
        out.with_suffix(".md").write_text(to_markdown(res))
        return
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        sys.exit("no data directory: pass --data-dir or set MEDMODAL_DATA_DIR")
    torch.set_num_threads(2)
    t0, c0 = time.perf_counter(), time.process_time()
    work = Path(args.work)
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    res: dict[str, Any] = {
        "command": (f"MEDMODAL_DATA_DIR=../shared/data {_lock_prefix()}python benchmarks/multimodal.py "
                   + " ".join(sys.argv[1:])).strip(),
        "env": {"torch": torch.__version__, "threads": 2, "cpu_count": os.cpu_count(),
                "python": platform.python_version(), "machine": platform.machine()},
    }
    if "ptbxl" in args.datasets:
        rows, facts = ptbxl_runs(data_dir, work, args.seeds, args.bootstrap, args.epochs)
        res["ptbxl"] = {"rows": rows, "facts": facts, "seed": args.seeds[0], "seeds": args.seeds,
                        "bootstrap": args.bootstrap,
                        "train": {**PTBXL_TRAIN, **({"epochs": args.epochs} if args.epochs else {})},
                        "encoders": PTBXL_ENCODERS, "reference": STRODTHOFF}
    if "paired" in args.datasets:
        rows, facts = paired_runs(data_dir, work, args.seeds[0], args.bootstrap, args.epochs)
        res["paired"] = {"rows": rows, "facts": facts, "seed": args.seeds[0], "bootstrap": args.bootstrap,
                         "train": {**PAIRED_TRAIN, **({"epochs": args.epochs} if args.epochs else {})},
                         "encoders": PAIRED_ENCODERS}
    res["covid_cxr"] = covid_summary(RESULTS / "covid_cxr.json")
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["cpu_seconds"] = round(time.process_time() - c0, 1)
    res["load_start"], res["load_end"] = load_start, " ".join(f"{x:.1f}" for x in os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    out.with_suffix(".md").write_text(to_markdown(res))
    print(f"wrote {out.with_suffix('.md')} in {res['wall_seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
