"""Same-run leaderboard: for each README benchmark, the deep model, every classical learner and
the ``best`` preset (their ensemble, chosen on validation) on the same splits / folds / seeds.

Each case is ONE medmodal run of ``--preset best`` with ``model.ensemble.keep_all`` (members not
chosen stay in the checkpoint with weight 0). After the run, every member and the ensemble
predict the test rows (the official test split, or each fold's held-out rows), so every arm sees
exactly the same training, validation and test rows; the ensemble's weights were chosen on the
validation rows only. Figures: the headline metric with a bootstrap CI (patient-grouped),
the paired delta of ``best`` against the best single model and against the best classical
learner (both picked on the test rows: the strict comparison), win / tie / loss.

    MEDMODAL_DATA_DIR=../shared/data flock /work/wt/notes/cpu.lock nice -n 5 \\
        python benchmarks/leaderboard.py --cases whas500 gbsg2 breastmnist --merge

Resumable: every finished fold / split is kept under ``--work`` and reused; ``--merge`` keeps the
rows of the cases not run now. Writes benchmarks/results/leaderboard.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common as C
import numpy as np

from medmodal.config import load_config
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset
from medmodal.predictor import Predictor, predict_logits, to_probs
from medmodal.run import load_data, start_run, train_and_evaluate
from medmodal.run.data import assign_splits, fold_splits
from medmodal.utils.io import dump_json

NAME = "leaderboard"


@dataclass
class Case:
    """One benchmark: its config (``build(data_dir, work, seed)``), k folds (0: the data's own
    split), the headline metric, its published / previous reference and the README row."""

    name: str
    build: Callable[[Path, Path, int], dict[str, Any]]
    metric: str
    k: int = 0
    deep_seeds: int = 2
    ensemble_metric: str = "auto"
    reference: str = ""
    extra: list[str] = field(default_factory=list)


# -- the cases ---------------------------------------------------------------------------------
def survival_case(name: str, drop: tuple[str, ...] = ()) -> Case:
    import survival as S

    def build(data: Path, work: Path, seed: int) -> dict[str, Any]:
        from medmodal.datasets import prepare_dataset

        prepared = prepare_dataset(name, work / "data", None, {})
        n = len(prepared.manifest.read_text().splitlines()) - 1
        cfg = S.deep_config(name, n, seed, work, "cox")
        cfg["train"]["threads"] = 2
        if drop:  # the same rows and folds, the record without these columns
            schema = Schema.load(prepared.schema)
            rec = schema.modalities["record"]
            keep = [c for c in rec.columns or [] if c not in drop]
            cats = [c for c in rec.categorical if c not in drop]
            schema.modalities["record"] = rec.model_copy(
                update={"columns": keep, "categorical": cats}
            )
            cfg["data"] = {"manifest": str(prepared.manifest), "val_fraction": 0.2,
                           "schema": schema.model_dump(mode="json", exclude_none=True)}  # fmt: skip
        return cfg

    ref = {"whas500": "CoxPH 0.771", "gbsg2": "RSF 0.691", "veterans": "CoxPH 0.701",
           "aids": "RSF 0.750", "flchain": "GB 0.798"}[name]  # fmt: skip
    label = name + "".join(f"_no_{c}" for c in drop)
    note = (
        f"; without {', '.join(drop)} (flagged: equals the time of in-hospital deaths)"
        if drop
        else ""
    )
    return Case(label, build, "c_index", k=5, reference=f"survival.md best classical: {ref}{note}")


def medmnist_case(name: str, deep_seeds: int) -> Case:
    import medmnist as M

    def build(data: Path, work: Path, seed: int) -> dict[str, Any]:
        recipe = dict(M.RECIPES[name]["resnet18"])
        augment, encoder = recipe.pop("augment"), recipe.pop("encoder", {})
        prepared = get_dataset(name).prepare(work / "data", data)
        schema = Schema.load(prepared.schema)
        if augment:
            schema.modalities["image"].preprocess["augment"] = augment
        return {
            "name": name, "seed": seed, "output_dir": str(work / "run"),
            "data": {"manifest": str(prepared.manifest),
                     "schema": schema.model_dump(mode="json", exclude_none=True)},
            "model": {"encoders": {"image": {"name": "resnet18", **encoder}}},
            "train": {**recipe, "optimizer": "adam", "scheduler": "cosine", "monitor": "auroc"},
        }  # fmt: skip

    pub = M.PUBLISHED_RESNET18_28.get(name)
    ref = f"MedMNIST v2 ResNet-18 (28): AUC {pub[0]} / ACC {pub[1]}" if pub else ""
    return Case(name, build, "auroc", deep_seeds=deep_seeds, reference=ref, extra=["accuracy"])


def mitdb_case() -> Case:
    import mitdb as B

    def build(data: Path, work: Path, seed: int) -> dict[str, Any]:
        prepared = get_dataset("mitdb").prepare(work / "data", data)
        cfg = B.make_config("mitdb", prepared, ["signal", "rr"], seed, 8, work, 0, 2, "auroc")
        cfg["model"]["features"] = {}
        return cfg

    return Case("mitdb", build, "accuracy", deep_seeds=2, ensemble_metric="accuracy",
                reference="de Chazal 2004 (LDA): accuracy ~86 %; mitdb.md LDA 87.7 %",
                extra=["auroc", "balanced_accuracy"])  # fmt: skip


def ptbxl_case() -> Case:
    import ptbxl as P

    def build(data: Path, work: Path, seed: int) -> dict[str, Any]:
        prepared = get_dataset("ptbxl").prepare(
            work / "data", data, verify="csv", ecg_recipe="reference"
        )
        return {
            "name": "ptbxl", "seed": seed, "output_dir": str(work / "run"),
            "data": {"manifest": str(prepared.manifest), "schema": str(prepared.schema),
                     "modalities": ["ecg", "demo"]},
            "model": {"encoders": {m: P.ENCODERS[m] for m in ("ecg", "demo")}},
            "train": {**P.TRAIN, "threads": 2},
        }  # fmt: skip

    return Case("ptbxl", build, "auroc", deep_seeds=2,
                reference="ptbxl.md (8,976 records, reference recipe); Strodthoff et al. 2021 "
                "0.930 on the whole release")  # fmt: skip


def heart_case() -> Case:
    import heart_sounds as H
    import pandas as pd

    recipe = H.SETTINGS["logmel+crop/blocks"]  # issue 27's recipe (fixed before any run)

    def build(data: Path, work: Path, seed: int) -> dict[str, Any]:
        prepared = get_dataset("heart_sounds").prepare(
            work / "data", data, preprocess=recipe["preprocess"]
        )
        frame = pd.read_csv(prepared.manifest)
        frame["patient_id"] = H.block_groups(frame)
        manifest = prepared.manifest.with_name("manifest_blocks.csv")
        frame.to_csv(manifest, index=False)
        schema = Schema.load(prepared.schema)
        schema.modalities["audio"].preprocess["augment"] = dict(recipe["augment"])
        return {
            "name": "heart_sounds", "seed": seed, "output_dir": str(work / "run"),
            "data": {"manifest": str(manifest),
                     "schema": schema.model_dump(mode="json", exclude_none=True),
                     "val_fraction": len(H.CLASSES) / ((1000 // H.BLOCK) * 9 // 10)},
            "model": {"encoders": {"audio": {"name": "audio_cnn"}}},
            "train": {**H.TRAIN, **recipe["train"], "threads": 2},
        }  # fmt: skip

    return Case("heart_sounds", build, "accuracy", k=10, deep_seeds=1,
                ensemble_metric="accuracy", extra=["auroc"],
                reference="heart_sounds.md block folds: CNN 89.7 %, MFCC + SVM 93.3 %; "
                "issue 27: log-mel CNN recipe 95.5 %")  # fmt: skip


def covid_case(target: str = "finding") -> Case:
    """covid_cxr: ``finding`` (COVID-19 vs other, raw notes) or ``survival`` (died vs survived,
    diagnosis / outcome words masked in the notes, as the README's mortality row)."""
    import covid_cxr as V

    def build(data: Path, work: Path, seed: int) -> dict[str, Any]:
        args = argparse.Namespace(image_size=64, bootstrap=0, epochs=20)
        recipe = V.recipe_of(args)
        return {
            "name": f"covid_{target}", "seed": seed, "output_dir": str(work / "run"),
            "data": {"dataset": "covid_cxr", "data_dir": str(data),
                     "dataset_options": {"target": target, "image_size": 64,
                                         "image_augment": recipe["image_augment"],
                                         "mask_notes": target == "survival"},
                     "val_fraction": recipe["val_fraction"]},
            "model": {"encoders": recipe["encoders"], "modality_dropout": 0.1},
            "train": {**recipe["train"], "threads": 2},
        }  # fmt: skip

    if target == "finding":
        return Case("covid_cxr", build, "auroc", k=5, deep_seeds=1,
                    reference="covid_cxr.md: fusion 0.856, TF-IDF + records LR 0.828")  # fmt: skip
    return Case("covid_mortality", build, "auroc", k=5, deep_seeds=1,
                reference="survival.md: X-ray + masked notes + records 0.749; record-field LR 0.650")  # fmt: skip


CASES: dict[str, Callable[[], Case]] = {
    **{
        n: (lambda n=n: survival_case(n))
        for n in ("whas500", "gbsg2", "veterans", "aids", "flchain")
    },
    "whas500_no_los": lambda: survival_case("whas500", ("los",)),
    "breastmnist": lambda: medmnist_case("breastmnist", 3),
    "mitdb": mitdb_case,
    "ptbxl": ptbxl_case,
    "retinamnist": lambda: medmnist_case("retinamnist", 1),
    "heart_sounds": heart_case,
    "covid_cxr": covid_case,
    "covid_mortality": lambda: covid_case("survival"),
    "pneumoniamnist": lambda: medmnist_case("pneumoniamnist", 1),
}


# -- running -----------------------------------------------------------------------------------
def best_config(case: Case, data: Path, work: Path, seed: int) -> Any:
    cfg = case.build(data, work, seed)
    cfg["output_dir"] = str(work / "run")
    cfg.setdefault("evaluate", {}).update(bootstrap=0, report=False, ablation=False)
    cfg["model"].pop("features", None)
    cfg["model"]["ensemble"] = {"deep_seeds": case.deep_seeds, "keep_all": True,
                                "metric": case.ensemble_metric}  # fmt: skip
    return load_config(cfg)


def member_probs(ckpt: Path, loaded: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every member's and the ensemble's test probabilities (survival: risk) on ``rows``."""
    p = Predictor.load(ckpt)
    ds = loaded.dataset.subset(rows, p.processors)
    ds.finalize("memory", None)
    task, out = p.label_map.task, {}
    for about, member in zip(p.model.about, p.model.members, strict=True):
        z = predict_logits(member, ds, 256)
        out[about["name"]] = z[:, 0].numpy() if task == "survival" else to_probs(z, task).numpy()
    probs = p.predict_proba(ds)
    out["best"] = probs[:, 0] if task == "survival" else probs
    out["_weights"] = np.asarray(p.model.weights)
    return out


def run_part(case: Case, cfg: Any, loaded: Any, splits: np.ndarray, part: Path) -> dict[str, Any]:
    """One split (or fold): train the preset, then every arm's test predictions (cached)."""
    done = part / "arms.npz"
    if done.is_file():
        z = np.load(done, allow_pickle=False)
        return {k: z[k] for k in z.files} | C.read_json(part / "about.json")
    t0 = time.perf_counter()
    res = train_and_evaluate(loaded, splits, part, console=None)
    rows = np.flatnonzero(splits == "test")
    arms = member_probs(res.checkpoint, loaded, rows)
    arms["_rows"] = rows
    about = {"model": res.metrics["model"], "seconds": time.perf_counter() - t0}
    dump_json(part / "about.json", about)
    np.savez(done, **arms)
    (part / "best.pt").unlink(missing_ok=True)  # large; the arms are kept
    return arms | about


def run_case(case: Case, data: Path, work: Path, seed: int) -> dict[str, Any]:
    cfg = best_config(case, data, work, seed)
    ctx = start_run(cfg)
    loaded = load_data(ctx.cfg, ctx.run_dir)
    if case.k:
        folds, parts = fold_splits(loaded, case.k)
    else:
        folds, parts = None, [assign_splits(loaded)]
    results = [
        run_part(case, ctx.cfg, loaded, s, ctx.run_dir / f"part_{i}") for i, s in enumerate(parts)
    ]
    return summarise(case, loaded, results, folds)


# -- scoring -----------------------------------------------------------------------------------
def pooled(results: list[dict[str, Any]], n: int, survival: bool) -> dict[str, np.ndarray]:
    """Each arm's test predictions over every part, in row order (survival: each part's risks
    standardised, so parts fit by different models compare)."""
    arms = [k for k in results[0] if not k.startswith("_") and k not in ("model", "seconds")]
    out: dict[str, np.ndarray] = {}
    for a in arms:
        first = np.asarray(results[0][a])
        full = np.full((n, *first.shape[1:]), np.nan)
        for r in results:
            v = np.asarray(r[a], dtype=float)
            if survival:
                v = (v - v.mean()) / (v.std() or 1.0)
            full[r["_rows"]] = v
        out[a] = full
    return out


def kind_of(results: list[dict[str, Any]]) -> dict[str, str]:
    kinds = {c["name"]: c["kind"] for c in results[0]["model"]["candidates"]}
    return {**kinds, "best": "ensemble"}


def summarise(case: Case, loaded: Any, results: list[dict[str, Any]], folds: Any) -> dict[str, Any]:
    task, classes = loaded.label_map.task, list(loaded.label_map.classes)
    survival = task == "survival"
    rows = np.concatenate([r["_rows"] for r in results])
    y_all = np.asarray(loaded.dataset.labels)
    preds = {a: p[rows] for a, p in pooled(results, len(y_all), survival).items()}
    y, groups = y_all[rows], np.asarray(loaded.dataset.patients)[rows]
    metrics = [case.metric, *case.extra] if not survival else ["c_index"]
    arms = {a: C.scores(y, p, task, classes, metrics, groups=groups) for a, p in preds.items()}
    if survival:  # the headline: Harrell's C per test fold, averaged (as survival.md)
        for a in arms:
            arms[a]["c_index_fold_mean"] = fold_mean_c(results, a, y_all)
    kinds = kind_of(results)
    head = "c_index_fold_mean" if survival else case.metric
    singles = [a for a in arms if a != "best"]
    classical = [a for a in singles if kinds.get(a) == "classical"]
    deep = [a for a in singles if kinds.get(a) == "deep"]
    best_single = max(singles, key=lambda a: arms[a][head] or -1)
    best_classical = max(classical, key=lambda a: arms[a][head] or -1) if classical else None
    dmetric = "c_index" if survival else case.metric

    def delta(other: str | None) -> dict[str, Any] | None:
        if other is None:
            return None
        return C.delta(y, preds["best"], preds[other], task, classes, dmetric, groups=groups)

    row = {
        "case": case.name, "task": task, "metric": head, "n_test": int(len(rows)),
        "parts": len(results), "arms": arms, "kinds": kinds, "deep": deep,
        "best_single": best_single, "best_classical": best_classical,
        "delta_vs_single": delta(best_single), "delta_vs_classical": delta(best_classical),
        "weights": [dict(zip([m["name"] for m in r["model"]["members"]],
                             [round(m["weight"], 3) for m in r["model"]["members"]], strict=True))
                    for r in results],
        "val_scores": [{c["name"]: c.get("val_score") for c in r["model"]["candidates"]}
                       for r in results],
        "stacks": [r["model"]["selection"].get("stack") for r in results],
        "equal_weights": [r["model"]["selection"].get("equal_weights") for r in results],
        "reference": case.reference, "seconds": round(sum(r["seconds"] for r in results), 1),
        "provenance": C.provenance(),
    }  # fmt: skip
    row["verdict"] = verdict(row["delta_vs_classical"])
    return row


def fold_mean_c(results: list[dict[str, Any]], arm: str, y: np.ndarray) -> float:
    from medmodal.evaluate.survival import harrell_weighted

    vals = []
    for r in results:
        t, e = y[r["_rows"], 0].astype(float), y[r["_rows"], 1] > 0
        vals.append(
            float(harrell_weighted(t, e, np.asarray(r[arm], float), np.ones((1, len(t))))[0])
        )
    return float(np.mean(vals))


def verdict(d: dict[str, Any] | None) -> str:
    if d is None or d.get("low") is None:
        return "n/a"
    if d["low"] > 0:
        return "win"
    return "loss" if d["high"] < 0 else "tie"


# -- Markdown ----------------------------------------------------------------------------------
def _cell(arm: dict[str, Any], metric: str) -> str:
    v = arm.get(metric)
    base = metric.replace("_fold_mean", "")
    return C.with_ci(v, arm.get(f"{base}_ci")) if v is not None else "n/a"


def _delta(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    return f"{C.signed(d['delta'])} [{C.signed(d['low'])}, {C.signed(d['high'])}]"


def to_markdown(res: dict[str, Any]) -> str:
    rows = res.get("rows", [])
    head = ["benchmark", "metric", "deep (first seed)", "best classical (on test)", "best",
            "best - best classical [95% CI]", "best - best single", "verdict", "reference"]  # fmt: skip
    cells = []
    for r in rows:
        m, a = r["metric"], r["arms"]
        d0 = r["deep"][0] if r["deep"] else None
        bc = r["best_classical"]
        cells.append([
            r["case"], m, f"{_cell(a[d0], m)}" if d0 else "n/a",
            f"{bc}: {_cell(a[bc], m)}" if bc else "n/a", _cell(a["best"], m),
            _delta(r["delta_vs_classical"]), _delta(r["delta_vs_single"]), r["verdict"],
            r["reference"],
        ])  # fmt: skip
    wins = {v: sum(r["verdict"] == v for r in rows) for v in ("win", "tie", "loss")}
    lines = [
        "# Leaderboard: deep, classical and `best` (ensemble chosen on validation), same splits",
        "",
        "Each benchmark is one `--preset best` run per split or fold (`model.ensemble.keep_all`): "
        "the deep model (the README recipe; several seeds where noted), every classical learner "
        "of the task (medmodal's own: features fitted on the training rows, the learner on the "
        "training rows; validation rows never fitted on) and their ensemble, weighted by greedy "
        "selection with replacement on the validation predictions only (binary / multiclass: a "
        "cross-fitted logistic-regression stack replaces the weights when it scores higher out of "
        "fold; when the selection rows hold fewer than 10 rows of a class or 10 events, every "
        "member gets the same weight: a rule added in this issue after COVID-19 mortality (then a "
        "loss, -0.126) and heart sounds showed weights chosen on 0-1 rows of a class; every case "
        "that could meet it was re-run with it, and rows run before it say so). Every arm is then scored "
        "on the same test rows. CIs: 1000 patient-grouped bootstrap resamples; deltas paired. "
        "The best classical learner and the best single model are picked **on the test rows** "
        "(the strictest comparator for `best`). Survival: Harrell's C per test fold averaged (as "
        "survival.md); its CI / delta from the pooled fold-standardised risks.",
        "",
        f"`best` vs the best classical learner: **{wins['win']} win, {wins['tie']} tie, "
        f"{wins['loss']} loss** (win / loss: the paired 95% CI above / below 0).",
        "",
        *C.table(head, cells),
        "",
        *targets(rows),
        *details(rows),
        *not_run(res),
        "",
        *C.reproduce_section(rows, res.get("env", {})),
    ]
    return "\n".join(lines)


SURVIVAL = ("whas500", "gbsg2", "veterans", "aids", "flchain")


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 27's targets, each said plainly: met, missed (by how much) or not measured."""
    by = {r["case"]: r for r in rows}
    main = [r for r in rows if r["case"] != "whas500_no_los"]
    losses = [r["case"] for r in main if r["verdict"] == "loss"]
    wins = [r["case"] for r in main if r["verdict"] == "win"]
    surv = [by[c] for c in SURVIVAL if c in by]
    at_or_above = [r["case"] for r in surv if _best(r) >= _best_classical(r)]
    out = ["## Targets (same folds, nothing chosen on test)", ""]
    out.append(f"- `best` at or above the best classical learner (no loss beyond the paired CI) on "
               f"every benchmark: {len(main) - len(losses)} of {len(main)} measured"
               + (f"; **loses on {', '.join(losses)}**" if losses else "") + ".")  # fmt: skip
    out.append(f"- above it beyond the CI on at least half: {len(wins)} of {len(main)} measured "
               f"({', '.join(wins) or 'none'}): **{'met' if 2 * len(wins) >= len(main) and main else 'missed'}**.")  # fmt: skip
    out.append(f"- survival at or above the best classical model on at least 3 of 5 sets (point "
               f"estimate): {len(at_or_above)} of {len(surv)} measured ({', '.join(at_or_above) or 'none'}).")  # fmt: skip
    out += [
        _retina(by.get("retinamnist")),
        _breast(by.get("breastmnist")),
        _heart(by.get("heart_sounds")),
    ]
    return [*out, ""]


def _best(r: dict[str, Any]) -> float:
    return r["arms"]["best"][r["metric"]] or -1.0


def _best_classical(r: dict[str, Any]) -> float:
    bc = r["best_classical"]
    return r["arms"][bc][r["metric"]] if bc else -1.0


def _retina(r: dict[str, Any] | None) -> str:
    if r is None:
        return "- RetinaMNIST AUC >= 0.750 / ACC >= 0.531: not measured."
    auc, acc = r["arms"]["best"]["auroc"], r["arms"]["best"].get("accuracy")
    ok = auc >= 0.750 and (acc or 0) >= 0.531
    return (f"- RetinaMNIST AUC >= 0.750 / ACC >= 0.531: `best` {auc:.3f} / {acc:.3f} "
            f"(one seed): **{'met' if ok else 'missed'}** ({auc - 0.750:+.3f} / {(acc or 0) - 0.531:+.3f}).")  # fmt: skip


def _breast(r: dict[str, Any] | None) -> str:
    if r is None:
        return "- BreastMNIST mean AUC over 3 seeds >= 0.919: not measured."
    deep = [r["arms"][a]["auroc"] for a in r["deep"]]
    auc, mean = r["arms"]["best"]["auroc"], float(np.mean(deep))
    word = lambda v: "met" if v >= 0.919 else f"**missed** ({v - 0.919:+.3f})"  # noqa: E731
    return (f"- BreastMNIST mean AUC over 3 seeds >= 0.919: the deep model's {len(deep)} seeds "
            f"{', '.join(f'{v:.3f}' for v in deep)}, mean {mean:.3f}: {word(mean)}; `best` (their "
            f"ensemble with the classical learners, chosen on validation) {auc:.3f}: {word(auc)}.")  # fmt: skip


def _heart(r: dict[str, Any] | None) -> str:
    recipe = ("the deep member is issue 27's recipe (log-mel, 4 s tiled, random 2 s crops, time / "
              "frequency masks, AdamW + one-cycle for 30 epochs, mean over half-overlapping 2 s "
              "windows), fixed before any run; heart_sounds.md `logmel+crop/blocks`")  # fmt: skip
    if r is None:
        return f"- heart sounds (block-grouped) >= 95 %: not measured; {recipe}."
    acc = r["arms"]["best"]["accuracy"]
    deep = ", ".join(f"{100 * r['arms'][a]['accuracy']:.1f} %" for a in r["deep"])
    return (f"- heart sounds (block-grouped) >= 95 %: `best` {100 * acc:.1f} %: "
            f"**{'met' if acc >= 0.95 else 'missed'}** ({100 * (acc - 0.95):+.1f} points); "
            f"deep alone {deep}; {recipe}.")  # fmt: skip


def details(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Every arm", ""]
    for r in rows:
        m = r["metric"]
        arms = ", ".join(f"{a} ({r['kinds'].get(a)}) {_cell(v, m)}" for a, v in r["arms"].items())
        out += [f"- **{r['case']}** ({r['n_test']} test rows, {r['parts']} part(s), "
                f"{r['seconds'] / 60:.1f} min): {arms}. Weights per part: {r['weights']}."
                + _stacks(r) + _equal(r)]  # fmt: skip
    return out


def _equal(r: dict[str, Any]) -> str:
    eq = r.get("equal_weights")
    if eq is None:
        return " (run before model.ensemble.min_selection_rows existed)"
    n = sum(e is not None for e in eq)
    if not n:
        return ""
    first = next(e for e in eq if e is not None)
    return f" Equal weights in {n} of {len(eq)} part(s): {first.split(':')[0]}."


def _stacks(r: dict[str, Any]) -> str:
    stacks = r.get("stacks")
    if stacks is None:
        return " (run before the stack existed)" if r["task"] in ("binary", "multiclass") else ""
    if not any(stacks):
        return ""
    used = sum(bool(s and s["used"]) for s in stacks)
    oof = ", ".join("-" if not s else f"{s['oof_score']:.3f}" for s in stacks)
    where = ("not used: the weighted ensemble scored higher on validation" if not used
             else f"used in {used} of {len(stacks)} part(s), the weights elsewhere")  # fmt: skip
    return f" Stack (out-of-fold validation score per part: {oof}): {where}."


def not_run(res: dict[str, Any]) -> list[str]:
    done = {r["case"] for r in res.get("rows", [])}
    missing = [c for c in CASES if c not in done]
    if not missing:
        return []
    return ["", "## Not run", "",
            f"Not measured yet: {', '.join(missing)}. The machine has 2 CPU cores shared by "
            "several sessions and heavy runs take turns under one lock; these cases did not get "
            "their turn in the session that wrote this file. No figure is filled in for them; "
            "`python benchmarks/leaderboard.py --cases <case> --merge` adds one."]  # fmt: skip


# -- entry -------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    out = Path(args.out)
    old = C.previous_results(
        args, out, lambda p: C.read_json(p.with_suffix(".json")) or {}, to_markdown
    )
    if old is None:
        return
    t0 = time.perf_counter()
    data, work = C.data_dir(args), Path(args.work)
    res = {"benchmark": NAME, "env": C.environment(), "rows": list(old.get("rows", []))}
    for name in args.cases:
        case = CASES[name]()
        print(f"== {name}", file=sys.stderr, flush=True)
        row = run_case(case, data, work / name, args.seed)
        res["rows"] = C.merge_rows(res["rows"], [row], key=lambda r: r["case"])
        C.finish(out, res, old, args.cases, t0, to_markdown)  # after every case: resumable


if __name__ == "__main__":
    main()
