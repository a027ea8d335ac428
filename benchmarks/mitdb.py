"""MIT-BIH Arrhythmia, inter-patient heartbeat classification (de Chazal et al. 2004 protocol).

Train on DS1 (a fixed record-grouped subset of DS1 held out for epoch selection), test on DS2,
paced records excluded, AAMI classes N / S / V / F, argmax decision rule. Arms:

* ``waveform``: the beat window only (cnn1d encoder);
* ``rr``: the RR-interval features only (mlp encoder);
* ``fused``: both, through the fusion path (concat);
* ``random_fused`` (optional): the fused model on a *leaky* random beat-level split, shown next
  to the inter-patient result to show how much a beat-level split overstates performance.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_bench.lock python benchmarks/mitdb.py

Writes benchmarks/results/mitdb.json and benchmarks/results/mitdb.md. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmodal import api
from medmodal.datasets import get_dataset, resolve_data_dir
from medmodal.evaluate import bootstrap_ci

RESULTS = Path(__file__).resolve().parent / "results"
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
TARGETS = {"S": 75.9, "V": 77.7}  # sensitivity to beat (%)
ARMS: dict[str, list[str]] = {"fused": ["signal", "rr"], "waveform": ["signal"], "rr": ["rr"]}
ENCODERS: dict[str, dict[str, Any]] = {
    "signal": {"name": "cnn1d", "channels": [16, 32, 64], "dropout": 0.1},
    "rr": {"name": "mlp", "hidden": [64, 32], "dropout": 0.1},
}
TRAIN: dict[str, Any] = {
    "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adam",
    "scheduler": "cosine", "class_weights": "balanced", "monitor": "auroc",
}  # fmt: skip


def make_config(name: str, prepared: Any, modalities: list[str], seed: int, epochs: int,
                work: Path, bootstrap: int, threads: int, monitor: str) -> dict[str, Any]:
    return {
        "name": name,
        "seed": seed,
        "output_dir": str(work / name),
        "data": {"manifest": str(prepared.manifest), "schema": str(prepared.schema),
                 "modalities": modalities},
        "model": {"encoders": {m: ENCODERS[m] for m in modalities}, "fusion": {"name": "concat"}},
        "train": {**TRAIN, "epochs": epochs, "threads": threads, "monitor": monitor},
        "evaluate": {"bootstrap": bootstrap, "report": False, "ablation": len(modalities) > 1},
    }


def per_class(pred: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Se / PPV per class (%), accuracy, confusion matrix; patient-grouped bootstrap CIs."""
    y, p = pred["label"].to_numpy(), pred["predicted"].to_numpy()
    cm = pd.crosstab(pd.Categorical(y, CLASSES), pd.Categorical(p, CLASSES), dropna=False)
    cmv = cm.to_numpy()
    out: dict[str, Any] = {"n": int(len(pred)), "accuracy": 100 * float((y == p).mean()),
                           "confusion_matrix": cmv.tolist(), "sensitivity": {}, "ppv": {}}
    for k, c in enumerate(CLASSES):
        tp = cmv[k, k]
        out["sensitivity"][c] = 100 * tp / cmv[k].sum() if cmv[k].sum() else None
        out["ppv"][c] = 100 * tp / cmv[:, k].sum() if cmv[:, k].sum() else None
    out["support"] = {c: int(cmv[k].sum()) for k, c in enumerate(CLASSES)}
    if n_boot:
        probs = pred[[f"prob_{c}" for c in CLASSES]].to_numpy()
        names = [f"{m}[{c}]" for c in CLASSES for m in ("recall", "ppv")] + ["accuracy"]
        ci = bootstrap_ci(y, probs, "multiclass", CLASSES, metrics=names, n_boot=n_boot,
                          seed=seed, groups=pred["patient_id"].to_numpy())
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


def run_arm(name: str, prepared: Any, modalities: list[str], args: argparse.Namespace,
            work: Path, epochs: int, seed: int, monitor: str = "auroc") -> dict[str, Any]:
    print(f"== {name} seed {seed}: {modalities}, {epochs} epochs, monitor {monitor}", flush=True)
    cfg = make_config(f"{name}_seed{seed}", prepared, modalities, seed, epochs, work,
                      args.bootstrap, args.threads, monitor)
    t0 = time.perf_counter()
    run = api.fit(cfg, progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    pred = pd.read_csv(run.run_dir / "predictions_test.csv", dtype={"patient_id": str})
    val = pd.read_csv(run.run_dir / "predictions_val.csv", dtype={"patient_id": str})
    row: dict[str, Any] = {
        "arm": name, "modalities": modalities, "seed": seed, "epochs": epochs, "monitor": monitor,
        "best_epoch": run.metrics["best_epoch"], "n": run.metrics["n"],
        "wall_seconds": round(wall, 1), "train_seconds": round(run.metrics["train_seconds"], 1),
        "test": per_class(pred, args.bootstrap, seed),
        "val": per_class(val, 0, seed),
        "test_macro_auroc": run.metrics["test"]["auroc"],
        "config": {"encoders": {m: ENCODERS[m] for m in modalities}, "fusion": "concat",
                   "train": {**TRAIN, "epochs": epochs, "monitor": monitor}},
    }
    if "random" not in name:
        row["test"]["S_without_record_232"] = s_without_232(pred)
    if run.metrics["test"].get("ablation"):
        row["modality_removed_at_test_auroc"] = run.metrics["test"]["ablation"]
    print(json.dumps({k: row[k] for k in ("arm", "seed", "best_epoch", "wall_seconds")}
                     | {"Se": row["test"]["sensitivity"], "PPV": row["test"]["ppv"]}), flush=True)
    return row


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and sample standard deviation of Se / PPV / accuracy over the seeds of one arm."""
    if not rows:
        return None
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
    for key in ("sensitivity", "ppv"):
        out[key] = {}
        for c in CLASSES:
            v = np.array([r["test"][key][c] if r["test"][key][c] is not None else np.nan for r in rows])
            out[key][c] = {"mean": float(np.nanmean(v)),
                           "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else None}
    acc = np.array([r["test"]["accuracy"] for r in rows])
    out["accuracy"] = {"mean": float(acc.mean()),
                       "sd": float(acc.std(ddof=1)) if len(acc) > 1 else None}
    return out


def fmt(v: float | None, ci: list[float | None] | None = None) -> str:
    if v is None:
        return "n/a"
    s = f"{v:.1f}"
    if ci and ci[0] is not None:
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return s


def to_markdown(res: dict[str, Any]) -> str:
    rows = res["results"]
    facts = res["data"]
    lines = [
        "# MIT-BIH Arrhythmia: inter-patient heartbeat classification (de Chazal et al. 2004)",
        "",
        "Protocol: train on DS1, test on DS2 (de Chazal et al. 2004), paced records 102/104/107/217 "
        "excluded, AAMI classes N/S/V/F, **argmax** decision rule (nothing tuned on DS2). "
        f"Epochs selected on DS1 validation records {facts['val_records']} (record-grouped) by "
        "their macro one-vs-rest AUROC; `fused_monitor_val_loss` selects by the class-weighted "
        "validation loss instead (see caveats). Records 201 and 202 are one subject: 201 is left out "
        "of training so the test set is exactly de Chazal's DS2 "
        f"({facts['test_counts']}). Se = sensitivity, PPV = positive "
        "predictive value, in %; [95% CI] from a patient-grouped bootstrap over the 22 DS2 "
        f"records ({res['bootstrap']} resamples).",
        "",
        "| arm | seed | Se N | Se S | Se V | Se F | PPV N | PPV S | PPV V | PPV F | accuracy | "
        "S and V targets met | best epoch / epochs | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pub = PUBLISHED
    for r in rows:
        t = r["test"]
        ci = t.get("ci95", {})
        se = " | ".join(fmt(t["sensitivity"][c], ci.get(f"recall[{c}]")) for c in CLASSES)
        ppv = " | ".join(fmt(t["ppv"][c], ci.get(f"ppv[{c}]")) for c in CLASSES)
        met = all((t["sensitivity"][c] or 0) > v for c, v in TARGETS.items())
        label = r["arm"] + (" (**leaky**, beat-level random split)" if "random" in r["arm"] else "")
        lines.append(f"| {label} | {r['seed']} | {se} | {ppv} | {fmt(t['accuracy'], ci.get('accuracy'))} | "
                     f"{'yes' if met else '**no**'} | {r['best_epoch']} / {r['epochs']} | "
                     f"{r['wall_seconds'] / 60:.1f} min |")
    def ms(d: dict[str, Any]) -> str:
        return f"{d['mean']:.1f} ± {d['sd']:.1f}"

    for key, label in (("fused_over_seeds", "fused"),
                       ("fused_monitor_val_loss_over_seeds", "fused_monitor_val_loss")):
        agg = res.get(key)
        if not agg or len(agg["seeds"]) < 2:
            continue
        met = all(agg["sensitivity"][c]["mean"] > v for c, v in TARGETS.items())
        lines.append(
            f"| **{label}, mean ± sd** | {', '.join(map(str, agg['seeds']))} | "
            + " | ".join(ms(agg["sensitivity"][c]) for c in CLASSES) + " | "
            + " | ".join(ms(agg["ppv"][c]) for c in CLASSES) + f" | {ms(agg['accuracy'])} | "
            + ("yes (mean)" if met else "**no** (mean)") + " | | |"
        )
    lines.append(
        "| de Chazal et al. 2004 (published) | | "
        + " | ".join(f"{pub['sensitivity'][c]:.1f}" for c in CLASSES) + " | "
        + " | ".join(f"{pub['ppv'][c]:.1f}" for c in CLASSES) + " | n/a | (reference) | | |"
    )
    lines += ["", "## Confusion matrices on DS2 (rows = true, columns = predicted; N, S, V, F)", ""]
    for r in rows:
        cm = r["test"]["confusion_matrix"]
        lines.append(f"**{r['arm']}**, seed {r['seed']} (n = {r['test']['n']}):")
        lines.append("")
        lines.append("| true \\ predicted | N | S | V | F |")
        lines.append("|---|---|---|---|---|")
        for c, line in zip(CLASSES, cm, strict=True):
            lines.append(f"| {c} | " + " | ".join(str(v) for v in line) + " |")
        lines.append("")
    lines += ["## Details", ""]
    for r in rows:
        t = r["test"]
        extra = []
        if "S_without_record_232" in t:
            s = t["S_without_record_232"]
            extra.append(f"S sensitivity without record 232: {s['sensitivity']:.1f}% of {s['n']} beats")
        v = r["val"]
        where = "random-split validation" if "random" in r["arm"] else "DS1 validation"
        extra.append(f"{where} Se N/S/V/F: "
                     + "/".join(fmt(v["sensitivity"][c]) for c in CLASSES)
                     + ", PPV: " + "/".join(fmt(v["ppv"][c]) for c in CLASSES))
        if r.get("test_macro_auroc") is not None:
            extra.append(f"macro one-vs-rest AUROC {r['test_macro_auroc']:.3f}")
        if r.get("modality_removed_at_test_auroc"):
            ab = r["modality_removed_at_test_auroc"]
            extra.append("AUROC with a modality removed at test time: "
                         + ", ".join(f"without {m}: {a['auroc']:.3f}" for m, a in ab.items()))
        lines.append(f"- **{r['arm']}**, seed {r['seed']}: " + "; ".join(extra) + ".")
    lines += [
        "",
        "## Caveats",
        "",
        *[f"- {c}" for c in res["caveats"]],
        "",
        f"Command: `{res['command']}`",
        "",
        f"Total wall time: {res['wall_seconds'] / 60:.1f} min. Environment: {res['env']}",
        "",
    ]
    return "\n".join(lines)


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
    "32-64-128, balanced class weights rather than their square root, no waveform augmentation. "
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
    "The random beat-level split (if shown) puts beats of the same patient in train and test; its "
    "much higher numbers are leakage, not skill.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rr-epochs", type=int, default=10)
    ap.add_argument("--compare-loss-monitor", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the fused arm selecting epochs on the class-weighted val loss")
    ap.add_argument("--random-split", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--random-epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the fused arm")
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0],
                    help="seeds of the waveform-only / RR-only / random-split arms")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on 2 shared cores, 2 threads ran ~5x slower)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "work" / "mitdb"))
    ap.add_argument("--out", default=str(RESULTS / "mitdb"))
    args = ap.parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        sys.exit("no data directory: pass --data-dir or set MEDMODAL_DATA_DIR")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(args.work)
    ds = get_dataset("mitdb")
    inter = ds.prepare(work / "inter_patient" / "data", data_dir)
    rows = []
    for arm in args.arms:
        epochs = args.rr_epochs if arm == "rr" else args.epochs
        for seed in args.seeds if arm == "fused" else args.ablation_seeds:
            rows.append(run_arm(arm, inter, ARMS[arm], args, work / "inter_patient", epochs, seed))
    if args.compare_loss_monitor and "fused" in args.arms:
        for seed in args.seeds:
            rows.append(run_arm("fused_monitor_val_loss", inter, ARMS["fused"], args,
                                work / "inter_patient", args.epochs, seed, monitor="loss"))
    if args.random_split:
        seed = args.ablation_seeds[0]
        rnd = ds.prepare(work / "random" / "data", data_dir, split="random", seed=seed)
        rows.append(run_arm("random_fused", rnd, ARMS["fused"], args, work / "random",
                            args.random_epochs, seed))
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine()}
    command = ("MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_bench.lock "
               "python benchmarks/mitdb.py " + " ".join(sys.argv[1:])).strip()
    facts = inter.facts
    res = {
        "command": command, "env": env, "seeds": args.seeds,
        "ablation_seeds": args.ablation_seeds, "bootstrap": args.bootstrap,
        "fused_over_seeds": over_seeds([r for r in rows if r["arm"] == "fused"]),
        "fused_monitor_val_loss_over_seeds": over_seeds(
            [r for r in rows if r["arm"] == "fused_monitor_val_loss"]),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "protocol": "inter-patient: train DS1 (minus validation records and 201), test DS2; "
                    "paced excluded; argmax",
        "data": {"records_per_split": facts["records_per_split"],
                 "records_left_out": facts["records_left_out"],
                 "labels_per_split": facts["labels_per_split"],
                 "val_records": facts["records_per_split"].get("val"),
                 "test_counts": facts["labels_per_split"].get("test"),
                 "q_beats_left_out": facts["q_beats_left_out"]},
        "published": PUBLISHED, "targets_sensitivity": TARGETS,
        "results": rows, "caveats": CAVEATS,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=_json_default))
    out.with_suffix(".md").write_text(to_markdown(res))
    print(f"wrote {out.with_suffix('.md')} in {res['wall_seconds'] / 60:.1f} min", flush=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


if __name__ == "__main__":
    main()
