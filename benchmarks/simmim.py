"""SimMIM masked-image pretraining: where does it make small medical image sets learn more?

Every deep arm uses the same small ViT (MONAI ViT through medmodal's ``vit`` encoder; ENCODER_2D /
ENCODER_3D below) and, within a comparison, the same recipe, label subset, validation split and
seed; the only difference is the encoder's starting weights: random, or SimMIM-pretrained
(``api.pretrain``) on the *training split's images only* (no labels, no validation or test image;
``include_test`` is never used). One pretraining per data set (seed 0); fine-tuning with 3 seeds.

Groups (``--arms``):

* ``pneumoniamnist``, ``breastmnist``: label efficiency. Fine-tune with 1 %, 10 % and 100 % of
  the official training labels (a stratified subset per seed, at least 2 images per class; the same
  subset for every arm), best epoch on the full official validation split, metrics on the official
  test split: AUC and ACC with bootstrap 95 % CIs and the paired bootstrap difference
  (``medmodal.evaluate.paired_bootstrap_delta``, SimMIM - random) per seed. A linear probe (frozen
  encoder, linear head; 100 % labels) of the pretrained encoder against a frozen random one. The
  classical baseline on the same subsets: standardised pixels + logistic regression (C picked on
  validation AUC).
* ``covid_cxr``: X-ray alone, the patient-grouped 5 folds of ``benchmarks/covid_cxr.py`` (seed 0,
  inner validation 15 %), 64 px. The encoder is pretrained on PneumoniaMNIST's training images
  (resized to 64 px) and then, per fold, on that fold's training X-rays (the held-out fold's
  images never); random init on the same folds. Pooled out-of-fold AUC with patient-grouped CIs.
  ``covid_fused`` (runs inside ``covid_cxr``): the same two image encoders in late fusion with the
  raw notes and the record, as ``benchmarks/covid_cxr.py``'s ``late_raw`` arm.
* ``adrenalmnist3d``: 3D SimMIM (28^3 volumes, 7^3 patches) against random init, 10 % and 100 %
  labels, 3 seeds.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_cpu.lock python benchmarks/simmim.py
    ... python benchmarks/simmim.py --quick --out /tmp/simmim_quick   # every arm, tiny budget

Budget: about 45 minutes on 2 idle CPU cores (two worker processes, one thread each; see
``--workers``): PneumoniaMNIST ~30 min of one core, covid_cxr (with ``covid_fused``) ~25,
AdrenalMNIST3D ~15, BreastMNIST ~12 (estimated from the single-thread throughput of these ViTs,
~450 images/s at 28 px, ~330 at 64 px and 28^3, and 2-thread pilot runs). ``--quick`` runs every arm on a few hundred images and a few epochs (minutes; its
numbers are no result). Writes benchmarks/results/simmim.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import common as C
import numpy as np
import pandas as pd
import torch

from medmodal import api
from medmodal.config import load_config
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset
from medmodal.pretrain.run import PretrainResult
from medmodal.run import assign_splits, fold_splits, load_data, train_and_evaluate
from medmodal.utils.runtime import set_threads

NAME = "simmim"
GROUPS = ["pneumoniamnist", "covid_cxr", "adrenalmnist3d", "breastmnist"]
FRACTIONS = [0.01, 0.1, 1.0]
ENCODER_2D = {
    "name": "vit",
    "patch_size": 4,
    "hidden_size": 96,
    "mlp_dim": 384,
    "num_layers": 4,
    "num_heads": 3,
}
ENCODER_COVID = {**ENCODER_2D, "patch_size": 8}
ENCODER_3D = {**ENCODER_2D, "patch_size": 7}
AUGMENT_2D = {"flip": 0.5, "rotate": 10, "scale": 0.1}
LOGREG_C = [0.001, 0.01, 0.1, 1.0]
# pretraining (SimMIM) and fine-tuning recipes; "epochs" of fine-tuning per label fraction
RECIPES: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {
        "pretrain": {"epochs": 30, "batch_size": 128, "lr": 1e-3, "warmup_epochs": 3},
        "mask": {"ratio": 0.6, "patch_size": 4},
        "finetune": {1.0: (10, 128), 0.1: (30, 64), 0.01: (60, 16)},
        "probe_epochs": 10,
    },
    "breastmnist": {
        "pretrain": {"epochs": 150, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 10},
        "mask": {"ratio": 0.6, "patch_size": 4},
        "finetune": {1.0: (40, 64), 0.1: (80, 16), 0.01: (100, 8)},
        "probe_epochs": 40,
    },
    "covid_cxr": {
        "pretrain": {"epochs": 10, "batch_size": 128, "lr": 1e-3, "warmup_epochs": 1},
        "fold_pretrain": {"epochs": 30, "batch_size": 64, "lr": 5e-4, "warmup_epochs": 3},
        "mask": {"ratio": 0.6, "patch_size": 8},
        "finetune": {1.0: (30, 32)},
    },
    "adrenalmnist3d": {
        "pretrain": {"epochs": 40, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 4},
        "mask": {"ratio": 0.6, "patch_size": 7},
        "finetune": {1.0: (20, 64), 0.1: (60, 16)},
    },
}
FINETUNE = {"lr": 5e-4, "weight_decay": 0.05, "optimizer": "adamw", "scheduler": "cosine"}
QUICK = {"images": 256, "pretrain_epochs": 2, "finetune_epochs": 2, "seeds": [0]}


# -- data -------------------------------------------------------------------------------------------
def medmnist_data(name: str, data_dir: Path, work: Path, augment: dict | None) -> dict[str, Any]:
    """The ``data`` section of every config of one MedMNIST set (official splits)."""
    prepared = get_dataset(name).prepare(work / name / "data", data_dir)
    schema = Schema.load(prepared.schema)
    if augment:
        schema.modalities["image"].preprocess["augment"] = augment
    return {
        "manifest": str(prepared.manifest),
        "schema": schema.model_dump(mode="json", exclude_none=True),
    }


def label_subset(splits: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of the training rows of each class (at least 2), seeded; the other training
    rows become ``unused``. Validation and test rows are kept."""
    out = splits.astype(object).copy()
    if fraction >= 1.0:
        return out
    rng = np.random.default_rng(1000 * seed + int(round(fraction * 1000)))
    train = np.flatnonzero(splits == "train")
    keep: list[int] = []
    for c in np.unique(labels[train]):
        rows = train[labels[train] == c]
        n = max(2, int(round(fraction * len(rows))))
        keep += rng.choice(rows, size=min(n, len(rows)), replace=False).tolist()
    out[np.setdiff1d(train, keep)] = "unused"
    return out


# -- deep arms --------------------------------------------------------------------------------------
def arm_config(
    data: dict[str, Any],
    encoder: dict[str, Any],
    epochs: int,
    batch_size: int,
    seed: int,
    bootstrap: int,
    out: Path,
) -> Any:
    return load_config(
        {
            "name": out.name,
            "seed": seed,
            "output_dir": str(out),
            "data": data,
            "model": {"encoders": {"image": encoder}},
            "train": {
                **FINETUNE,
                "epochs": epochs,
                "batch_size": batch_size,
                "monitor": "auroc",
                "threads": 1,
            },
            "evaluate": {"bootstrap": bootstrap, "report": False, "ablation": False},
        }
    )


# -- --reuse: read back what an interrupted run finished ------------------------------------------
REUSE_ENV = "SIMMIM_REUSE"  # set by --reuse; spawned workers inherit it


def reusing() -> bool:
    return os.environ.get(REUSE_ENV) == "1"


def train_or_reuse(loaded: Any, splits: np.ndarray, cfg: Any) -> Any:
    """``train_and_evaluate``, or (``--reuse``) the metrics and test probabilities of a run
    directory that finished with the same resolved config (``reused`` is then True)."""
    out = Path(cfg.output_dir)
    done = (out / "metrics.json").is_file() and (out / "predictions_test.csv").is_file()
    if reusing() and done and (out / "config.yaml").is_file():
        if load_config(out / "config.yaml").model_dump() == cfg.model_dump():
            frame = pd.read_csv(out / "predictions_test.csv")
            probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
            if loaded.label_map.task == "binary":
                probs = probs[:, 1]
            metrics = json.loads((out / "metrics.json").read_text())
            return SimpleNamespace(metrics=metrics, test_probs=probs, reused=True)
    return train_and_evaluate(loaded.with_config(cfg), splits, out)


def pretrain_or_reuse(cfg: dict[str, Any]) -> Any:
    """``api.pretrain``, or (``--reuse``) the encoder checkpoint a finished pretraining with the
    same pretraining config wrote."""
    out = Path(cfg["output_dir"])
    ckpt = out / "encoder.pt"
    if reusing() and ckpt.is_file():
        body = torch.load(ckpt, map_location="cpu", weights_only=True)
        if body["pretrain_config"]["train"]["epochs"] == cfg["train"]["epochs"]:
            h = body["history"]
            seconds = float(sum(r.get("seconds", 0.0) for r in h))
            return PretrainResult(out, ckpt, h, int(body["images"]["images"]), seconds)
    return api.pretrain(cfg, progress="lines")


def finetune(loaded: Any, splits: np.ndarray, cfg: Any, **label: Any) -> dict[str, Any]:
    """Train one arm on its splits; the row: test AUC / ACC with CIs, probabilities, timing."""
    t0, c0 = time.perf_counter(), time.process_time()
    run = train_or_reuse(loaded, splits, cfg)
    test, ci = run.metrics["test"], run.metrics["test"].get("ci", {})
    return {
        **label,
        "seed": cfg.seed,
        "n_train": int((splits == "train").sum()),
        "auroc": test["auroc"],
        "auroc_ci": [ci.get("auroc", {}).get("low"), ci.get("auroc", {}).get("high")],
        "accuracy": test["accuracy"],
        "accuracy_ci": [ci.get("accuracy", {}).get("low"), ci.get("accuracy", {}).get("high")],
        "val_auroc": run.metrics.get("val", {}).get("auroc"),
        "best_epoch": run.metrics["best_epoch"],
        "epochs": run.metrics["epochs_run"],
        "test_prob": C.rounded(run.test_probs),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "reused": bool(getattr(run, "reused", False)),
        "provenance": C.provenance(),
    }


def pretrain_config(
    name: str, data: dict[str, Any], encoder: dict, recipe: dict, out: Path, quick: bool
) -> dict[str, Any]:
    train = {**recipe["pretrain"], "threads": 1}
    if quick:
        train |= {"epochs": QUICK["pretrain_epochs"], "max_images": QUICK["images"]}
        train["warmup_epochs"] = min(train["warmup_epochs"], 1)
    e = train["epochs"]
    return {
        "name": f"simmim_{name}",
        "seed": 0,
        "output_dir": str(out),
        "data": data,
        "encoder": encoder,
        "mask": recipe["mask"],
        "train": train,
        "preview": {"epochs": sorted({1, max(1, e // 2), e}), "images": 8},
    }


def pretrain_record(name: str, run: Any) -> dict[str, Any]:
    return {
        "dataset": name,
        "images": run.images,
        "epochs": len(run.history) - 1,
        "loss_before": run.eval_loss_before,
        "loss_after": run.eval_loss_after,
        "history": [
            {k: r.get(k) for k in ("epoch", "loss", "eval_loss", "images_per_s")}
            for r in run.history
        ],
        "wall_seconds": round(run.seconds, 1),
        "run_dir": str(run.run_dir),
        "provenance": C.provenance(),
    }


def quick_splits(splits: np.ndarray, seed: int = 0) -> np.ndarray:
    """``--quick``: at most QUICK["images"] training rows and 128 validation / test rows."""
    out = splits.astype(object).copy()
    rng = np.random.default_rng(seed)
    for split, n in (("train", QUICK["images"]), ("val", 128), ("test", 128)):
        rows = np.flatnonzero(out == split)
        if len(rows) > n:
            out[rng.choice(rows, size=len(rows) - n, replace=False)] = "unused"
    return out


def medmnist_group(
    name: str, data_dir: Path, work: Path, seeds: list[int], bootstrap: int, quick: bool
) -> dict[str, Any]:
    """Pretrain on the training images, then every fine-tune / probe / classical arm."""
    set_threads(1)
    recipe, is3d = RECIPES[name], name.endswith("3d")
    encoder = ENCODER_3D if is3d else ENCODER_2D
    data = medmnist_data(name, data_dir, work, {"flip": 0.5} if is3d else AUGMENT_2D)
    pre = pretrain_or_reuse(
        pretrain_config(name, data, encoder, recipe, work / name / "pretrain", quick)
    )
    loaded = load_data(arm_config(data, encoder, 1, 8, 0, 0, work / name / "load"), work / name)
    splits = assign_splits(loaded)
    if quick:
        splits = quick_splits(splits)
    labels = np.asarray(loaded.dataset.labels)
    inits = {"random": encoder, "simmim": {**encoder, "init": str(pre.checkpoint)}}
    rows: list[dict[str, Any]] = []
    for fraction, (epochs, batch) in recipe["finetune"].items():
        for seed in seeds:
            sub = label_subset(splits, labels, fraction, seed)
            for init, enc in inits.items():
                out = work / name / f"{init}_{fraction:g}_seed{seed}"
                e = QUICK["finetune_epochs"] if quick else epochs
                cfg = arm_config(data, enc, e, batch, seed, bootstrap, out)
                label = {"dataset": name, "arm": "finetune", "init": init, "fraction": fraction}
                rows.append(finetune(loaded, sub, cfg, **label))
                _say(rows[-1])
            rows += classical_rows(name, loaded, sub, fraction, seed, bootstrap)
    if "probe_epochs" in recipe:
        rows += probe_rows(name, loaded, splits, data, inits, recipe, seeds, bootstrap, work, quick)
    test = np.flatnonzero(splits == "test")
    index = {
        "sample_id": [loaded.dataset.ids[i] for i in test],
        "y": labels[test].tolist(),
        "classes": loaded.label_map.classes,
    }
    return {"pretrain": [pretrain_record(name, pre)], "rows": rows, "index": {name: index}}


def probe_rows(
    name: str,
    loaded: Any,
    splits: np.ndarray,
    data: dict[str, Any],
    inits: dict[str, dict[str, Any]],
    recipe: dict[str, Any],
    seeds: list[int],
    bootstrap: int,
    work: Path,
    quick: bool,
) -> list[dict[str, Any]]:
    """Linear probe, 100 % labels: frozen encoder (pretrained or random) + a trained linear head."""
    rows = []
    for seed in seeds:
        for init, enc in inits.items():
            out = work / name / f"probe_{init}_seed{seed}"
            epochs = QUICK["finetune_epochs"] if quick else recipe["probe_epochs"]
            cfg = arm_config(data, {**enc, "freeze_init": True}, epochs, 128, seed, bootstrap, out)
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e-2})})
            label = {"dataset": name, "arm": "probe", "init": init, "fraction": 1.0}
            rows.append(finetune(loaded, splits, cfg, **label))
            _say(rows[-1])
    return rows


def _say(row: dict[str, Any]) -> None:
    keys = ("dataset", "arm", "init", "fraction", "seed", "n_train", "auroc", "accuracy")
    print({k: row.get(k) for k in keys} | {"wall_s": row.get("wall_seconds")}, flush=True)


# -- classical baseline on the same subsets -----------------------------------------------------------
def pixel_matrix(loaded: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every loaded image's pixels (as read and resized, before normalisation) and its label."""
    ds = loaded.dataset
    x = np.stack([np.asarray(r["image"], dtype=np.float32).reshape(-1) for r in ds.raw])
    return x, np.asarray(ds.labels).astype(int)


def logreg_pixels(
    x: np.ndarray, y: np.ndarray, splits: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, float]:
    """Standardised pixels + logistic regression fitted on the ``train`` rows, C picked on the
    ``val`` rows' AUC; the ``test`` rows' probabilities and the C used."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    part = {s: np.flatnonzero(splits == s) for s in ("train", "val", "test")}
    fitted, val_auc = {}, {}
    for c in LOGREG_C:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        fitted[c] = model.fit(x[part["train"]], y[part["train"]])
        p = fitted[c].predict_proba(x[part["val"]])[:, 1]
        val_auc[c] = C.scores(y[part["val"]], p, "binary", classes, ["auroc"], n_boot=0)["auroc"]
    best = max(LOGREG_C, key=lambda c: val_auc[c] or 0.0)
    return fitted[best].predict_proba(x[part["test"]])[:, 1], best


def classical_rows(
    name: str, loaded: Any, splits: np.ndarray, fraction: float, seed: int, bootstrap: int
) -> list[dict[str, Any]]:
    """The classical baseline on the deep arms' training subset, validation and test rows."""
    t0 = time.perf_counter()
    x, y = pixel_matrix(loaded)
    classes = loaded.label_map.classes
    prob, c = logreg_pixels(x, y, splits, classes)
    test = y[splits == "test"]
    s = C.scores(test, prob, "binary", classes, ["auroc", "accuracy"], n_boot=bootstrap)
    return [
        {
            "dataset": name,
            "arm": "classical",
            "init": "logreg_pixels",
            "fraction": fraction,
            "seed": seed,
            "n_train": int((splits == "train").sum()),
            **s,
            "C": c,
            "test_prob": C.rounded(prob),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "provenance": C.provenance(),
        }
    ]


# -- covid_cxr: X-ray alone, patient-grouped 5 folds ----------------------------------------------------
COVID_AUGMENT = {
    "flip": 0.5,
    "rotate": 10,
    "scale": 0.1,
    "intensity": 0.1,
}  # as benchmarks/covid_cxr.py
K = 5


def covid_data(data_dir: Path, modalities: list[str] | None) -> dict[str, Any]:
    options = {"target": "finding", "image_size": 64, "image_augment": COVID_AUGMENT}
    return {
        "dataset": "covid_cxr",
        "data_dir": str(data_dir),
        "dataset_options": options,
        "modalities": modalities,
        "val_fraction": 0.15,
    }


def covid_config(data: dict, image: dict, seed: int, out: Path, quick: bool) -> Any:
    """X-ray alone, or (data with every modality) late fusion of X-ray + raw note + record as in
    benchmarks/covid_cxr.py; class-balanced loss, ``bootstrap`` 0 (pooled later)."""
    epochs, batch = RECIPES["covid_cxr"]["finetune"][1.0]
    model: dict[str, Any] = {"encoders": {"image": image}}
    if data["modalities"] is None:
        model["encoders"] |= {
            "note": {"name": "embedding_mlp", "out_dim": 64, "dropout": 0.2},
            "record": {"name": "mlp"},
        }
        model |= {"fusion": {"name": "late"}, "modality_dropout": 0.1}
    train = {**FINETUNE, "epochs": QUICK["finetune_epochs"] if quick else epochs}
    train |= {"batch_size": batch, "class_weights": "balanced", "threads": 1}
    return load_config(
        {
            "name": out.name,
            "seed": seed,
            "output_dir": str(out),
            "data": data,
            "model": model,
            "train": train,
            "evaluate": {"bootstrap": 0, "report": False, "ablation": False},
        }
    )


def covid_group(
    data_dir: Path, work: Path, seeds: list[int], bootstrap: int, quick: bool, fused: bool
) -> dict[str, Any]:
    """Pretrain on PneumoniaMNIST (64 px), then per fold on the fold's training X-rays; fine-tune
    random vs pretrained on the folds of benchmarks/covid_cxr.py (X-ray alone, and with
    ``fused`` late fusion with the notes and record); pooled out-of-fold metrics."""
    set_threads(1)
    recipe, home = RECIPES["covid_cxr"], work / "covid_cxr"
    pn = medmnist_data("pneumoniamnist", data_dir, home, AUGMENT_2D)
    pn["schema"]["modalities"]["image"]["preprocess"]["size"] = [64, 64]
    stage1 = pretrain_or_reuse(
        pretrain_config("pneumoniamnist_64px", pn, ENCODER_COVID, recipe, home / "stage1", quick)
    )
    arms = {"finetune_cv": covid_data(data_dir, ["image"])}
    if fused:
        arms["fused_cv"] = covid_data(data_dir, None)
    loaded = {
        a: load_data(covid_config(d, ENCODER_COVID, 0, home / a, quick), home / a)
        for a, d in arms.items()
    }
    folds, fold_parts = fold_splits(loaded["finetune_cv"], K)
    for a, ld in loaded.items():  # every arm on the same rows and folds
        assert ld.dataset.ids == loaded["finetune_cv"].dataset.ids, a
        assert (fold_splits(ld, K)[0] == folds).all(), a
    records = [pretrain_record("pneumoniamnist_64px", stage1)]
    ld0 = loaded["finetune_cv"]
    x, y = pixel_matrix(ld0)
    oof: dict[tuple[str, str, int], np.ndarray] = {
        ("classical", "logreg_pixels", 0): np.full(len(y), np.nan)
    }
    for f, splits in enumerate(fold_parts):
        splits = quick_splits(splits, f) if quick else splits
        prob, _ = logreg_pixels(x, y, splits, ld0.label_map.classes)
        oof[("classical", "logreg_pixels", 0)][np.flatnonzero(splits == "test")] = prob
        stage2 = _fold_pretrain(ld0, splits, f, str(stage1.checkpoint), recipe, home, quick)
        records.append(pretrain_record(f"covid_cxr_fold{f}", stage2))
        inits = {
            "random": ENCODER_COVID,
            "simmim": {**ENCODER_COVID, "init": str(stage2.checkpoint)},
        }
        for (arm, data), seed, (init, enc) in itertools.product(arms.items(), seeds, inits.items()):
            cfg = covid_config(data, enc, seed, home / f"{arm}_{init}_fold{f}_seed{seed}", quick)
            run = train_or_reuse(loaded[arm], splits, cfg)
            probs = oof.setdefault((arm, init, seed), np.full(len(ld0.dataset), np.nan))
            probs[np.flatnonzero(splits == "test")] = run.test_probs
            print({"covid fold": f, "arm": arm, "init": init, "seed": seed}, flush=True)
    return _covid_rows(loaded["finetune_cv"], folds, oof, records, bootstrap)


def _fold_pretrain(
    loaded: Any, splits: np.ndarray, fold: int, init: str, recipe: dict, home: Path, quick: bool
) -> Any:
    """Continue pretraining on this fold's training X-rays: a manifest of the fold's training rows
    only (neither its inner validation rows nor the held-out fold's; the fine-tuning run checks
    this through ``run.pretrained``)."""
    ds = loaded.dataset
    train_ids = {ds.ids[i] for i in np.flatnonzero(splits == "train")}
    frame = loaded.frame
    frame = frame[frame[loaded.schema.id_column].astype(str).isin(train_ids)].copy()
    frame["pretrain_split"] = "train"
    out = home / f"stage2_fold{fold}"
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "manifest.csv", index=False)
    schema = loaded.schema.model_copy(update={"split_column": "pretrain_split"})
    data = {
        "manifest": str(out / "manifest.csv"),
        "schema": schema.model_dump(mode="json", exclude_none=True),
    }
    r = {**recipe, "pretrain": recipe["fold_pretrain"]}
    cfg = pretrain_config(f"covid_fold{fold}", data, ENCODER_COVID, r, out, quick)
    cfg["encoder"] = {**cfg["encoder"], "init": init}
    return pretrain_or_reuse(cfg)


def _covid_rows(
    loaded: Any,
    folds: np.ndarray,
    oof: dict[tuple[str, str, int], np.ndarray],
    records: list[dict[str, Any]],
    bootstrap: int,
) -> dict[str, Any]:
    ds = loaded.dataset
    y, groups = np.asarray(ds.labels).astype(int), np.asarray(ds.patients)
    scored = np.flatnonzero(~np.isnan(next(iter(oof.values()))))  # --quick leaves rows out
    classes = loaded.label_map.classes
    rows = []
    for (arm, init, seed), prob in oof.items():
        s = C.scores(
            y[scored],
            prob[scored],
            "binary",
            classes,
            ["auroc", "accuracy"],
            groups=groups[scored],
            n_boot=bootstrap,
        )
        rows.append(
            {
                "dataset": "covid_cxr",
                "arm": arm,
                **({"for_arm": "finetune_cv"} if arm == "classical" else {}),
                "init": init,
                "fraction": 1.0,
                "seed": seed,
                "n_train": None,
                **s,
                "test_prob": C.rounded(prob[scored]),
                "provenance": C.provenance(),
            }
        )
    index = {
        "sample_id": [ds.ids[i] for i in scored],
        "patient_id": [ds.patients[i] for i in scored],
        "y": y[scored].tolist(),
        "fold": folds[scored].tolist(),
        "classes": classes,
    }
    return {"pretrain": records, "rows": rows, "index": {"covid_cxr": index}}


# -- comparisons --------------------------------------------------------------------------------------
def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["dataset"], r["arm"], r["init"], r["fraction"], r["seed"])


def comparisons(res: dict[str, Any], n_boot: int) -> list[dict[str, Any]]:
    """Paired bootstrap deltas on the same test rows: SimMIM - random (AUC and ACC), and SimMIM -
    the classical baseline (AUC), per data set, arm, label fraction and seed."""
    rows = {_key(r): r for r in res["rows"]}
    out = []
    for (ds, arm, init, frac, seed), r in rows.items():
        if init != "simmim" or ds not in res.get("index", {}):
            continue
        idx = res["index"][ds]
        y, classes = np.asarray(idx["y"]), idx["classes"]
        groups = idx.get("patient_id")
        others = [("random", (ds, arm, "random", frac, seed), ("auroc", "accuracy"))]
        if arm != "fused_cv":  # a fusion vs an image-only classical model would say little
            key = (ds, "classical", "logreg_pixels", frac, seed)
            others.append(("logreg_pixels", key, ("auroc",)))
        for name, key, metrics in others:
            if key not in rows:
                continue
            for metric in metrics:
                d = C.delta(
                    y,
                    r["test_prob"],
                    rows[key]["test_prob"],
                    "binary",
                    classes,
                    metric,
                    groups=groups,
                    n_boot=n_boot,
                )
                out.append(
                    {
                        "dataset": ds,
                        "arm": arm,
                        "fraction": frac,
                        "seed": seed,
                        "versus": name,
                        "metric": metric,
                        **d,
                    }
                )
    return out


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per data set, arm and label fraction: each init's mean and sd over seeds, and the
    SimMIM - random AUC deltas (mean, and how many seeds' paired CIs exclude 0)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in res["rows"]:
        if r["arm"] == "classical":
            key = (r["dataset"], r.get("for_arm", "finetune"), r["fraction"])
        else:
            key = (r["dataset"], r["arm"], r["fraction"])
        groups.setdefault(key, {}).setdefault(r["init"], []).append(r)
    out = []
    for (ds, arm, frac), by_init in groups.items():
        deltas = [
            c
            for c in res.get("comparisons", [])
            if (c["dataset"], c["arm"], c["fraction"]) == (ds, arm, frac)
            and c["versus"] == "random"
            and c["metric"] == "auroc"
        ]
        row: dict[str, Any] = {"dataset": ds, "arm": arm, "fraction": frac}
        for init, rs in by_init.items():
            auc = [x["auroc"] for x in rs if x["auroc"] is not None]
            acc = [x["accuracy"] for x in rs if x["accuracy"] is not None]
            row[init] = {
                "seeds": [x["seed"] for x in rs],
                "n_train": rs[0].get("n_train"),
                "auroc_mean": float(np.mean(auc)) if auc else None,
                "auroc_sd": float(np.std(auc, ddof=1)) if len(auc) > 1 else None,
                "accuracy_mean": float(np.mean(acc)) if acc else None,
                "accuracy_sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
            }
        if deltas:
            row["delta_auroc_mean"] = float(np.mean([c["delta"] for c in deltas]))
            row["seeds_ci_above_0"] = sum(1 for c in deltas if (c["low"] or 0) > 0)
            row["seeds_ci_below_0"] = sum(1 for c in deltas if (c["high"] or 0) < 0)
            row["n_seeds"] = len(deltas)
        out.append(row)
    return out


def derive(res: dict[str, Any], n_boot: int = 1000) -> None:
    res["comparisons"] = comparisons(res, n_boot)
    res["summary"] = summary(res)


# -- Markdown ------------------------------------------------------------------------------------------
def _mean_sd(s: dict[str, Any] | None, key: str = "auroc") -> str:
    if not s or s.get(f"{key}_mean") is None:
        return "n/a"
    sd = s.get(f"{key}_sd")
    return f"{s[f'{key}_mean']:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def _pct(f: float) -> str:
    return f"{100 * f:g} %"


def _summary_table(res: dict[str, Any], arms: tuple[str, ...]) -> list[str]:
    body = []
    for s in res.get("summary", []):
        if s["arm"] not in arms:
            continue
        d = s.get("delta_auroc_mean")
        ci = (
            f"{s['seeds_ci_above_0']} / {s['n_seeds']} above 0, {s['seeds_ci_below_0']} below"
            if d is not None
            else "n/a"
        )
        n = (s.get("random") or s.get("simmim") or {}).get("n_train")
        body.append(
            [
                s["dataset"],
                _pct(s["fraction"]),
                n if n is not None else "folds",
                _mean_sd(s.get("random")),
                _mean_sd(s.get("simmim")),
                C.signed(d),
                ci,
                _mean_sd(s.get("random"), "accuracy"),
                _mean_sd(s.get("simmim"), "accuracy"),
                _mean_sd(s.get("logreg_pixels")),
            ]
        )
    head = [
        "data set",
        "labels",
        "training images",
        "random init AUC",
        "SimMIM AUC",
        "Δ AUC (mean of seeds)",
        "seeds whose paired 95% CI excludes 0",
        "random ACC",
        "SimMIM ACC",
        "logreg on pixels AUC",
    ]
    return C.table(head, body) if body else ["(not run)"]


def _target_lines(res: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against the numbers."""
    s10 = [s for s in res.get("summary", []) if s["arm"] == "finetune" and s["fraction"] == 0.1]
    hit = [
        s["dataset"]
        for s in s10
        if (s.get("delta_auroc_mean") or 0) >= 0.03 and s.get("seeds_ci_above_0", 0) > 0
    ]
    lines = [
        "- Target 1 (10 % of the labels: SimMIM beats random init by >= 0.03 AUC with a paired CI "
        f"that excludes 0 on at least one set): **{'met' if hit else 'not met'}**"
        + (f" on {', '.join(hit)}." if hit else ".")
    ]
    for s in res.get("summary", []):
        if s["arm"] != "finetune" or s["fraction"] != 1.0 or "simmim" not in s:
            continue
        r, p = s.get("random") or {}, s["simmim"]
        spread = max(r.get("auroc_sd") or 0, p.get("auroc_sd") or 0)
        worse = (r.get("auroc_mean") or 0) - (p.get("auroc_mean") or 0)
        word = "worse beyond the seed spread" if worse > spread else "not worse beyond it"
        lines.append(
            f"- Target 2 (100 % labels, {s['dataset']}): SimMIM {_mean_sd(p)} vs random "
            f"{_mean_sd(r)} (largest seed sd {spread:.3f}): {word}."
        )
    return lines


def _rows_table(res: dict[str, Any]) -> list[str]:
    comps = {
        (c["dataset"], c["arm"], c["fraction"], c["seed"], c["versus"], c["metric"]): c
        for c in res.get("comparisons", [])
    }
    body = []
    for r in res["rows"]:
        d = comps.get((r["dataset"], r["arm"], r["fraction"], r["seed"], "random", "auroc"))
        dl = comps.get((r["dataset"], r["arm"], r["fraction"], r["seed"], "logreg_pixels", "auroc"))
        body.append(
            [
                r["dataset"],
                r["arm"],
                r["init"],
                _pct(r["fraction"]),
                r["seed"],
                r.get("n_train") if r.get("n_train") is not None else "folds",
                C.with_ci(r["auroc"], r.get("auroc_ci")),
                C.with_ci(r["accuracy"], r.get("accuracy_ci")),
                C.verdict(d, "SimMIM", "random") if d and r["init"] == "simmim" else "",
                C.verdict(dl, "SimMIM", "logreg") if dl and r["init"] == "simmim" else "",
                f"{r['best_epoch']} / {r['epochs']}" if r.get("epochs") else "",
            ]
        )
    head = [
        "data set",
        "arm",
        "init",
        "labels",
        "seed",
        "train",
        "test AUC [95% CI]",
        "test ACC [95% CI]",
        "paired Δ AUC vs random",
        "paired Δ AUC vs logreg",
        "best epoch / epochs",
    ]
    return C.table(head, body)


def _pretrain_table(res: dict[str, Any]) -> list[str]:
    body = [
        [
            p["dataset"],
            p["images"],
            p["epochs"],
            f"{p['loss_before']:.4f} -> {p['loss_after']:.4f}",
            f"{np.mean([h['images_per_s'] for h in p['history'][1:]]):.0f}",
            f"{p['wall_seconds'] / 60:.1f} min",
        ]
        for p in res.get("pretrain", [])
    ]
    head = [
        "pretraining images",
        "images",
        "epochs",
        "L1 on hidden pixels, fixed images + masks (before -> after)",
        "images/s",
        "wall time",
    ]
    return C.table(head, body)


def _covid_reference(ctx: dict[str, Any], key: str, what: str) -> str:
    r = ctx.get(key)
    if not r:
        return ""
    return (
        f"For reference, `benchmarks/covid_cxr.py`'s {what} on the same folds: AUC "
        f"{C.with_ci(r['auroc'], r['auroc_ci'])}."
    )


PROTOCOL = (
    "Same encoder (a small MONAI ViT: "
    f"`{ {k: v for k, v in ENCODER_2D.items() if k != 'name'} }`, 3D and 64-px variants with "
    "7^3 / 8^2 patches), same recipe, label subset, validation split and seed in every "
    "comparison; only the starting weights differ. SimMIM pretraining (`api.pretrain`) saw the "
    "training split's images only (no labels; never a validation or test image). One "
    "pretraining per data set (seed 0); the seeds vary the label subset and the fine-tuning. "
    "Epochs picked on the full official validation split (also at 1 % labels: the validation "
    "labels are not counted in the label budget, as usual in label-efficiency studies). "
    "Metrics on the official test split; 95% CIs from 1000 bootstrap resamples; paired "
    "deltas from `medmodal.evaluate.paired_bootstrap_delta` on the same test images."
)
CAVEATS = [
    "- One pretraining run per data set (seed 0): the seed spread covers the label subset and "
    "the fine-tuning, not the pretraining.",
    "- A small ViT on 28-px images and short pretraining (tens of epochs, CPU budget); SimMIM's "
    "published gains come from hundreds of epochs on far more images. A ViT from scratch is a "
    "weak starting point on small sets, so gains over it say little about gains over a "
    "convolutional network (see `medmnist.md` for ResNet-18 on the same splits).",
    "- covid_cxr: an image-only score here measures the image *source* (hospital, date) as much as "
    "the disease; see `covid_cxr.md`.",
]


def _reuse_caveat(res: dict[str, Any]) -> list[str]:
    """Say which rows were read back (``--reuse``) from an interrupted run's finished folders."""
    n = sum(bool(r.get("reused")) for r in res.get("rows", []))
    if not n:
        return []
    return [
        f"- {n} fine-tuning rows (and every finished pretraining) were read back with `--reuse` "
        "from the run folders of an interrupted run of the same commit and configs (metrics and "
        "test probabilities as that run wrote them); their wall time is not measured, so the "
        "invocation's wall time understates the budget (the pretraining table keeps the "
        "measured times)."
    ]


def _findings(res: dict[str, Any]) -> list[str]:
    """One sentence per data set, arm and label fraction: the gain over random init and how
    the classical baseline compares."""
    out = []
    for s in res.get("summary", []):
        if "simmim" not in s or s.get("delta_auroc_mean") is None:
            continue
        sim, lr = s["simmim"], s.get("logreg_pixels")
        above, below, n = s["seeds_ci_above_0"], s["seeds_ci_below_0"], s["n_seeds"]
        if above and not below:
            word = "helps"
        elif below and not above:
            word = "**hurts**"
        else:
            word = "makes no clear difference"
        line = (
            f"- {s['dataset']}, {s['arm']}, {_pct(s['fraction'])} labels: SimMIM {word} "
            f"(Δ AUC {C.signed(s['delta_auroc_mean'])}; paired CI above 0 in {above} / {n} "
            f"seeds, below 0 in {below})"
        )
        if lr and lr.get("auroc_mean") is not None and sim.get("auroc_mean") is not None:
            gap = sim["auroc_mean"] - lr["auroc_mean"]
            line += f"; logistic regression on pixels {_mean_sd(lr)} ({C.signed(gap)} for SimMIM)"
        out.append(line + ".")
    return out or ["(no comparison yet)"]


def _covid_section(res: dict[str, Any]) -> list[str]:
    ctx = res.get("covid_context") or {}
    return [
        "## COVID-19 chest X-ray alone (patient-grouped 5-fold CV, pooled out-of-fold)",
        "",
        "Folds of `benchmarks/covid_cxr.py` (seed 0, asserted equal); the encoder was pretrained "
        "on PneumoniaMNIST's training images at 64 px and then, per fold, on that fold's training "
        "X-rays (never the held-out fold's). AUC CIs and deltas are patient-grouped. Classical: "
        "logistic regression on the 64-px pixels, C picked on each fold's inner validation split.",
        "",
        *_summary_table(res, ("finetune_cv",)),
        "",
        _covid_reference(ctx, "image", "image-only baseline CNN"),
        "",
        "### With the notes and record (late fusion, raw notes, as benchmarks/covid_cxr.py)",
        "",
        *_summary_table(res, ("fused_cv",)),
        "",
        _covid_reference(ctx, "late_raw", "late fusion with the baseline CNN"),
        "",
    ]


def to_markdown(res: dict[str, Any]) -> str:
    quick = " (**--quick run: tiny budget, not a result**)" if res.get("quick") else ""
    lines = [
        f"# SimMIM masked-image pretraining: random init vs pretrained{quick}",
        "",
        PROTOCOL,
        "",
        "## Targets",
        "",
        *_target_lines(res),
        "",
        "## Where it helps and where it does not",
        "",
        *_findings(res),
        "",
        "## Label efficiency (fine-tuning)",
        "",
        *_summary_table(res, ("finetune",)),
        "",
        "## Linear probe (frozen encoder + linear head, 100 % labels)",
        "",
        *_summary_table(res, ("probe",)),
        "",
        *_covid_section(res),
        "## Pretraining runs",
        "",
        *_pretrain_table(res),
        "",
        "Reconstruction grids (input / mask / reconstruction / original) and loss curves are in "
        "each run folder (`preview_epoch_*.png`, `loss.png`) under the work directory; the last "
        "grid and the loss curve of each data set's pretraining: "
        + ", ".join(
            f"[{name}]({name})" for names in res.get("figures", {}).values() for name in names
        )
        + ".",
        "",
        "## Caveats",
        "",
        *CAVEATS,
        *_reuse_caveat(res),
        "",
        "## Every run",
        "",
        *_rows_table(res),
        "",
        *C.reproduce_section(res.get("rows", []), res.get("env", {})),
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------
def run_group(
    name: str,
    data_dir: Path,
    work: Path,
    seeds: list[int],
    bootstrap: int,
    quick: bool,
    fused: bool = False,
) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "covid_cxr":  # one seed, as benchmarks/covid_cxr.py
        out = covid_group(data_dir, work, seeds[:1], bootstrap, quick, fused)
    else:
        out = medmnist_group(name, data_dir, work, seeds, bootstrap, quick)
    out["timing"] = {
        name: {
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - c0, 1),
        }
    }
    return out


def covid_context(index: dict[str, Any] | None) -> dict[str, Any] | None:
    """The image-only and late-fusion rows of benchmarks/covid_cxr.json, after checking that
    they used the same folds."""
    old = C.read_json(C.RESULTS / "covid_cxr.json")
    block = (old or {}).get("targets", {}).get("finding")
    if not block or index is None or "index" not in block:
        return None
    theirs = dict(zip(block["index"]["sample_id"], block["index"]["fold"], strict=True))
    ours = dict(zip(index["sample_id"], index["fold"], strict=True))
    if set(ours) != set(theirs):
        return None  # --quick: a subset of the rows
    C.same_folds(ours, theirs, "covid_cxr folds")
    runs = {r["id"]: r for r in block["runs"]}
    return {
        k: {"auroc": runs[k]["auroc"], "auroc_ci": runs[k]["auroc_ci"]}
        for k in ("image", "late_raw")
        if k in runs
    }


def copy_figures(res: dict[str, Any], out: Path, datasets: list[str]) -> dict[str, list[str]]:
    """The last reconstruction grid and the loss curve of each data set's pretraining, copied
    beside the results (``<out>_<data set>_preview.png`` / ``_loss.png``)."""
    import shutil

    figures = {}
    for p in res.get("pretrain", []):
        if p["dataset"] not in datasets:
            continue
        run = Path(p["run_dir"])
        grids = sorted(run.glob("preview_epoch_*.png"))
        pairs = [(grids[-1], "preview"), (run / "loss.png", "loss")] if grids else []
        names = []
        for src, kind in pairs:
            dest = out.parent / f"{out.name}_{p['dataset']}_{kind}.png"
            shutil.copyfile(src, dest)
            names.append(dest.name)
        figures[p["dataset"]] = names
    return figures


def merge(res: dict[str, Any], part: dict[str, Any]) -> None:
    res["rows"] = C.merge_rows(res.get("rows", []), part["rows"], _key)
    res["pretrain"] = C.merge_rows(
        res.get("pretrain", []), part["pretrain"], lambda p: p["dataset"]
    )
    res.setdefault("index", {}).update(part["index"])
    res.setdefault("timing", {}).update(part["timing"])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME, arms=[*GROUPS, "covid_fused"], seeds=[0, 1, 2])
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="processes (1 torch thread each)")
    ap.add_argument("--quick", action="store_true", help="tiny budget: checks the script runs")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="read back pretrainings and fine-tunes an interrupted run finished (same config)",
    )
    args = ap.parse_args()
    if args.reuse:
        os.environ[REUSE_ENV] = "1"
    out, work = Path(args.out), Path(args.work)
    old = C.previous_results(
        args, out, lambda p: C.read_json(p.with_suffix(".json")) or {}, to_markdown
    )
    if old is None:
        return
    data_dir = C.data_dir(args)
    seeds = QUICK["seeds"] if args.quick else args.seeds
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        **old,
        "benchmark": NAME,
        "quick": args.quick,
        "recipes": {
            k: {**v, "finetune": {str(f): e for f, e in v["finetune"].items()}}
            for k, v in RECIPES.items()
        },
        "encoders": {"2d": ENCODER_2D, "covid": ENCODER_COVID, "3d": ENCODER_3D},
        "finetune": FINETUNE,
        "env": C.environment(workers=args.workers, threads_per_worker=1),
    }
    fused = "covid_fused" in args.arms
    if fused and "covid_cxr" not in args.arms:
        ap.error("covid_fused runs inside the covid_cxr arm (it reuses its per-fold encoders)")
    jobs = [g for g in GROUPS if g in args.arms]
    call = (data_dir, work, seeds, args.bootstrap, args.quick, fused)
    if args.workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
            futures = {pool.submit(run_group, g, *call): g for g in jobs}  # largest first
            for fut in as_completed(futures):
                try:
                    merge(res, fut.result())
                except Exception as e:  # noqa: BLE001 - keep the other groups' results
                    res.setdefault("errors", {})[futures[fut]] = f"{type(e).__name__}: {e}"
                print(f"== {futures[fut]} done", flush=True)
    else:
        for g in jobs:
            merge(res, run_group(g, *call))
    res["covid_context"] = covid_context(res.get("index", {}).get("covid_cxr"))
    res["figures"] = {**res.get("figures", {}), **copy_figures(res, out, jobs)}
    derive(res, args.bootstrap)
    C.finish(out, res, old, args.arms, t0, to_markdown)
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
