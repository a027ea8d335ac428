"""Explanations benchmark: time per sample and the sanity checks of the attributions.

For each arm a small model is trained (fixed recipe, seed 0), then on a handful of test samples:

* seconds per sample of each method (``Attribution.seconds``: the attribution alone, 2 torch
  threads; target: Grad-CAM under 1 s for a 28 px image) and of ``api.explain`` per sample
  (reading, every default method, drawing the PNGs, writing the JSON);
* model randomisation (Adebayo et al., NeurIPS 2018): mean Spearman correlation of each map with
  the map of the same model with every weight re-drawn, of |values| and of signed values;
* deletion (Petsiuk et al. 2018): mean AUC of the predicted class's probability while the most
  attributed pixels / time steps are set to 0 (the training mean), against 5 random orders.

Arms: ``breast_cnn`` (BreastMNIST, baseline CNN, 5 epochs), ``breast_resnet18`` (BreastMNIST,
ResNet-18, 4 epochs), ``breast_vit`` (BreastMNIST, a 4-layer ViT, 8 epochs: attention rollout
instead of Grad-CAM), ``mitdb_cnn1d`` (MIT-BIH beats of 6 records, CNN-1D, 6 epochs), ``probe``
(the synthetic 4-modality fusion probe, 400 cases, 6 epochs: time of every method and of the
modality Shapley values; no sanity checks, the data are synthetic).

    MEDMODAL_DATA_DIR=../shared/data python benchmarks/explain.py [--arms ...] [--merge]

Writes benchmarks/results/explain.json and .md. Not part of CI.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common as C
import numpy as np
import pandas as pd
import torch

from medmodal import api
from medmodal.datasets import get_dataset
from medmodal.datasets.probe import probe_config
from medmodal.explain import item_of, plan, resolve_target
from medmodal.explain.sanity import sanity_checks
from medmodal.predictor import Predictor

NAME = "explain"
ARMS = ["breast_cnn", "breast_resnet18", "breast_vit", "mitdb_cnn1d", "probe"]
VIT = {"name": "vit", "patch_size": 4, "hidden_size": 96, "mlp_dim": 192, "num_layers": 4,
       "num_heads": 3}  # fmt: skip
THREADS = 2
METHODS = ("gradcam", "integrated_gradients")
MIT_RECORDS = ["106", "119", "209", "220", "100", "228"]


def breast_config(work: Path, data: Path, encoder: str, epochs: int) -> dict[str, Any]:
    spec = VIT if encoder == "vit" else {"name": encoder}
    return {
        "name": f"breast_{encoder}", "seed": 0, "output_dir": str(work / f"breast_{encoder}"),
        "data": {"dataset": "breastmnist", "data_dir": str(data), "audit": False},
        "model": {"encoders": {"image": spec}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "threads": THREADS},
        "evaluate": {"bootstrap": 0, "report": False},
    }  # fmt: skip


def mitdb_config(work: Path, data: Path) -> tuple[dict[str, Any], Path]:
    prepared = get_dataset("mitdb").prepare(
        work / "mitdb_data", data, records=MIT_RECORDS, val_records=["220"]
    )
    cfg = {
        "name": "mitdb_cnn1d", "seed": 0, "output_dir": str(work / "mitdb_cnn1d"),
        "data": {"manifest": str(prepared.manifest), "schema": str(prepared.schema),
                 "modalities": ["signal"], "audit": False},
        "model": {"encoders": {"signal": {"name": "cnn1d", "channels": [16, 32, 64]}}},
        "train": {"epochs": 6, "batch_size": 256, "lr": 0.003, "class_weights": "balanced",
                  "monitor": "loss", "threads": THREADS},
        "evaluate": {"bootstrap": 0, "report": False, "ablation": False},
    }  # fmt: skip
    return cfg, prepared.manifest


def explain_wall(ckpt: Path, frame: pd.DataFrame, root: Path, out: Path) -> float:
    """Seconds per sample of the whole ``api.explain`` (default methods, PNGs, JSON)."""
    t0 = time.perf_counter()
    res = api.explain(ckpt, frame, out, root=root)
    return (time.perf_counter() - t0) / len(res.samples)


def sanity_arm(
    name: str,
    run: api.RunResult,
    frame: pd.DataFrame,
    root: Path,
    modality: str,
    methods: tuple[str, ...] = METHODS,
) -> dict[str, Any]:
    """Sanity numbers and times of one trained image / signal model on ``frame``'s rows."""
    p = Predictor.load(run.checkpoint)
    ds = p.dataset(frame, root, None, with_labels=True)
    checks = sanity_checks(p, ds, modality, methods)
    test = run.metrics["test"]
    return {
        "arm": name,
        "samples": len(ds),
        "test": {k: test.get(k) for k in ("auroc", "balanced_accuracy", "accuracy")},
        "train_seconds": run.metrics["train_seconds"],
        "methods": checks,
        "explain_seconds_per_sample": explain_wall(run.checkpoint, frame, root, run.run_dir / "x"),
    }


def run_breast(args: argparse.Namespace, data: Path, encoder: str, epochs: int) -> dict:
    run = api.fit(breast_config(Path(args.work), data, encoder, epochs), progress=False)
    frame = pd.read_csv(run.run_dir / "data" / "manifest.csv")
    test = frame[frame["split"] == "test"].head(16)
    methods = ("attention_rollout", "integrated_gradients") if encoder == "vit" else METHODS
    return sanity_arm(f"breast_{encoder}", run, test, run.run_dir / "data", "image", methods)


def run_mitdb(args: argparse.Namespace, data: Path) -> dict:
    cfg, manifest = mitdb_config(Path(args.work), data)
    run = api.fit(cfg, progress=False)
    frame = pd.read_csv(manifest, dtype={"record": str, "patient_id": str})
    test = frame[frame["split"] == "test"]
    beats = pd.concat([test[test["label"] == c].head(4) for c in ("N", "S", "V")])
    return sanity_arm("mitdb_cnn1d", run, beats, manifest.parent, "signal")


def run_probe(args: argparse.Namespace) -> dict:
    """Seconds per sample of every default method (and Shapley) on the 4-modality probe."""
    work = Path(args.work)
    prepared = get_dataset("fusion_probe").prepare(work / "probe_data", n=400, seed=0)
    cfg = probe_config(prepared, work / "probe", epochs=6)
    cfg["data"]["audit"] = False
    cfg["train"]["threads"] = THREADS
    run = api.fit(cfg, progress=False)
    p = Predictor.load(run.checkpoint)
    frame = pd.read_csv(prepared.manifest)
    test = frame[frame["split"] == "test"].head(16)
    ds = p.dataset(test, prepared.manifest.parent, None, with_labels=True)
    probs = p.predict_proba(ds)
    times: dict[str, list[float]] = {}
    for i in range(len(ds)):
        item = item_of(ds, i)
        t = resolve_target(p.label_map, probs[i], None)
        for name, m, ex in plan(p):
            if m is None or bool(item.present[m][0]):
                times.setdefault(f"{name} ({m})" if m else name, []).append(
                    ex.explain(item, t).seconds
                )
    return {
        "arm": "probe",
        "samples": len(ds),
        "test": {"auroc": run.metrics["test"]["auroc"]},
        "train_seconds": run.metrics["train_seconds"],
        "seconds": {k: float(np.median(v)) for k, v in times.items()},
        "explain_seconds_per_sample": explain_wall(
            run.checkpoint, test, prepared.manifest.parent, run.run_dir / "x"
        ),
    }


def to_markdown(res: dict[str, Any]) -> str:
    rows = res.get("results", [])
    lines = [
        "# Explanations: time per sample and sanity checks",
        "",
        "Means over the test samples of each arm (16 BreastMNIST images, 12 MIT-BIH beats: 4 N, "
        "4 S, 4 V). rho: Spearman correlation with the map of the weight-randomised model "
        "(Adebayo et al. 2018; below 0.5 is asked, signed values). Deletion: mean AUC of the "
        "predicted class's probability while the most attributed units are zeroed, against 5 "
        f"random orders (lower = the map found what the model uses). {THREADS} torch threads on "
        "a shared machine (see the load average below).",
        "",
    ]
    body = []
    for r in rows:
        for m, c in (r.get("methods") or {}).items():
            checks = _verdict(
                c["spearman_signed"] < 0.5, c["deletion_auc"] < c["random_deletion_auc"]
            )
            body.append([r["arm"], m, C.num(c["spearman_abs"]), C.num(c["spearman_signed"]),
                         C.num(c["deletion_auc"]), C.num(c["random_deletion_auc"]), checks,
                         C.num(c["seconds"], 4), C.num(r["explain_seconds_per_sample"], 3)])  # fmt: skip
    heads = ["arm", "method", "rho abs", "rho signed", "deletion AUC", "random order AUC",
             "checks (rho signed < 0.5; deletion < random)", "s / sample (method)",
             "s / sample (api.explain, all methods + PNGs)"]  # fmt: skip
    lines += C.table(heads, body) + [""]
    lines += [
        "Reading: IG multiplies gradients by the input, so |IG| partly mirrors |input| whatever "
        "the weights (the Gradient x Input caveat of Adebayo et al.); rho abs is shown, the check "
        "uses the signed maps. Grad-CAM on ResNet-18 at 28 px weighs layer4, a 4 x 4 grid; its "
        "upsampled map is probably too coarse to delete faster than a random order. Attention "
        "rollout ignores the class (one map whatever is explained) and does not beat random "
        "deletion either; IG does in every arm. The seconds "
        "were measured on 2 cores shared with other jobs (load average below): an upper bound.",
        "",
    ]
    for r in rows:
        if r.get("seconds"):
            lines += [f"## {r['arm']}: seconds per sample (median)", ""]
            lines += C.table(
                ["method", "seconds"], [[k, C.num(v, 4)] for k, v in r["seconds"].items()]
            )
            lines += [
                "",
                f"api.explain: {C.num(r['explain_seconds_per_sample'])} s per sample.",
                "",
            ]
    lines += ["Test metrics of the explained models:", ""]
    lines += [f"- {r['arm']}: " + ", ".join(f"{k} {C.num(v)}" for k, v in r["test"].items()
                                             if v is not None) for r in rows]  # fmt: skip
    lines += [""] + C.reproduce_section(rows, res.get("env", {}))
    return "\n".join(lines)


def _verdict(randomisation: bool, deletion: bool) -> str:
    return " / ".join("passes" if ok else "**fails**" for ok in (randomisation, deletion))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME, arms=ARMS)
    args = ap.parse_args()
    out = Path(args.out)
    old = C.previous_results(args, out, lambda p: C.read_json(p.with_suffix(".json")) or {},
                             to_markdown)  # fmt: skip
    if old is None:
        return
    torch.set_num_threads(THREADS)
    data = C.data_dir(args)
    t0, prov = time.perf_counter(), C.provenance()
    runs = {
        "breast_cnn": lambda: run_breast(args, data, "baseline_cnn", 5),
        "breast_resnet18": lambda: run_breast(args, data, "resnet18", 4),
        "breast_vit": lambda: run_breast(args, data, "vit", 8),
        "mitdb_cnn1d": lambda: run_mitdb(args, data),
        "probe": lambda: run_probe(args),
    }
    new = []
    for arm in args.arms:
        row = runs[arm]()
        row["provenance"] = prov
        print(row, flush=True)
        new.append(row)
    res = {**old, "benchmark": NAME, "threads": THREADS, "env": C.environment()}
    res["results"] = C.merge_rows(old.get("results", []), new, lambda r: r["arm"])
    C.finish(out, res, old, args.arms, t0, to_markdown)
    print(f"wrote {out}.md", flush=True)


if __name__ == "__main__":
    main()
