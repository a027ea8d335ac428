"""Same numbers before and after a refactor: one real run per modality, at two commits.

``run`` (resumable: cases already in ``--out`` are kept) trains, evaluates and explains one short real case per modality through the public API
(images: BreastMNIST ResNet-18 with temperature scaling and conformal sets, plus Grad-CAM;
audio: heart sounds; ECG + demographics: PTB-XL; notes + X-ray + record: covid_cxr; records:
WDBC with 3-fold cross-validation; survival: GBSG2) and writes every metric to JSON.
``compare`` puts two such files side by side (``<out>.json`` / ``.md``): every number must be
equal (CPU training is deterministic per seed), a key present in only one run is listed.

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src python benchmarks/parity.py run --label before --out /tmp/before.json
    python benchmarks/parity.py run --label after --out /tmp/after.json
    python benchmarks/parity.py compare /tmp/before.json /tmp/after.json --out benchmarks/results/parity
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.utils.io import dump_json  # in every version this script compares (not common.py)

TRAIN = {"batch_size": 64, "lr": 1e-3, "threads": 2, "scheduler": "cosine"}
EVALUATE = {"bootstrap": 200, "report": False}


def case_configs(data_dir: str, work: Path) -> dict[str, dict[str, Any]]:
    """One config per modality (short but real runs)."""

    def cfg(name: str, data: dict, encoders: dict, epochs: int, **extra: Any) -> dict[str, Any]:
        out = {
            "name": name, "seed": 0, "output_dir": str(work / name),
            "data": {"data_dir": data_dir, **data},
            "model": {"encoders": encoders, **extra.pop("model", {})},
            "train": {**TRAIN, "epochs": epochs, **extra.pop("train", {})},
            "evaluate": {**EVALUATE, **extra.pop("evaluate", {})},
        }  # fmt: skip
        return out

    trust = {"calibrate": {"method": "temperature"}, "conformal": {"method": "lac"}}
    return {
        "image_breastmnist": cfg(
            "image_breastmnist", {"dataset": "breastmnist"}, {"image": {"name": "resnet18"}}, 3,
            evaluate=trust,
        ),
        "audio_heart_sounds": cfg(
            "audio_heart_sounds", {"dataset": "heart_sounds"}, {"audio": {"name": "audio_cnn"}}, 3
        ),
        "ecg_demo_ptbxl": cfg(
            "ecg_demo_ptbxl", {"dataset": "ptbxl", "modalities": ["ecg", "demo"]},
            {"ecg": {"name": "resnet1d", "widths": [16, 32, 64, 128], "blocks": [1, 1, 1, 1]},
             "demo": {"name": "mlp"}}, 2,
        ),
        "note_image_record_covid": cfg(
            "note_image_record_covid",
            {"dataset": "covid_cxr", "dataset_options": {"image_size": 64}, "val_fraction": 0.15},
            {"image": {"name": "baseline_cnn", "filters": 16, "hidden": 64},
             "note": {"name": "embedding_mlp", "out_dim": 64}, "record": {"name": "mlp"}}, 3,
            evaluate={"ablation": True},
        ),
        "survival_gbsg2": cfg(
            "survival_gbsg2", {"dataset": "gbsg2"}, {"record": {"name": "mlp", "hidden": [32]}}, 20
        ),
    }  # fmt: skip


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metrics -> {"a.b.c": number or string}."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list | tuple):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    if isinstance(obj, bool | int | float | str) or obj is None:
        return {prefix: obj}
    return {prefix: str(obj)}


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of arrays rounded to 6 decimals (Grad-CAM / IG maps)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.round(np.asarray(arrays[k], dtype=np.float64), 6).tobytes())
    return h.hexdigest()


def run_cases(data_dir: str, work: Path, done: dict[str, Any], save: Callable[[], None]) -> None:
    """Run every case not in ``done`` yet, adding each to it and saving as soon as it ends (a
    crash loses one case, not the run)."""
    from medmodal import api

    for name, config in case_configs(data_dir, work).items():
        if name in done:
            continue
        t0 = time.perf_counter()
        run = api.fit(config, progress=False)
        done[name] = {"metrics": flatten(run.metrics), "seconds": time.perf_counter() - t0}
        if name == "image_breastmnist":
            done["explain_breastmnist"] = explain_case(api, run, work)
        save()
    if "cv_wdbc" not in done:
        done["cv_wdbc"] = cv_case(api, work)
        save()


def explain_case(api: Any, run: Any, work: Path) -> dict[str, Any]:
    out = work / "explain"
    api.explain(run.checkpoint, run.run_dir / "data" / "manifest.csv", out, samples=4)
    with np.load(out / "attributions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return {"metrics": {"attributions_sha256": digest(arrays), "n_maps": len(arrays)}}


def cv_case(api: Any, work: Path) -> dict[str, Any]:
    cfg = {
        "name": "cv_wdbc", "seed": 0, "output_dir": str(work / "cv_wdbc"),
        "data": {"dataset": "wdbc"},
        "model": {"encoders": {"record": {"name": "mlp", "hidden": [16]}}},
        "train": {**TRAIN, "epochs": 10}, "evaluate": EVALUATE,
    }  # fmt: skip
    cv = api.cross_validate(cfg, k=3)
    return {"metrics": flatten({"pooled": cv.pooled, "per_fold": cv.per_fold})}


def commit_of(module_file: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(Path(module_file).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cmd_run(args: argparse.Namespace) -> None:
    import medmodal

    t0 = time.perf_counter()
    res = read_json(args.out) or {"cases": {}, "wall_seconds": 0.0}
    res.update(label=args.label, commit=commit_of(medmodal.__file__))
    res["code"] = str(Path(medmodal.__file__).parent)
    start = res["wall_seconds"]

    def save() -> None:
        res["wall_seconds"] = start + time.perf_counter() - t0
        dump_json(args.out, res)

    with tempfile.TemporaryDirectory() as tmp:
        run_cases(str(Path(args.data_dir).resolve()), Path(tmp), res["cases"], save)
    save()


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per case: numbers compared, the largest difference, keys in one run only."""
    out: dict[str, Any] = {}
    for case in sorted(set(a["cases"]) | set(b["cases"])):
        ma = a["cases"].get(case, {}).get("metrics", {})
        mb = b["cases"].get(case, {}).get("metrics", {})
        common = sorted(k for k in set(ma) & set(mb) if not TIMING.search(k))
        diffs = [(k, _diff(ma[k], mb[k])) for k in common]
        unequal = [(k, d) for k, d in diffs if d != 0.0]
        out[case] = {
            "compared": len(common),
            "unequal": [{"key": k, "before": ma[k], "after": mb[k]} for k, _ in unequal],
            "max_abs_diff": max((d for _, d in diffs if d != float("inf")), default=0.0),
            "only_before": sorted(set(ma) - set(mb)),
            "only_after": sorted(set(mb) - set(ma)),
            "headline": {k: (ma.get(k), mb.get(k)) for k in HEADLINE if k in ma or k in mb},
        }
    return out


TIMING = re.compile(r"seconds|per_s(ec)?\b|_per_second")  # wall / CPU times: not compared


HEADLINE = ("test.auroc", "test.c_index", "test.accuracy", "test.ece", "pooled.auroc",
            "attributions_sha256")  # fmt: skip


def _diff(x: Any, y: Any) -> float:
    if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(x, bool):
        if np.isnan(x) and np.isnan(y):
            return 0.0
        return abs(float(x) - float(y))
    return 0.0 if x == y else float("inf")


def render(res: dict[str, Any]) -> str:
    a, b = res["before"], res["after"]
    lines = [
        "# Parity: the same real runs before and after a refactor",
        "",
        f"Before: commit `{a['commit']}` ({a['label']}); after: commit `{b['commit']}` "
        f"({b['label']}). Each case is one short real run per modality through `api.fit` (seed 0, "
        "CPU, 2 threads), every number of its `metrics.json` compared exactly (times, which depend on the "
        "shared machine, are left out); the explanation "
        "case compares the SHA-256 of all Grad-CAM / IG maps rounded to 6 decimals. Command: "
        "`python benchmarks/parity.py` (see its docstring); the two runs: `parity_before.json`, "
        "`parity_after.json`. These are short runs (2-20 epochs) to show equality, not headline "
        "figures.",
        "",
        "| case | numbers compared | unequal | largest difference | keys only before / after | headline (before -> after) |",
        "|---|---|---|---|---|---|",
    ]
    for case, r in res["cases"].items():
        head = "; ".join(f"{k} {_fmt(v[0])} -> {_fmt(v[1])}" for k, v in r["headline"].items())
        lines.append(
            f"| {case} | {r['compared']} | {len(r['unequal'])} | {r['max_abs_diff']:.3g} | "
            f"{len(r['only_before'])} / {len(r['only_after'])} | {head} |"
        )
    extra = [(c, r) for c, r in res["cases"].items() if r["only_before"] or r["only_after"]]
    for case, r in extra:
        lines += ["", f"**{case}**: only before: {r['only_before'][:20]}; only after: "
                  f"{r['only_after'][:20]}"]  # fmt: skip
    bad = [(c, r) for c, r in res["cases"].items() if r["unequal"]]
    for case, r in bad:
        shown = "; ".join(f"{u['key']}: {u['before']} -> {u['after']}" for u in r["unequal"][:10])
        lines += ["", f"**{case}** differs: {shown}"]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else (str(v)[:12] if v is not None else "-")


def read_json(path: str | Path) -> dict[str, Any] | None:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def write_result(out: str | Path, res: dict[str, Any]) -> None:
    out = Path(out)
    dump_json(out.with_suffix(".json"), res)
    out.with_suffix(".md").write_text(render(read_json(out.with_suffix(".json")) or {}))


def cmd_compare(args: argparse.Namespace) -> None:
    a, b = read_json(args.before), read_json(args.after)
    assert a is not None and b is not None, "both result files must exist"
    res = {"before": _meta(a), "after": _meta(b), "cases": compare(a, b)}
    write_result(args.out, res)
    print(render(res))


def _meta(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("label", "commit", "wall_seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--data-dir", default="../shared/data")
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--out", default="benchmarks/results/parity")
    args = ap.parse_args()
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "run": cmd_run,
        "compare": cmd_compare,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
