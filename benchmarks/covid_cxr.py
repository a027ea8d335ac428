"""COVID-19 chest X-ray + clinical notes + clinical fields: patient-grouped 5-fold CV, two targets.

Targets (built-in dataset ``covid_cxr``): ``finding`` (COVID-19 vs every other finding, ``todo``
rows excluded) and ``survival`` (died vs survived). For each target: image-only, text-only
(raw notes, notes with diagnosis / outcome words masked, and masked words + numbers),
tabular-only, and the six fusions (concat, mean, sum, late, attention, gated) on
image + note + record with raw notes and (``--masked-fusions``) with masked notes.
Every run is ``api.cross_validate(config, k=5)``: patient-grouped, stratified folds (the same
folds for every run of a target; asserted), AUROC on pooled out-of-fold predictions with a
patient-grouped bootstrap 95% CI, per-fold mean +/- std, and (fusions) AUROC with each
modality removed at test time.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_bench.lock python benchmarks/covid_cxr.py

Writes benchmarks/results/covid_cxr.json and benchmarks/results/covid_cxr.md (layout of the
JSON: see ``RESULT_LAYOUT``). Budget: <= 30 minutes on 2 CPU cores; not part of CI.

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
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from medmodal import api
from medmodal.data.preprocess import text as text_mod
from medmodal.datasets import get_dataset, resolve_data_dir
from medmodal.datasets.covid_cxr import MASK_TERMS, mask_terms

RESULTS = Path(__file__).resolve().parent / "results"
FUSIONS = ["concat", "mean", "sum", "late", "attention", "gated"]
ALL = ["image", "note", "record"]
RESULT_LAYOUT = {
    "targets.<finding|survival>.data": "rows, patients, per_class, excluded rows, merged patient ids, "
                                       "rows per patient, absent notes, confounder checks",
    "targets.<t>.runs[]": "id, label, modalities, fusion (null = single modality), notes "
                          "(raw | masked | masked+numbers | null), auroc, auroc_ci [low, high], auprc, "
                          "balanced_accuracy, per_fold {auroc_mean, auroc_std, auroc_folds}, "
                          "ablation {modality: {auroc, delta_auroc, delta_low, delta_high, p_value}} "
                          "(multimodal runs), best_epochs, missing_modalities, n, wall_seconds",
    "targets.<t>.summary": "best single modality, best raw-note fusion, text raw vs masked AUROC",
}


@functools.cache
def _embed_cached(text: str, path: Any = None) -> np.ndarray:
    return _EMBED(text, path)


_EMBED = text_mod.embed_minilm


def install_embedding_memo() -> None:
    """Memoise the frozen MiniLM embedding per normalised note (same values, computed once)."""
    text_mod.embed_minilm = _embed_cached


def run_specs(masked_fusions: list[str]) -> list[dict[str, Any]]:
    """Every run of one target: id, modalities, fusion, note masking."""
    specs = [
        {"id": "image", "label": "image only", "modalities": ["image"], "fusion": None, "notes": None},
        {"id": "text_raw", "label": "text only, raw notes", "modalities": ["note"], "fusion": None, "notes": "raw"},
        {"id": "text_masked", "label": "text only, diagnosis/outcome words masked", "modalities": ["note"],
         "fusion": None, "notes": "masked"},
        {"id": "text_masked_numbers", "label": "text only, words + numbers masked", "modalities": ["note"],
         "fusion": None, "notes": "masked+numbers"},
        {"id": "tabular", "label": "tabular only", "modalities": ["record"], "fusion": None, "notes": None},
    ]
    for f in FUSIONS:
        specs.append({"id": f"{f}_raw", "label": f"{f} fusion, raw notes", "modalities": ALL, "fusion": f,
                      "notes": "raw"})
    for f in masked_fusions:
        specs.append({"id": f"{f}_masked", "label": f"{f} fusion, masked notes", "modalities": ALL, "fusion": f,
                      "notes": "masked"})
    return specs


def make_config(spec: dict[str, Any], target: str, recipe: dict[str, Any], seed: int, data_dir: Path,
                work: Path) -> dict[str, Any]:
    notes = spec["notes"]
    options = {"target": target, "image_size": recipe["image_size"], "image_augment": recipe["image_augment"],
               "mask_notes": notes in ("masked", "masked+numbers"), "mask_numbers": notes == "masked+numbers"}
    fusion = {"name": spec["fusion"] or "concat", **recipe["fusion_kwargs"].get(spec["fusion"] or "", {})}
    multimodal = len(spec["modalities"]) > 1
    return {
        "name": f"covid_cxr_{target}_{spec['id']}",
        "seed": seed,
        "output_dir": str(work / target / spec["id"]),
        "data": {"dataset": "covid_cxr", "data_dir": str(data_dir), "dataset_options": options,
                 "modalities": spec["modalities"], "val_fraction": recipe["val_fraction"]},
        "model": {"encoders": recipe["encoders"], "fusion": fusion,
                  "modality_dropout": recipe["modality_dropout"] if multimodal else 0.0},
        "train": dict(recipe["train"]),
        "evaluate": {"bootstrap": recipe["bootstrap"], "report": False, "ablation": True},
    }


def check_folds(cv: api.CVResult) -> pd.Series:
    """Raise if a patient is in two folds; the fold of every sample (compared across runs)."""
    pred = cv.predictions
    per_patient = pred.groupby("patient_id")["fold"].nunique()
    shared = per_patient[per_patient > 1]
    if len(shared):
        raise RuntimeError(f"patients in more than one fold: {list(shared.index)[:5]}")
    return pred.set_index("sample_id")["fold"]


def summarise(spec: dict[str, Any], cv: api.CVResult, wall: float) -> dict[str, Any]:
    p = cv.pooled
    ci = p.get("ci", {}).get("auroc", {})
    row: dict[str, Any] = {
        "id": spec["id"], "label": spec["label"], "modalities": spec["modalities"], "fusion": spec["fusion"],
        "notes": spec["notes"], "n": int(len(cv.predictions)),
        "auroc": p["auroc"], "auroc_ci": [ci.get("low"), ci.get("high")],
        "auprc": p.get("auprc"), "balanced_accuracy": p.get("balanced_accuracy"),
        "per_fold": {"auroc_mean": cv.per_fold["auroc"]["mean"], "auroc_std": cv.per_fold["auroc"]["std"],
                     "auroc_folds": cv.per_fold["auroc"]["folds"]},
        "best_epochs": [r.metrics["best_epoch"] for r in cv.folds],
        "missing_modalities": _missing(cv),
        "wall_seconds": round(wall, 1),
    }
    if "ablation" in p:
        row["ablation"] = {m: {k: v for k, v in a.items() if k in ("auroc", "delta_auroc", "delta_low", "delta_high",
                                                                  "p_value")}
                           for m, a in p["ablation"].items()}
    return row


def _missing(cv: api.CVResult) -> dict[str, int]:
    """Rows (of all folds) where each modality is absent."""
    pred = cv.predictions
    return {c.removeprefix("present_"): int((~pred[c].astype(bool)).sum()) for c in pred.columns
            if c.startswith("present_")}


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
            "rows": len(g), "patients": int(g["patient_id"].nunique()),
            "note_absent": int(g["note"].isna().sum()),
            "dated_2020": int((gy >= 2020).sum()), "dated_before_2020": int((gy < 2020).sum()),
            "no_year": int(gy.isna().sum()),
            "offset_present": int(g["offset"].notna().sum()),
        }
    checks = {
        # AUROC of trivial metadata scores: how far the target can be read from source/date alone.
        "auroc_dated_2020": _auc(y, (year >= 2020).astype(float).to_numpy()),
        "auroc_note_present": _auc(y, m["note"].notna().astype(float).to_numpy()),
        "auroc_offset_present": _auc(y, m["offset"].notna().astype(float).to_numpy()),
    }
    return {**{k: v for k, v in prepared.facts.items() if k not in ("folder",)},
            "rows_per_patient": {"median": float(per_patient.median()), "max": int(per_patient.max()),
                                 "patients_with_several_rows": int((per_patient > 1).sum())},
            "patients_with_both_labels": int((m.groupby("patient_id")["label"].nunique() > 1).sum()),
            "by_class": by_class, "confounder_checks": checks}


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def target_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["id"]: r for r in runs}
    singles = [r for r in runs if r["fusion"] is None and r["notes"] in (None, "raw")]
    fused = [r for r in runs if r["fusion"] and r["notes"] == "raw"]
    out: dict[str, Any] = {}
    if singles:
        best = max(singles, key=lambda r: r["auroc"] or 0)
        out["best_single"] = {"id": best["id"], "auroc": best["auroc"], "auroc_ci": best["auroc_ci"]}
    if fused:
        best = max(fused, key=lambda r: r["auroc"] or 0)
        out["best_fusion_raw_notes"] = {"id": best["id"], "auroc": best["auroc"], "auroc_ci": best["auroc_ci"]}
    masked_f = [r for r in runs if r["fusion"] and r["notes"] == "masked"]
    if masked_f:
        best = max(masked_f, key=lambda r: r["auroc"] or 0)
        out["best_fusion_masked_notes"] = {"id": best["id"], "auroc": best["auroc"], "auroc_ci": best["auroc_ci"]}
    if "text_raw" in by and "text_masked" in by:
        out["text_raw_minus_masked_auroc"] = by["text_raw"]["auroc"] - by["text_masked"]["auroc"]
    return out


# -- markdown ----------------------------------------------------------------------------------
def _f(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def to_markdown(result: dict[str, Any]) -> str:
    r = result["recipe"]
    lines = [
        "# COVID-19 chest X-ray + clinical notes + clinical fields (Cohen et al.): patient-grouped 5-fold CV",
        "",
        f"Generated {result['finished']} by `benchmarks/covid_cxr.py`. Total wall time "
        f"**{result['wall_seconds'] / 60:.1f} min** on {result['env']['cpu_count']} CPU cores "
        f"({result['env']['workers']} worker processes x 1 torch thread; load average at start "
        f"{result['env']['load_average_at_start']}, at end {result['env'].get('load_average_at_end', 'n/a')}: other "
        "users' processes share the machine).",
        "",
        "## Summary (pooled out-of-fold AUROC [95% CI])",
        "",
        *[_summary_line(t, b) for t, b in result["targets"].items()],
        "",
        "## Protocol",
        "",
        "- Data: built-in dataset `covid_cxr` (621 X-ray rows of the COVID-19 image data collection, "
        "fork hida6/covid-chestxray-dataset @ 584034a; metadata.csv sha256-verified, every image decoded and "
        "checked against the recorded digest). Patient ids that share an image file are merged "
        "(Eurorad 10483: 285+339; 10665: 287+340).",
        "- Targets: **finding** = COVID-19 (incl. \"COVID-19, ARDS\") vs every other finding (78 `todo` rows "
        "excluded); **survival** = died (`survival == N`, positive class) vs survived (`Y`), rows with empty "
        "or `?` survival excluded.",
        "- `api.cross_validate(config, k=5)`: patient-grouped, label-stratified folds (seed "
        f"{result['seed']}; identical folds for every run of a target, and no patient in two folds: both "
        "asserted); inside each training part a patient-grouped "
        f"{int(r['val_fraction'] * 100)}% validation split picks the epoch (val AUROC). Processors (image "
        "normalisation, tabular imputation / indicators / scaling) are fitted on each fold's training rows.",
        "- AUROC: pooled out-of-fold predictions, 95% CI from "
        f"{r['bootstrap']} patient-grouped bootstrap resamples; per-fold AUROC mean +/- std (ddof 1).",
        f"- Encoders: image `{r['encoders']['image']}` on {r['image_size']}x{r['image_size']} grayscale "
        f"(augment {r['image_augment']}); note `{r['encoders']['note']}` on the frozen all-MiniLM-L6-v2 "
        f"sentence embedding (`minilm_embed`); record `{r['encoders']['record']}` (age, temperature, "
        "pO2_saturation, leukocyte/neutrophil/lymphocyte counts, offset; sex and view categorical; median "
        "imputation + missing indicators). Fusion runs: modality dropout "
        f"{r['modality_dropout']}. Training: {r['train']}.",
        "- Masked notes: the dataset's `mask_notes=True` replaces these terms by `[MASK]` "
        "(case-insensitive, word boundaries; spaces/hyphens inside a term match any run or none): "
        + "; ".join(f"*{k}*: {', '.join(v)}" for k, v in MASK_TERMS.items()) + ". "
        "`masked+numbers` also masks every number (ages, dates, doses).",
        "",
    ]
    for target, block in result["targets"].items():
        d = block["data"]
        pcs = ", ".join(f"{k} {v}" for k, v in d["per_class"].items())
        lines += [
            f"## Target: {target}",
            "",
            f"{d['rows']} rows, {d['patients']} patients ({pcs}); excluded: {d['excluded']}; "
            f"rows per patient median {d['rows_per_patient']['median']:.0f}, max {d['rows_per_patient']['max']}; "
            f"notes absent in {d['notes_absent']} rows.",
            "",
            "| run | modalities | notes | pooled AUROC [95% CI] | per-fold AUROC mean +/- std | AUPRC | "
            "balanced acc. | best epochs | wall |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in block["runs"]:
            lo, hi = run["auroc_ci"]
            pf = run["per_fold"]
            lines.append(
                f"| {run['label']} | {'+'.join(run['modalities'])} | {run['notes'] or '-'} | "
                f"{_f(run['auroc'])} [{_f(lo)}, {_f(hi)}] | {_f(pf['auroc_mean'])} +/- {_f(pf['auroc_std'])} | "
                f"{_f(run['auprc'])} | {_f(run['balanced_accuracy'])} | {run['best_epochs']} | "
                f"{run['wall_seconds'] / 60:.1f} min |")
        abl = [run for run in block["runs"] if run.get("ablation")]
        if abl:
            lines += [
                "",
                f"AUROC ({target}) when one modality is removed at test time (the model sees it as absent); "
                "delta = AUROC without it minus AUROC with all modalities, paired patient-grouped bootstrap 95% CI:",
                "",
                "| run | all | without image | without note | without record |",
                "|---|---|---|---|---|",
            ]
            for run in abl:
                cells = []
                for m in ALL:
                    a = run["ablation"].get(m)
                    cells.append("-" if a is None else
                                 f"{_f(a['auroc'])} ({_signed(a.get('delta_auroc'))} "
                                 f"[{_signed(a.get('delta_low'))}, {_signed(a.get('delta_high'))}])")
                lines.append(f"| {run['label']} | {_f(run['auroc'])} | " + " | ".join(cells) + " |")
        checks = d["confounder_checks"]
        lines += [
            "",
            f"Confounder checks ({target}, no model: AUROC of one metadata flag as the score for "
            f"{list(d['per_class'])[1]}; 0.5 = no information, below 0.5 = the flag points the other way): "
            f"dated 2020 {_f(checks['auroc_dated_2020'])}, note present {_f(checks['auroc_note_present'])}, "
            f"offset filled in {_f(checks['auroc_offset_present'])}. Per class: "
            + "; ".join(f"{c}: {v['rows']} rows / {v['patients']} patients, {v['dated_2020']} dated 2020, "
                        f"{v['dated_before_2020']} before 2020, {v['no_year']} undated, {v['note_absent']} without note"
                        for c, v in d["by_class"].items()) + ".",
            "",
        ]
    lines += caveats(result)
    lines += [
        "## Reproduce",
        "",
        f"Command: `{result['command']}`"
        + (f" (this page re-rendered from the JSON by `{result['rendered']}`)" if result.get("rendered") else ""),
        "",
        f"Environment: {result['env']}",
        "",
        "Machine-readable results: `benchmarks/results/covid_cxr.json` (layout: see `RESULT_LAYOUT` in "
        "`benchmarks/covid_cxr.py`).",
        "",
    ]
    return "\n".join(lines)


def _summary_line(target: str, block: dict[str, Any]) -> str:
    by = {r["id"]: r for r in block["runs"]}
    sm = block.get("summary", {})

    def cell(run: dict[str, Any] | None) -> str:
        if not run:
            return "n/a"
        lo, hi = run["auroc_ci"]
        return f"{_f(run['auroc'])} [{_f(lo)}, {_f(hi)}]"

    parts = [f"{label}: {cell(by.get(i))}" for i, label in
             (("image", "image"), ("text_raw", "text (raw)"), ("text_masked", "text (masked)"),
              ("tabular", "tabular"))]
    for key, label in (("best_fusion_raw_notes", "best fusion, raw notes"),
                       ("best_fusion_masked_notes", "best fusion, masked notes")):
        if key in sm:
            parts.append(f"{label} ({sm[key]['id'].split('_')[0]}): {cell(by.get(sm[key]['id']))}")
    return f"- **{target}**: " + "; ".join(parts) + "."


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
            + (", not even the source cues a stronger image model would likely exploit. A low image score here "
               "is a limit of the model, not evidence that the images are free of source / date confounding."
               if target == "finding" else "."))
    for m in ("note", "record"):
        rows = [r["ablation"][m] for r in runs if m in r["ablation"]]
        better = [a for a in rows if (a.get("delta_auroc") or 0) > 0]
        sure = [a for a in better if (a.get("delta_low") or 0) > 0]
        if better and len(better) * 2 > len(rows):
            lines.append(
                f"- **The {m} hurts ({target}).** Removing the {m} at test time *raises* the AUROC in {len(better)} "
                f"of {len(rows)} fusion runs ({len(sure)} with a CI above 0): on this set the {m} adds noise "
                "that the fused model over-fits.")
    return lines


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def caveats(result: dict[str, Any]) -> list[str]:
    t, r = result["targets"], result["recipe"]
    out = ["## Caveats (read before quoting any number)", ""]
    leaks = []
    for target, block in t.items():
        by = {r["id"]: r for r in block["runs"]}
        raw, masked, num = by.get("text_raw"), by.get("text_masked"), by.get("text_masked_numbers")
        if raw and masked:
            leaks.append(f"{target}: text-only AUROC {_f(raw['auroc'])} on raw notes, {_f(masked['auroc'])} with "
                         f"the diagnosis/outcome words masked"
                         + (f", {_f(num['auroc'])} with numbers masked too" if num else ""))
    out += [
        "- **Label leakage through notes.** Many notes name the diagnosis (\"COVID-19 positive\", \"SARS in a "
        "74-year-old man\") or the outcome (\"the patient died\"). " + ("; ".join(leaks) + ". " if leaks else "")
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
            f"flag \"dated 2020\" alone reaches AUROC {_f(chk['auroc_dated_2020'])}. Images carry the same "
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
        "Two patients were listed twice under different ids (merged here); other duplicates that do not share "
        "an image file (the same case published twice) cannot be found from the metadata.",
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
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="*", default=["finding", "survival"])
    ap.add_argument("--runs", nargs="*", default=None, help="run ids to do (default: all)")
    ap.add_argument("--masked-fusions", nargs="*", default=list(FUSIONS))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "work" / "covid_cxr"))
    ap.add_argument("--out", default=str(RESULTS / "covid_cxr"))
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the .md from the existing .json (no training)")
    args = ap.parse_args()
    if args.render_only:
        out = Path(args.out)
        result = json.loads(out.with_suffix(".json").read_text())
        result["rendered"] = "python benchmarks/covid_cxr.py --render-only"
        out.with_suffix(".md").write_text(to_markdown(result))
        return
    t_start = time.perf_counter()
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        sys.exit("no data directory: pass --data-dir or set MEDMODAL_DATA_DIR")
    recipe: dict[str, Any] = {
        "image_size": args.image_size,
        "image_augment": {"flip": 0.5, "rotate": 10, "scale": 0.1, "intensity": 0.1},
        "encoders": {"image": {"name": "baseline_cnn", "filters": 16, "hidden": 64},
                     "note": {"name": "embedding_mlp", "out_dim": 64, "dropout": 0.2},
                     "record": {"name": "mlp"}},
        "fusion_kwargs": {},
        "modality_dropout": 0.1,
        "val_fraction": 0.15,
        "bootstrap": args.bootstrap,
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw",
                  "scheduler": "cosine", "class_weights": "balanced", "monitor": "auroc", "early_stopping": 8,
                  "threads": 1},
    }
    work = Path(args.work)
    command = "MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_bench.lock python benchmarks/covid_cxr.py " + \
        " ".join(sys.argv[1:])
    env = {"torch": torch.__version__, "workers": args.jobs, "threads_per_worker": 1, "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "machine": platform.machine(),
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    result: dict[str, Any] = {
        "benchmark": "covid_cxr", "command": command.strip(), "env": env, "seed": args.seed,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "protocol": "api.cross_validate(k=5): patient-grouped stratified folds; pooled OOF AUROC with "
                    "patient-grouped bootstrap CI; per-fold mean/std; test-time modality removal",
        "recipe": recipe, "mask_terms": mask_terms(), "result_layout": RESULT_LAYOUT, "targets": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    specs = [s for s in run_specs(args.masked_fusions) if args.runs is None or s["id"] in args.runs]
    for target in args.targets:
        result["targets"][target] = {"data": data_facts(target, data_dir, work), "runs": [], "summary": {}}
    tasks = [(t, s) for t in args.targets for s in specs]
    # Largest first (image runs of the bigger target) so the two workers finish together.
    tasks.sort(key=lambda ts: -(("image" in ts[1]["modalities"]) * 4 + (ts[0] == "finding") * 2))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    folds: dict[str, pd.Series] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(run_one, s, t, recipe, args.seed, data_dir, work): (t, s) for t, s in tasks}
        for fut in as_completed(futures):
            target, spec = futures[fut]
            row, fold = fut.result()
            if target in folds and not fold.sort_index().equals(folds[target].sort_index()):
                raise RuntimeError(f"{target}: fold assignment of {spec['id']} differs from the other runs")
            folds.setdefault(target, fold)
            rows[(target, spec["id"])] = row
            print(json.dumps({"target": target, **{k: row[k] for k in ("id", "auroc", "auroc_ci", "wall_seconds")}}),
                  flush=True)
            for t in args.targets:
                block = result["targets"][t]
                block["runs"] = [rows[(t, s["id"])] for s in specs if (t, s["id"]) in rows]
                block["summary"] = target_summary(block["runs"])
            _write(result, out, t_start)
    result["env"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _write(result, out, t_start)
    print(f"wall time {result['wall_seconds'] / 60:.1f} min", flush=True)


def _init_worker() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    install_embedding_memo()


def run_one(spec: dict[str, Any], target: str, recipe: dict[str, Any], seed: int, data_dir: Path,
            work: Path) -> tuple[dict[str, Any], pd.Series]:
    """One cross-validation (in a worker process): its summary row and fold per sample."""
    t0, c0 = time.perf_counter(), time.process_time()
    cv = api.cross_validate(make_config(spec, target, recipe, seed, data_dir, work), k=5)
    fold = check_folds(cv)
    row = summarise(spec, cv, time.perf_counter() - t0)
    row["cpu_seconds"] = round(time.process_time() - c0, 1)
    return row, fold


def _write(result: dict[str, Any], out: Path, t_start: float) -> None:
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=_json_default))
    out.with_suffix(".md").write_text(to_markdown(result))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    main()
