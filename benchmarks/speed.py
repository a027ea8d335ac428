"""Speed and scale: medmodal against a plain PyTorch loop, prediction throughput, PTB-XL scaling.

* Training (PneumoniaMNIST, 28 px, official splits): arm ``plain`` is a plain PyTorch loop (a
  TensorDataset of the normalised images, MONAI ResNet-18 with the 3x3 stride-1 stem + a linear
  head, Adam, cosine schedule per step, BCE, best epoch by validation AUC); arm ``medmodal`` is
  ``medmodal.api.fit`` with the same network, batch, optimizer, schedule, epochs and data in
  fp32; arm ``fast`` adds the speed options (bf16 autocast, channels-last). Per arm and seed:
  training images/s of every epoch (the training pass alone, not validation) and the test AUC
  at the best epoch. Arm ``compile`` is ``fast`` + ``train.compile`` for one seed (does
  torch.compile pay on this CPU?).
* Prediction (arm ``predict``): images/s on the official test split through the bare network in
  PyTorch (fp32; bf16 + channels-last), through medmodal's Predictor (the whole path), and
  through ONNX Runtime (a plain ``torch.onnx.export`` of the bare network) when installed.
* PTB-XL scaling (arm ``ptbxl``): one subprocess per size (the records with the smallest
  ecg_ids, standard folds 1-8 / 9 / 10) measures preparing, reading (decoding every record),
  training (the reference recipe and ECG encoder (xresnet1d) of ``benchmarks/ptbxl.py``, for
  ``--ptbxl-epochs`` epochs) and scoring, with the peak resident memory (RSS) of the process,
  with ``train.cache: memory`` and ``disk`` (decoded inputs and tensors memory-mapped). The classical baseline (per-lead
  statistics + gradient boosting, from ``benchmarks/multimodal.py``) runs on the same records.

    MEDMODAL_DATA_DIR=../shared/data flock /tmp/medmodal_cpu.lock python benchmarks/speed.py

Writes benchmarks/results/speed.json and .md. Budget: about 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import common as C
import numpy as np
import torch

NAME = "speed"
TRAIN_ARMS = ["plain", "medmodal", "fast", "compile"]
ARMS = [*TRAIN_ARMS, "predict", "ptbxl"]
RECIPE = {"epochs": 3, "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-4}
FAST = {"amp": True, "channels_last": True}
ARM_OPTIONS = {"medmodal": {}, "fast": FAST, "compile": {**FAST, "compile": True}}
ARM_LABELS = {
    "plain": "plain PyTorch loop (fp32)",
    "medmodal": "medmodal, default options (fp32)",
    "fast": "medmodal, amp (bf16 autocast) + channels_last",
    "compile": "medmodal, amp + channels_last + compile",
}
PTBXL_SIZES = [1000, 2000, 4500, 0]  # 0: every record present (8,976 in the shared folder)
PTBXL_EPOCHS = {"n": 5}  # --ptbxl-epochs: the time per epoch is what scales
# --limit: the first N images of each split (smoke runs only)
LIMIT: dict[str, int | None] = {"images": None}
REPEAT = {"on": False}  # --ptbxl-repeat: sizes above the records present repeat them
STRODTHOFF_MACRO_AUROC = 0.930  # superclasses, whole release (21,799 records), xresnet1d101
TARGET_SPEEDUP = 1.5


# -- data ---------------------------------------------------------------------------------------
def pneumonia(data_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Official splits: images as medmodal feeds them ((x / 255 - 0.5) / 0.5, the data set's
    fixed normalisation) and float labels (pneumonia = 1)."""
    a, k = np.load(data_dir / "medmnist" / "pneumoniamnist.npz"), LIMIT["images"]
    out = {}
    for s in ("train", "val", "test"):
        x = torch.from_numpy(a[f"{s}_images"][:k].astype(np.float32) / 255.0)[:, None]
        y = torch.from_numpy(a[f"{s}_labels"][:k].reshape(-1).astype(np.float32))
        out[s] = ((x - 0.5) / 0.5, y)
    return out


def bare_network() -> torch.nn.Module:
    """The network medmodal builds for ``resnet18`` on 28-px images, without medmodal."""
    from monai.networks import nets

    body = nets.ResNet(
        block="basic", layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512], spatial_dims=2,
        n_input_channels=1, conv1_t_size=3, conv1_t_stride=1, no_max_pool=True, feed_forward=False,
    )  # fmt: skip
    return torch.nn.Sequential(body, torch.nn.Linear(512, 1))


def auc(y: torch.Tensor, logits: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y.numpy(), logits.numpy()))


# -- training arms ------------------------------------------------------------------------------
@torch.no_grad()
def plain_logits(model: torch.nn.Module, x: torch.Tensor, bs: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + bs]).float().reshape(-1) for i in range(0, len(x), bs)])


def _epoch(n: int, seconds: float, cpu: float, val: float | None) -> dict[str, Any]:
    """One epoch's training pass: images/s (wall) and images per CPU-second (all threads of
    the process: less sensitive to other jobs on the machine than the wall clock)."""
    return {"train_seconds": seconds, "train_cpu_seconds": cpu, "images_per_s": n / seconds,
            "images_per_cpu_s": n / cpu, "val_auc": val}  # fmt: skip


def plain_run(data: dict[str, Any], seed: int) -> dict[str, Any]:
    """The plain loop: shuffle, forward, BCE, backward, Adam, cosine step; best epoch on val."""
    torch.manual_seed(seed)
    model, (x, y), r = bare_network(), data["train"], RECIPE
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    steps = r["epochs"] * math.ceil(len(x) / r["batch_size"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    loss_fn, g = torch.nn.BCEWithLogitsLoss(), torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=r["batch_size"], shuffle=True, generator=g
    )
    epochs, best = [], (-1.0, None, 0)
    for epoch in range(r["epochs"]):
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        for xb, yb in loader:
            loss = loss_fn(model(xb).reshape(-1), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        val = auc(data["val"][1], plain_logits(model, data["val"][0]))
        epochs.append(_epoch(len(x), seconds, cpu, val))
        if val > best[0]:
            best = (val, {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1)
    model.load_state_dict(best[1])
    test = auc(data["test"][1], plain_logits(model, data["test"][0]))
    return {"test_auc": test, "val_auc": best[0], "best_epoch": best[2], "epochs": epochs}


def medmodal_config(arm: str, seed: int, data_dir: Path, work: Path) -> dict[str, Any]:
    return {
        "name": f"speed_{arm}", "seed": seed, "output_dir": str(work / "pneumonia" / f"{arm}_seed{seed}"),
        "data": {"dataset": "pneumoniamnist", "data_dir": str(data_dir), "audit": False,
                 "dataset_options": {"limit": LIMIT["images"]}},
        "model": {"encoders": {"image": {"name": "resnet18"}}},
        "train": {**RECIPE, "optimizer": "adam", "scheduler": "cosine", "monitor": "auroc",
                  "threads": torch.get_num_threads(), **ARM_OPTIONS[arm]},
        "evaluate": {"bootstrap": 0, "report": False},
    }  # fmt: skip


def medmodal_run(arm: str, seed: int, data_dir: Path, work: Path) -> dict[str, Any]:
    """``api.fit`` with the arm's options; images/s from the history's training passes."""
    from medmodal import api

    run = api.fit(medmodal_config(arm, seed, data_dir, work), progress=False)
    epochs = [
        _epoch(h["samples"], h["train_seconds"], h["train_cpu_seconds"], h.get("val_auroc"))
        for h in run.history
    ]
    m = run.metrics
    return {"test_auc": m["test"]["auroc"], "val_auc": m["val"]["auroc"],
            "best_epoch": m["best_epoch"], "epochs": epochs, "checkpoint": str(run.checkpoint)}  # fmt: skip


def train_row(arm: str, seed: int, data_dir: Path, work: Path) -> dict[str, Any]:
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    if arm == "plain":
        out = plain_run(pneumonia(data_dir), seed)
    else:
        out = medmodal_run(arm, seed, data_dir, work)
    ips = [e["images_per_s"] for e in out["epochs"]]
    row = {"section": "train", "arm": arm, "label": ARM_LABELS[arm], "seed": seed, **out}
    row.update(
        images_per_s=float(np.median(ips)),
        images_per_s_first_epoch=ips[0],
        wall_seconds=round(time.perf_counter() - t0, 1),
        load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        images_per_cpu_s=float(np.median([e["images_per_cpu_s"] for e in out["epochs"]])),
        recipe={**RECIPE, "optimizer": "adam", "scheduler": "cosine (per step)", "augment": None,
                "options": ARM_OPTIONS.get(arm, {})},
    )  # fmt: skip
    print(json.dumps({k: row[k] for k in ("arm", "seed", "images_per_s", "test_auc")}), flush=True)
    return row


# -- prediction throughput ----------------------------------------------------------------------
def _rate(fn: Any, n: int, min_seconds: float = 3.0) -> float:
    """Images/s of ``fn()`` (one pass over ``n`` images): one warm-up pass, then passes until
    ``min_seconds`` have gone."""
    fn()
    t0, passes = time.perf_counter(), 0
    while passes == 0 or time.perf_counter() - t0 < min_seconds:
        fn()
        passes += 1
    return passes * n / (time.perf_counter() - t0)


def torch_rates(x: torch.Tensor, bs: int = 256) -> list[dict[str, Any]]:
    """The bare network in eval mode: fp32, and bf16 autocast + channels-last."""
    torch.manual_seed(0)
    net = bare_network().eval()
    fast = bare_network().eval().to(memory_format=torch.channels_last)
    fast.load_state_dict(net.state_dict())

    @torch.no_grad()
    def run(model: torch.nn.Module, amp: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            for i in range(0, len(x), bs):
                model(x[i : i + bs])

    return [
        {"engine": "PyTorch, bare network, fp32", "images_per_s": _rate(lambda: run(net, False), len(x))},
        {"engine": "PyTorch, bare network, bf16 autocast + channels_last",
         "images_per_s": _rate(lambda: run(fast, True), len(x))},
    ]  # fmt: skip


def onnx_rate(x: torch.Tensor, work: Path, bs: int = 256) -> dict[str, Any]:
    """ONNX Runtime (CPU provider, this process's threads) on a plain export of the network."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"engine": "ONNX Runtime", "images_per_s": None, "note": "onnxruntime not installed"}
    torch.manual_seed(0)
    net = bare_network().eval()
    path = work / "resnet18_28px.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net, (x[:2],), str(path), dynamo=False, input_names=["x"], output_names=["logit"],
        dynamic_axes={"x": {0: "batch"}, "logit": {0: "batch"}}, opset_version=17,
    )  # fmt: skip
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    xs = x.numpy()
    with torch.no_grad():
        diff = float(np.abs(sess.run(None, {"x": xs[:bs]})[0] - net(x[:bs]).numpy()).max())

    def run() -> None:
        for i in range(0, len(xs), bs):
            sess.run(None, {"x": xs[i : i + bs]})

    return {"engine": f"ONNX Runtime {ort.__version__} (fp32, legacy torch.onnx export)",
            "images_per_s": _rate(run, len(xs)), "max_abs_diff_vs_pytorch": diff}  # fmt: skip


def predictor_rates(checkpoint: Path | None, data_dir: Path, work: Path) -> list[dict[str, Any]]:
    """medmodal's whole prediction path (dataset of cached tensors, collate, model, sigmoid),
    fp32 and ``amp`` (bf16 autocast + channels-last, ``medmodal predict --amp``), with the
    test AUC and the largest probability difference of the two."""
    labels = {False: "medmodal Predictor.predict_proba (fp32, whole path)",
              True: "medmodal Predictor.predict_proba (--amp: bf16 + channels_last)"}  # fmt: skip
    if checkpoint is None or not checkpoint.is_file():
        note = "no trained checkpoint (run a training arm)"
        return [{"engine": labels[a], "images_per_s": None, "note": note} for a in labels]
    import pandas as pd

    from medmodal.datasets import prepare_dataset
    from medmodal.predictor import Predictor

    prepared = prepare_dataset(
        "pneumoniamnist", work / "predict_data", data_dir, {"limit": LIMIT["images"]}
    )
    frame = pd.read_csv(prepared.manifest)
    rows, probs = [], {}
    for amp in (False, True):
        pred = Predictor.load(checkpoint, amp=amp)
        ds = pred.dataset(frame[frame["split"] == "test"], prepared.manifest.parent, None, True)
        probs[amp] = pred.predict_proba(ds)
        y = torch.as_tensor(ds.labels).reshape(-1)
        rows.append({"engine": labels[amp], "test_auc": auc(y, torch.as_tensor(probs[amp])),
                     "images_per_s": _rate(partial(pred.predict_proba, ds), len(ds))})  # fmt: skip
    rows[1]["max_abs_prob_diff_vs_fp32"] = float(np.abs(probs[True] - probs[False]).max())
    return rows


def predict_rows(data_dir: Path, work: Path, checkpoint: Path | None) -> list[dict[str, Any]]:
    x = pneumonia(data_dir)["test"][0]
    rows = [*torch_rates(x), *predictor_rates(checkpoint, data_dir, work), onnx_rate(x, work)]
    for r in rows:
        r.update(
            section="predict", n_images=len(x), batch_size=256, threads=torch.get_num_threads()
        )
        print(json.dumps({k: r.get(k) for k in ("engine", "images_per_s")}), flush=True)
    return rows


# -- PTB-XL scaling -----------------------------------------------------------------------------
def ptbxl_subset(data_dir: Path, work: Path, n: int) -> tuple[Path, Any, float]:
    """Prepare PTB-XL (every record present, checksums of the CSVs, every waveform present) and
    keep the ``n`` records with the smallest ecg_ids (0: all); the manifest, schema and seconds.
    With ``--ptbxl-repeat`` a size above the records present repeats them (new sample ids, the
    same patient and split), to time reading and training at that size: no accuracy from it."""
    import pandas as pd

    from medmodal.datasets import get_dataset

    t0 = time.perf_counter()
    prep = get_dataset("ptbxl").prepare(
        work / "ptbxl" / "data", data_dir, verify="csv", ecg_recipe="reference"
    )
    frame = pd.read_csv(prep.manifest).sort_values("sample_id")
    if REPEAT["on"] and n > len(frame):
        copies = [frame.assign(sample_id=frame["sample_id"].astype(str) + f"~{k}")
                  for k in range(1, math.ceil(n / len(frame)))]  # fmt: skip
        frame = pd.concat([frame, *copies], ignore_index=True)
    frame = frame.head(n) if n else frame
    manifest = work / "ptbxl" / f"n{len(frame)}" / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(manifest, index=False)
    return manifest, prep.schema, time.perf_counter() - t0


def _status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status in MB (Linux; empty elsewhere)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        k: int(line.split()[1]) / 1024 for line in lines for k in keys if line.startswith(k + ":")
    }


class MemoryWatch:
    """This process's peak resident memory (``VmHWM``: ``ru_maxrss`` would carry the launching
    parent's peak across ``exec``) and, sampled every 20 ms, its peak *anonymous* resident
    memory (``RssAnon``: heap, not the file-backed pages of a memory-mapped cache, which the
    kernel can drop and read back)."""

    def __init__(self) -> None:
        import threading

        self.peak_anon = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_anon = max(self.peak_anon, _status_mb("RssAnon").get("RssAnon", 0.0))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        now = _status_mb("VmHWM", "RssAnon", "RssFile")
        return {"peak_rss_mb": now.get("VmHWM", 0.0), "peak_anon_rss_mb": self.peak_anon,
                "end_anon_rss_mb": now.get("RssAnon", 0.0), "end_file_rss_mb": now.get("RssFile", 0.0)}  # fmt: skip


def ptbxl_child(n: int, cache: str, data_dir: Path, work: Path, seed: int) -> dict[str, Any]:
    """One size in this (fresh) process: prepare, read, train + score the ECG model; seconds
    of each stage, resident memory after reading and the process's peak RSS."""
    import psutil
    import ptbxl as PX

    from medmodal.config import load_config
    from medmodal.run import assign_splits, load_data, train_and_evaluate

    rss, watch = psutil.Process().memory_info, MemoryWatch()
    manifest, schema, prep_s = ptbxl_subset(data_dir, work, n)
    base = rss().rss
    cfg = load_config({
        "name": f"ptbxl_n{n}_{cache}", "seed": seed,
        "data": {"manifest": str(manifest), "schema": str(schema), "modalities": ["ecg"], "audit": False},
        "model": {"encoders": {"ecg": PX.ENCODERS["ecg"]}},
        "train": {**PX.TRAIN, "epochs": PTBXL_EPOCHS["n"], "cache": cache,
                  "threads": torch.get_num_threads()},
        "evaluate": {"bootstrap": 0, "report": False},
    })  # fmt: skip
    run_dir = manifest.parent / f"run_{cache}"
    t0 = time.perf_counter()
    loaded = load_data(cfg, run_dir)
    read_s, after_read = time.perf_counter() - t0, rss().rss
    t1 = time.perf_counter()
    result = train_and_evaluate(loaded, assign_splits(loaded), run_dir)
    m = result.metrics
    return {
        "records": len(loaded.dataset), "n": m["n"], "cache": cache, "seed": seed,
        "distinct_records": int(loaded.frame["sample_id"].astype(str).str.split("~").str[0].nunique()),
        "prepare_seconds": prep_s, "read_seconds": read_s, "train_seconds": m["train_seconds"],
        "fit_and_score_seconds": time.perf_counter() - t1 - m["train_seconds"],
        "epochs": m["epochs_run"], "best_epoch": m["best_epoch"],
        "rss_before_read_mb": base / 2**20, "rss_after_read_mb": after_read / 2**20,
        **watch.stop(),
        "test_macro_auroc": m["test"]["auroc"], "val_macro_auroc": m["val"]["auroc"],
    }  # fmt: skip


def ptbxl_deep_rows(args: argparse.Namespace, data_dir: Path) -> list[dict[str, Any]]:
    """One fresh process per size (and cache mode), so each peak RSS is that size's own."""
    jobs = [(n, cache) for n in PTBXL_SIZES for cache in ("memory", "disk")]
    rows = []
    for n, cache in jobs:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ptbxl-child", str(n),
               "--cache", cache, "--data-dir", str(data_dir), "--work", args.work, "--seed", str(args.seed),
               "--threads", str(args.threads), "--ptbxl-epochs", str(args.ptbxl_epochs)] + (
               ["--ptbxl-repeat"] if args.ptbxl_repeat else [])  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            raise RuntimeError(f"PTB-XL size {n} ({cache}) failed:\n{out.stderr[-3000:]}")
        row = {"section": "ptbxl", "kind": "deep", **json.loads(line[-1][7:])}
        print(json.dumps({k: row[k] for k in ("records", "cache", "train_seconds", "peak_rss_mb", "test_macro_auroc")}), flush=True)  # fmt: skip
        rows.append(row)
    return rows


def ptbxl_classical_rows(data_dir: Path, work: Path, seed: int) -> list[dict[str, Any]]:
    """Per-lead statistics + gradient boosting (``multimodal.py``'s baseline) at every size."""
    import multimodal as MM
    import pandas as pd

    from medmodal.datasets.ptbxl import SUPERCLASSES

    manifest, _, _ = ptbxl_subset(data_dir, work, 0)
    frame = pd.read_csv(manifest)
    feats, secs = [], []
    for path in frame["ecg"]:
        t0 = time.perf_counter()
        feats.append(MM.ecg_features(path))
        secs.append(time.perf_counter() - t0)
    x, rows = np.stack(feats), []
    for n in PTBXL_SIZES:
        if n > len(frame):  # repeated records: timing rows of the deep arm only
            continue
        k = n or len(frame)
        t0 = time.perf_counter()
        y = frame[list(SUPERCLASSES)].to_numpy()[:k].astype(int)
        split = frame["split"].to_numpy()[:k]
        _, prob, _ = MM.fit_gbm(x[:k], y, split, seed)
        test = split == "test"
        s = C.scores(y[test], prob, "multilabel", list(SUPERCLASSES), ["auroc"], n_boot=0)
        rows.append({"section": "ptbxl", "kind": "classical", "records": k, "seed": seed,
                     "feature_seconds": float(sum(secs[:k])), "fit_seconds": time.perf_counter() - t0,
                     "test_macro_auroc": s["auroc"], "n_test": int(test.sum())})  # fmt: skip
    return rows


# -- summary --------------------------------------------------------------------------------------
def train_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: median images/s (wall) and images per CPU-second over seeds and epochs, test
    AUC per seed; each arm's speed-up over the plain loop and whether its mean test AUC lies
    within the plain loop's seed range."""
    arms: dict[str, Any] = {}
    for r in rows:
        a = arms.setdefault(r["arm"], {"ips": [], "cpu": [], "auc": [], "seeds": []})
        a["ips"] += [e["images_per_s"] for e in r["epochs"]]
        a["cpu"] += [e["images_per_cpu_s"] for e in r["epochs"] if "images_per_cpu_s" in e]
        a["auc"].append(r["test_auc"])
        a["seeds"].append(r["seed"])
    out: dict[str, Any] = {
        k: {"images_per_s": float(np.median(v["ips"])),
            "images_per_cpu_s": float(np.median(v["cpu"])) if v["cpu"] else None,
            "test_auc": v["auc"], "seeds": v["seeds"]}
        for k, v in arms.items()
    }  # fmt: skip
    base = out.get("plain")
    for v in out.values() if base else ():
        v["speedup_vs_plain"] = v["images_per_s"] / base["images_per_s"]
        if v["images_per_cpu_s"] and base["images_per_cpu_s"]:
            v["cpu_speedup_vs_plain"] = v["images_per_cpu_s"] / base["images_per_cpu_s"]
        mean, (lo, hi) = (
            float(np.mean(v["test_auc"])),
            (min(base["test_auc"]), max(base["test_auc"])),
        )
        v["auc_mean_minus_plain"] = mean - float(np.mean(base["test_auc"]))
        v["auc_mean_within_plain_range"] = lo <= mean <= hi if len(base["test_auc"]) > 1 else None
    return out


def scaling_fit(rows: list[dict[str, Any]], key: str, cache: str) -> dict[str, Any] | None:
    """Least-squares ``value = a + b * records`` over one cache mode's sizes and its R^2."""
    pts = [
        (r["records"], r[key])
        for r in rows
        if r.get("kind") == "deep" and r.get("cache") == cache and r.get(key) is not None
    ]
    if len(pts) < 3:
        return None
    x, y = np.array(pts, dtype=float).T
    b, a = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (a + b * x)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    return {"cache": cache, "intercept": float(a), "per_1000_records": float(1000 * b),
            "r2": float(r2)}  # fmt: skip


def derive(res: dict[str, Any]) -> None:
    rows = res.get("rows", [])
    res["train_summary"] = train_summary([r for r in rows if r["section"] == "train"])
    ptb = [r for r in rows if r["section"] == "ptbxl"]
    keys = ("read_seconds", "train_seconds", "peak_rss_mb", "peak_anon_rss_mb")
    res["scaling"] = {
        f"{k} ({c})": scaling_fit(ptb, k, c) for c in ("memory", "disk") for k in keys
    }


def load_previous(out: Path) -> dict[str, Any]:
    return C.read_json(out.with_suffix(".json")) or {}


# -- Markdown -------------------------------------------------------------------------------------
def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def headline(res: dict[str, Any]) -> list[str]:
    s, out = res.get("train_summary", {}), []
    fast, plain = s.get("fast"), s.get("plain")
    if fast and plain:
        met = "met" if fast["speedup_vs_plain"] >= TARGET_SPEEDUP else "**not met**"
        where = {True: "within", False: "**outside**", None: "not comparable (one plain seed)"}
        out.append(
            f"- Training: medmodal with `train.amp` + `train.channels_last` trains at "
            f"{fast['images_per_s']:.0f} images/s against the plain loop's {plain['images_per_s']:.0f}: "
            f"**{_x(fast['speedup_vs_plain'])}** (target >= {TARGET_SPEEDUP}x: {met}); per CPU-second "
            f"{_x(fast.get('cpu_speedup_vs_plain'))}. Test AUC {_aucs(fast)} against the plain loop's "
            f"{_aucs(plain)}: the mean ({C.signed(fast['auc_mean_minus_plain'])}) is "
            f"{where[fast['auc_mean_within_plain_range']]} the plain loop's seed range."
        )  # fmt: skip
    for arm in ("medmodal", "compile"):
        if arm in s and plain:
            v = s[arm]
            out.append(
                f"- {ARM_LABELS[arm]}: {v['images_per_s']:.0f} images/s, "
                f"{_x(v['speedup_vs_plain'])} the plain loop (per CPU-second "
                f"{_x(v.get('cpu_speedup_vs_plain'))}); test AUC {_aucs(v)}."
            )
    return out


def _aucs(v: dict[str, Any]) -> str:
    return ", ".join(C.num(a) for a in v["test_auc"])


def train_table(res: dict[str, Any]) -> list[str]:
    rows = [r for r in res.get("rows", []) if r["section"] == "train"]
    body = [
        [r["label"], r["seed"], " / ".join(f"{e['images_per_s']:.0f}" for e in r["epochs"]),
         C.num(r.get("images_per_cpu_s"), 1), C.num(r["test_auc"]), C.num(r["val_auc"]),
         f"{r['best_epoch']} / {len(r['epochs'])}", f"{r['wall_seconds']:.0f} s",
         " -> ".join(str(x) for x in r.get("load_average_1min", [])) or "n/a"]
        for r in rows
    ]  # fmt: skip
    head = ["arm", "seed", "training images/s per epoch", "images per CPU-second (median)",
            "test AUC", "val AUC", "best / epochs", "wall", "load average (1 min) before -> after"]  # fmt: skip
    summary = [
        [ARM_LABELS.get(k, k), len(v["test_auc"]), f"{v['images_per_s']:.0f}", _x(v.get("speedup_vs_plain")),
         C.num(v.get("images_per_cpu_s"), 1), _x(v.get("cpu_speedup_vs_plain")),
         f"{np.mean(v['test_auc']):.3f} ({min(v['test_auc']):.3f}-{max(v['test_auc']):.3f})"]
        for k, v in res.get("train_summary", {}).items()
    ]  # fmt: skip
    shead = ["arm", "seeds", "images/s (median)", "speed-up", "images per CPU-s",
             "speed-up per CPU-s", "test AUC mean (range)"]  # fmt: skip
    return [*C.table(shead, summary), "", "Per run:", "", *C.table(head, body)]


def _predict_note(r: dict[str, Any]) -> str:
    notes = [r.get("note") or ""]
    if "test_auc" in r:
        notes.append(f"test AUC {r['test_auc']:.4f}")
    if "max_abs_prob_diff_vs_fp32" in r:
        notes.append(f"largest probability change vs fp32 {r['max_abs_prob_diff_vs_fp32']:.1e}")
    if "max_abs_diff_vs_pytorch" in r:
        notes.append(f"largest logit difference vs PyTorch {r['max_abs_diff_vs_pytorch']:.1e}")
    return "; ".join(n for n in notes if n)


def predict_table(res: dict[str, Any]) -> list[str]:
    rows = [r for r in res.get("rows", []) if r["section"] == "predict"]
    body = [
        [r["engine"], "n/a" if r.get("images_per_s") is None else f"{r['images_per_s']:.0f}",
         _predict_note(r)]
        for r in rows
    ]  # fmt: skip
    return C.table(["engine", "images/s", "note"], body)


def _repeated(r: dict[str, Any]) -> bool:
    return r.get("distinct_records", r["records"]) < r["records"]


def _records_cell(r: dict[str, Any]) -> str:
    n = r["n"]
    cell = f"{r['records']} ({n.get('train')}/{n.get('val')}/{n.get('test')})"
    if _repeated(r):
        cell += f", {r['distinct_records']:,} distinct records repeated"
    return cell


def scaling_table(res: dict[str, Any]) -> list[str]:
    rows = [r for r in res.get("rows", []) if r["section"] == "ptbxl"]
    classical = {r["records"]: r for r in rows if r["kind"] == "classical"}
    body = []
    for r in (r for r in rows if r["kind"] == "deep"):
        c = classical.get(r["records"], {})
        body.append([
            _records_cell(r), r["cache"],
            f"{r['prepare_seconds']:.1f}", f"{r['read_seconds']:.1f}",
            f"{r['train_seconds']:.1f} ({r['epochs']})", f"{r['fit_and_score_seconds']:.1f}",
            f"{r['rss_after_read_mb'] - r['rss_before_read_mb']:.0f}", f"{r['peak_rss_mb']:.0f}",
            C.num(r.get("peak_anon_rss_mb"), 0),
            C.num(r["test_macro_auroc"]) if not _repeated(r) else "— (repeats)",
            C.num(c.get("test_macro_auroc")),
            "" if not c else f"{c['feature_seconds']:.1f} + {c['fit_seconds']:.1f}",
        ])  # fmt: skip
    head = ["records (train/val/test)", "cache", "prepare s", "read s", "train s (epochs)",
            "fit + score s", "RSS added by reading, MB", "peak RSS MB", "peak anonymous RSS MB", "deep macro-AUROC",
            "classical macro-AUROC", "classical features + fit s"]  # fmt: skip
    return C.table(head, body)


def scaling_lines(res: dict[str, Any]) -> list[str]:
    out = []
    units = {"read_seconds": ("reading", "s"), "train_seconds": ("training", "s"),
             "peak_rss_mb": ("peak RSS", "MB"), "peak_anon_rss_mb": ("peak anonymous RSS", "MB")}  # fmt: skip
    for name, fit in (res.get("scaling") or {}).items():
        if fit:
            what, unit = units[name.split(" ")[0]]
            out.append(
                f"- {what}, `train.cache: {fit['cache']}`: {fit['intercept']:.1f} {unit} + "
                f"{fit['per_1000_records']:.2f} {unit} per 1,000 records (R² {fit['r2']:.3f})."
            )
    return out


def ptbxl_inventory(data_dir: Path) -> dict[str, Any]:
    """What the PTB-XL folder holds: rows of ``ptbxl_database.csv``, waveform headers present,
    and whether the whole release's metadata (``ptbxl_database_full.csv``) is there."""
    import pandas as pd

    folder = data_dir / "ptbxl"
    db = folder / "ptbxl_database.csv"
    return {"folder": str(folder),
            "records_listed": int(len(pd.read_csv(db))) if db.is_file() else 0,
            "headers_present": sum(1 for _ in folder.glob("records100/*/*.hea")),
            "full_metadata": (folder / "ptbxl_database_full.csv").is_file()}  # fmt: skip


def blocked_text(res: dict[str, Any]) -> str:
    """What the PTB-XL rows could not measure, from the folder's inventory and the rows."""
    inv = res.get("ptbxl_folder") or {}
    deep = [r for r in res.get("rows", []) if r["section"] == "ptbxl" and r.get("kind") == "deep"]
    distinct = max((r.get("distinct_records", r["records"]) for r in deep), default=0)
    if not inv or not deep or distinct >= 8500:
        return ""
    full = "and" if inv.get("full_metadata") else "and no"
    text = (
        f"**Not measured here: about 4.5k and 9k distinct records.** The PTB-XL folder holds "
        f"{inv['records_listed']:,} records ({distinct:,} with a diagnostic superclass) {full} "
        "`ptbxl_database_full.csv`. The superclass macro-AUROC is on those records' fold 10, not "
        "on 9k records, and is not comparable with Strodthoff et al. 2021 "
        f"({STRODTHOFF_MACRO_AUROC:.3f} on the whole release of 21,799 records). With more records "
        "in the folder, `--ptbxl-sizes 1000 2000 4500 0` measures them."
    )
    if any(_repeated(r) for r in deep):
        text += (
            " The rows above the records present repeat them (`--ptbxl-repeat`: new sample ids, "
            "the same patients and splits): they time reading and training at that size and "
            "show the memory; they give no accuracy."
        )
    return text


def _epochs(res: dict[str, Any]) -> str:
    deep = [r for r in res.get("rows", []) if r["section"] == "ptbxl" and r.get("kind") == "deep"]
    return "/".join(sorted({str(r["epochs"]) for r in deep})) or "?"


def to_markdown(res: dict[str, Any]) -> str:
    env = res.get("env", {})
    lines = ["# Speed and scale", "", f"Produced by `benchmarks/speed.py` on {env.get('cpu_count')} "
             f"CPU cores shared with other jobs (load average at the start {env.get('load_average')}); "
             "every timing comes from one run of one command, so arms are side by side.", ""]  # fmt: skip
    blocked = blocked_text(res)
    lines += ["## Summary", "", *headline(res), *scaling_lines(res)]
    lines += [f"- {blocked}", ""] if blocked else [""]
    r = RECIPE
    lines += ["## Training: PneumoniaMNIST, ResNet-18 (28 px)", "",
              f"Same network (MONAI ResNet-18, 3x3 stride-1 stem, linear head), data (official "
              f"splits, 4,708 training images, no augmentation), batch {r['batch_size']}, Adam (lr "
              f"{r['lr']:g}, weight decay {r['weight_decay']:g}), cosine schedule per step, "
              f"{r['epochs']} epochs, best epoch by validation AUC. Images/s is the training pass "
              "alone (validation excluded); the speed-up compares medians over epochs and seeds.", "",
              *train_table(res), ""]  # fmt: skip
    lines += ["## Prediction throughput (624 test images, batch 256)", "", *predict_table(res), ""]
    lines += ["## PTB-XL: time and memory against the number of records", "",
              "One fresh process per row (the records with the smallest ecg_ids, standard folds "
              "1-8 / 9 / 10; the reference recipe and ECG encoder (xresnet1d) of `benchmarks/ptbxl.py`: "
              "random 2.5 s crops, one-cycle, bf16, the mean over half-overlapping windows at "
              f"validation and test, {_epochs(res)} epochs, so the deep AUROC is that of short "
              "training; `benchmarks/results/ptbxl.md` has the 20-epoch figures). *prepare*: the "
              "`ptbxl` data set over the whole folder (CSV checksums, every waveform present) plus "
              "the subset's manifest; *read*: decoding every record; *RSS added by reading*: "
              "resident memory after reading minus before (with `disk` mostly file-backed pages "
              "of the mapped files); *peak anonymous RSS*: heap memory, sampled every 20 ms "
              "(file-backed pages of a memory-mapped file can be dropped by the kernel and read "
              "back, so this is what must fit in RAM). `memory` holds the decoded records and "
              "the model-ready tensors in RAM; `disk` memory-maps both. Classical: per-lead "
              "statistics + gradient boosting on the same records and folds.", "",
              *scaling_table(res), "", blocked, ""]  # fmt: skip
    lines += ["## Caveats", "", *CAVEATS, ""]
    lines += C.reproduce_section(res.get("rows", []), env)
    return "\n".join(lines)


CAVEATS = [
    "- The machine is shared (2 cores); the 1-minute load average before and after each run is "
    "in the per-run table, and arms are interleaved per seed so a change of load hits them alike; "
    "images per CPU-second is the rate less sensitive to other jobs.",
    "- Three epochs (not the 10 of `benchmarks/medmnist.py`) to fit the budget; the AUCs are those "
    "of short training, compared between arms trained alike.",
    "- bf16 autocast uses this CPU's AVX-512 BF16 instructions; without them autocast may be "
    "slower than fp32. `train.compile` stays off by default unless its row shows it pays.",
    "- `train.compile`: the first epoch includes compilation unless inductor's on-disk cache "
    "(`/tmp/torchinductor_<user>`) already holds the kernels from an earlier run; its row is one "
    "seed, and its gain over amp + channels_last is within the noise of the other arms.",
    "- Distributed training (`--nproc`) is not timed here: on 2 cores two processes share the "
    "cores one process already uses. Its tests check that 2 processes reach 1 process's metrics.",
]


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    what = r.get("arm") or r.get("engine") or r.get("kind")
    return r["section"], what, r.get("seed"), r.get("records"), r.get("cache")


def run_arms(args: argparse.Namespace, res: dict[str, Any], data_dir: Path, out: Path) -> None:
    """Run the chosen arms in turn; the results file is rewritten after each, so a long run
    keeps what it finished."""
    work = Path(args.work)

    def keep(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            r["provenance"] = C.provenance()
        res["rows"] = C.merge_rows(res.get("rows", []), rows, row_key)
        derive(res)
        C.write_result(out, res, to_markdown)

    ckpt = None
    for seed in args.seeds:  # arms interleaved, so a change in the machine's load hits them alike
        for arm in ("plain", "fast", "medmodal"):
            if arm in args.arms and (arm != "medmodal" or seed == args.seeds[0]):
                row = train_row(arm, seed, data_dir, work)
                ckpt = Path(row["checkpoint"]) if arm == "fast" and ckpt is None else ckpt
                keep([row])
    if "predict" in args.arms:  # a fast run's checkpoint (of this run, else of an earlier one)
        keep(predict_rows(data_dir, work, ckpt or work / "pneumonia" / "fast_seed0" / "best.pt"))
    if "ptbxl" in args.arms:  # the PTB-XL rows are replaced as a whole (folder and recipe)
        res["rows"] = [r for r in res.get("rows", []) if r["section"] != "ptbxl"]
        res["ptbxl_folder"] = ptbxl_inventory(data_dir)
        keep(ptbxl_deep_rows(args, data_dir))
        keep(ptbxl_classical_rows(data_dir, work, args.seed))
    if "compile" in args.arms:  # last: its compile time is unknown in advance
        keep([train_row("compile", args.seeds[0], data_dir, work)])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(
        ap, NAME, arms=ARMS, default_arms=[a for a in ARMS if a != "compile"], seeds=[0, 1]
    )
    ap.add_argument("--ptbxl-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="memory", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the PTB-XL runs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (both arms)")
    ap.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="training epochs")
    ap.add_argument("--limit", type=int, default=None, help="smoke runs: N images per split")
    ap.add_argument("--ptbxl-sizes", type=int, nargs="+", default=PTBXL_SIZES, help="0: all")
    ap.add_argument("--ptbxl-epochs", type=int, default=PTBXL_EPOCHS["n"],
                    help="training epochs of each PTB-XL size")  # fmt: skip
    ap.add_argument("--ptbxl-repeat", action="store_true",
                    help="sizes above the records present repeat them (time and memory only)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RECIPE["epochs"], LIMIT["images"] = args.epochs, args.limit
    PTBXL_SIZES[:] = args.ptbxl_sizes
    PTBXL_EPOCHS["n"] = args.ptbxl_epochs
    REPEAT["on"] = args.ptbxl_repeat
    if args.ptbxl_child is not None:
        row = ptbxl_child(
            args.ptbxl_child, args.cache, C.data_dir(args), Path(args.work), args.seed
        )
        print("RESULT " + json.dumps(row), flush=True)
        return
    out = Path(args.out)
    old = C.previous_results(args, out, load_previous, to_markdown, derive)
    if old is None:
        return
    t0 = time.perf_counter()
    res = {**old, "benchmark": NAME, "env": C.environment()}
    run_arms(args, res, C.data_dir(args), out)
    derive(res)
    res["env_at_end"] = {"load_average": [round(x, 2) for x in os.getloadavg()]}
    C.finish(out, res, old, args.arms, t0, to_markdown)
    print(f"wrote {out.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()
