"""The prediction service under load: requests/s and latency percentiles, ONNX parity, schemathesis.

One command (``flock /tmp/medmodal_cpu.lock python benchmarks/serve.py``):

1. trains the models it serves if absent (BreastMNIST ``baseline_cnn`` and ResNet-18 at 28 px;
   a covid_cxr X-ray + note (MiniLM embedding) + record fusion), and one short covid_cxr run per
   fusion for the ONNX parity check;
2. exports each to ONNX and measures the max absolute logit difference to PyTorch on real test
   samples (every fusion);
3. starts ``medmodal serve`` (PyTorch, then ONNX Runtime) on 127.0.0.1 and runs locust headless
   (FastHttpUser, real test images / notes / records as multipart bodies) for a fixed time;
4. measures the model's own batched throughput (same threads) for the ResNet-18 ratio;
5. runs schemathesis against the served OpenAPI schema and counts server errors.

Writes ``benchmarks/results/serve.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

FUSIONS = ["concat", "mean", "sum", "late", "attention", "gated"]
ARMS = ["parity", "load", "schemathesis", "probes", "memory", "ab"]
TARGET_RPS, TARGET_P99_MS, TARGET_RATIO = 500, 50, 0.8


# -- models ----------------------------------------------------------------------------------
def breast_config(work: Path, data: Path, encoder: str, epochs: int) -> dict[str, Any]:
    return {
        "name": f"breast_{encoder}",
        "seed": 0,
        "output_dir": str(work / f"breast_{encoder}"),
        "data": {"dataset": "breastmnist", "data_dir": str(data)},
        "model": {"encoders": {"image": {"name": encoder}}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "threads": 1},
        "evaluate": {"bootstrap": 1000, "report": False},
    }


def covid_config(work: Path, data: Path, fusion: str, epochs: int) -> dict[str, Any]:
    return {
        "name": f"covid_{fusion}",
        "seed": 0,
        "output_dir": str(work / f"covid_{fusion}_{epochs}ep"),
        "data": {
            "dataset": "covid_cxr",
            "data_dir": str(data),
            "dataset_options": {"target": "finding", "image_size": 64},
        },
        "model": {
            "encoders": {
                "image": {"name": "baseline_cnn", "filters": 16, "hidden": 64},
                "note": {"name": "embedding_mlp"},
                "record": {"name": "mlp"},
            },
            "fusion": {"name": fusion},
        },
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "threads": 1},
        "evaluate": {"bootstrap": 1000 if epochs > 1 else 0, "report": False, "ablation": False},
    }


def covid_bigru_config(work: Path, data: Path, epochs: int) -> dict[str, Any]:
    """covid_cxr with notes through a word-tokenizer BiGRU (the encoder that exported wrongly)."""
    cfg = covid_config(work, data, "attention", epochs)
    cfg["name"], cfg["output_dir"] = "covid_bigru", str(work / f"covid_bigru_{epochs}ep")
    cfg["data"]["dataset_options"]["text_tokenizer"] = "word"
    cfg["model"]["encoders"]["note"] = {"name": "bigru", "hidden": 64, "embed_dim": 64}
    cfg["evaluate"]["calibrate"] = {"method": "temperature"}
    return cfg


def mitdb_config(work: Path, data: Path, epochs: int) -> dict[str, Any]:
    """MIT-BIH beats (signal + numeric-only rr record: the model whose ONNX runtime failed)."""
    from medmodal.datasets import get_dataset

    records = ["106", "119", "209", "100", "220", "228", "232"]
    prepared = work / "mitdb_data" / "schema.yaml"
    if not prepared.is_file():
        get_dataset("mitdb").prepare(work / "mitdb_data", data / "mitdb", records=records,
                                     val_records=["220"])  # fmt: skip
    return {
        "name": "mitdb",
        "seed": 0,
        "output_dir": str(work / f"mitdb_{epochs}ep"),
        "data": {"manifest": str(work / "mitdb_data" / "manifest.csv"), "schema": str(prepared)},
        "model": {
            "encoders": {
                "signal": {"name": "cnn1d", "channels": [8, 16]},
                "rr": {"name": "mlp", "hidden": [32]},
            }
        },  # fmt: skip
        "train": {
            "epochs": epochs,
            "batch_size": 256,
            "lr": 3e-3,
            "threads": 1,
            "class_weights": "balanced",
            "monitor": "loss",
        },  # fmt: skip
        "evaluate": {"bootstrap": 200, "report": False, "ablation": False},
    }


def mitdb_parts(ckpt: Path, n: int) -> list[dict[str, tuple[str, bytes]]]:
    """Real MIT-BIH test beats as the service takes them: the beat window as a one-lead .npy at
    its native 360 Hz (``signal.fs``) and the rr fields as JSON."""
    import json

    import pandas as pd

    from medmodal.data.readers.signal import parse_ref, read_signal
    from medmodal.predictor import Predictor

    run = ckpt.parent
    frame = pd.read_csv(run.parent / "mitdb_data" / "manifest.csv")
    test_ids = set(pd.read_csv(run / "predictions_test.csv")["sample_id"].astype(str))
    test = frame[frame["sample_id"].astype(str).isin(test_ids)]
    test = test.sample(n=min(n, len(test)), random_state=0)
    rr = Predictor.load(ckpt).schema.modalities["rr"].input_columns()
    out = []
    for _, row in test.iterrows():
        path, start, stop = parse_ref(row["signal"])
        x, _, _ = read_signal(f"{path}#{start}:{stop}", ["MLII", "V5"], lead_fallback=True)
        b = io.BytesIO()
        np.save(b, x.astype(np.float32))
        fields = {c: float(row[c]) for c in rr if pd.notna(row.get(c))}
        out.append({"signal": ("beat.npy", b.getvalue()), "signal.fs": ("", b"360"),
                    "rr": ("", json.dumps(fields).encode())})  # fmt: skip
    return out


def trained(cfg: dict[str, Any]) -> Path:
    """The run's best.pt, training it first when absent."""
    from medmodal import api

    ckpt = Path(cfg["output_dir"]) / "best.pt"
    if not ckpt.is_file():
        api.fit(cfg, progress=False)
    return ckpt


# -- inputs ----------------------------------------------------------------------------------
def breast_parts(data: Path, n: int) -> list[dict[str, tuple[str, bytes]]]:
    """Real BreastMNIST test images as PNG parts."""
    from PIL import Image

    imgs = np.load(data / "medmnist" / "breastmnist.npz")["test_images"][:n]
    out = []
    for a in imgs:
        b = io.BytesIO()
        Image.fromarray(a).save(b, "PNG")
        out.append({"image": ("image.png", b.getvalue())})
    return out


def covid_parts(ckpt: Path, n: int) -> list[dict[str, tuple[str, bytes]]]:
    """Real covid_cxr test rows: the X-ray PNG, the note and the record fields of each."""
    import json

    import pandas as pd

    from medmodal.predictor import Predictor

    run = ckpt.parent
    manifest = run / "data" / "manifest.csv"
    frame = pd.read_csv(manifest)
    test_ids = set(pd.read_csv(run / "predictions_test.csv")["sample_id"].astype(str))
    test = frame[frame["sample_id"].astype(str).isin(test_ids)].head(n)
    schema = Predictor.load(ckpt).schema
    out = []
    for _, row in test.iterrows():
        parts: dict[str, tuple[str, bytes]] = {}
        for m, spec in schema.modalities.items():
            if spec.type == "tabular":
                rec = {c: row[c] for c in spec.input_columns() if pd.notna(row.get(c))}
                parts[m] = (
                    "",
                    json.dumps(
                        {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
                    ).encode(),
                )
            elif pd.notna(row.get(spec.column)):
                value = str(row[spec.column])
                data = Path(value).read_bytes() if spec.type != "text" else value.encode()
                parts[m] = (f"{m}.png" if spec.type == "image" else "", data)
        out.append(parts)
    return out


def multipart(parts: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    import httpx

    files = {k: (fn, v) if fn else (None, v) for k, (fn, v) in parts.items()}
    req = httpx.Request("POST", "http://x", files=files)
    return req.read(), req.headers["content-type"]


def parts_to_samples(ckpt: Path, parts: list[dict[str, tuple[str, bytes]]]) -> list[dict[str, Any]]:
    """The Samples the service builds from these parts (same path: serve.parts.parse_parts)."""
    from medmodal.predictor import Predictor
    from medmodal.serve.limits import Part
    from medmodal.serve.parts import parse_parts

    pred = Predictor.load(ckpt)
    samples = []
    for p in parts:
        row, _ = parse_parts(pred, {k: Part(v, fn or None) for k, (fn, v) in p.items()})
        samples.append(pred.sample(row))
    return samples


# -- parity ----------------------------------------------------------------------------------
def onnx_parity(ckpt: Path, parts: list[dict[str, tuple[str, bytes]]]) -> dict[str, Any]:
    """Export, then max |logit difference| on the samples with every modality given, and with
    each modality removed in turn (the presence masks)."""
    from medmodal.export.onnx import export_onnx, onnx_session, parity
    from medmodal.predictor import Predictor

    pred = Predictor.load(ckpt)
    path = export_onnx(pred, ckpt.with_suffix(".onnx"))
    session = onnx_session(path)
    samples = parts_to_samples(ckpt, parts)
    diffs = {"all_given": parity(pred, session, samples)}
    for m in pred.processors:
        hidden = [dict(s, present={**s["present"], m: False}) for s in samples]
        diffs[f"without_{m}"] = parity(pred, session, hidden)
    return {"samples": len(samples), "max_abs_diff": max(diffs.values()), "by_case": diffs}


# -- the server ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(ckpts: list[str], tokens: Path, work: Path, runtime: str) -> tuple[Any, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "medmodal.cli",
        "serve",
        *ckpts,
        "--tokens",
        str(tokens),
        "--port",
        str(port),
        "--runtime",
        runtime,
        "--audit-log",
        str(work / f"audit_{runtime}.jsonl"),
    ]
    log = open(work / f"server_{runtime}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(240):
        time.sleep(0.5)
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
    proc.kill()
    raise RuntimeError(f"server did not start; see {work / f'server_{runtime}.log'}")


def load_test(
    url: str, token: str, model: str, bodies: Path, work: Path, users: int, seconds: int
) -> dict[str, Any]:
    """Locust headless for ``seconds``: requests, failures, requests/s, p50/p95/p99 (ms)."""
    prefix = work / f"locust_{model}_{int(time.time())}"
    load_before = [round(x, 2) for x in os.getloadavg()]
    env = {**os.environ, "MM_TOKEN": token, "MM_MODEL": model, "MM_BODIES": str(bodies)}
    cmd = [
        "locust",
        "-f",
        str(HERE / "serve_locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--host",
        url,
        "--csv",
        str(prefix),
        "--only-summary",
        "--stop-timeout",
        "5",
    ]
    subprocess.run(cmd, env=env, check=False, capture_output=True, timeout=seconds + 120)
    with open(f"{prefix}_stats.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "predict")
    return {
        "users": users,
        "seconds": seconds,
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "mean_ms": float(row["Average Response Time"]),
        "load_average_before": load_before,
    }


def write_bodies(parts: list[dict[str, tuple[str, bytes]]], path: Path) -> Path:
    """Prebuilt multipart bodies (each with its own boundary, so its own content type)."""
    arrays: dict[str, Any] = {}
    ctypes = []
    for i, p in enumerate(parts):
        body, ctype = multipart(p)
        arrays[f"body_{i:04d}"] = np.frombuffer(body, dtype=np.uint8)
        ctypes.append(ctype)
    np.savez(path, content_types=np.array(ctypes), **arrays)
    return path


def model_throughput(
    ckpt: Path, parts: list[dict[str, tuple[str, bytes]]], batch: int = 64, reps: int = 20
) -> float:
    """The model's own batched inference (samples/s) on one thread, preprocessing excluded."""
    import torch

    from medmodal.predictor import Predictor

    torch.set_num_threads(1)
    pred = Predictor.load(ckpt)
    samples = (parts_to_samples(ckpt, parts) * batch)[:batch]
    pred.sample_logits(samples)
    t = time.perf_counter()
    for _ in range(reps):
        pred.sample_logits(samples)
    return batch * reps / (time.perf_counter() - t)


def run_schemathesis(url: str, token: str, work: Path, examples: int) -> dict[str, Any]:
    """schemathesis against the served schema; counts server errors (5xx)."""
    import httpx

    schema = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {token}"}).text
    (work / "openapi.json").write_text(schema)
    cmd = [
        "schemathesis",
        "run",
        str(work / "openapi.json"),
        "--url",
        url,
        "-H",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(examples),
        "--no-color",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    text = proc.stdout + proc.stderr
    (work / "schemathesis.log").write_text(text.replace(token, "<token>"))
    tail = [line for line in text.splitlines() if line.strip()][-6:]
    return {
        "exit_code": proc.returncode,
        "server_errors": 0 if proc.returncode == 0 else None,
        "max_examples": examples,
        "summary": [t.replace(token, "<token>") for t in tail],
    }


# -- run ---------------------------------------------------------------------------------------
def serve_and_load(
    names: dict[str, Path],
    parts: dict[str, list[Any]],
    args: argparse.Namespace,
    work: Path,
    runtime: str,
) -> dict[str, Any]:
    """Start one server with these models and load-test each in turn."""
    from medmodal.serve.auth import create_token

    tokens = work / "tokens.json"
    tokens.unlink(missing_ok=True)
    token = create_token(tokens, "benchmark")
    proc, url = start_server([f"{n}={p}" for n, p in names.items()], tokens, work, runtime)
    out = {}
    try:
        for name in names:
            bodies = write_bodies(parts[name], work / f"bodies_{name}.npz")
            load_test(url, token, name, bodies, work, args.users, 5)  # warm-up
            out[name] = load_test(url, token, name, bodies, work, args.users, args.seconds)
            print(runtime, name, out[name], flush=True)
        if "schemathesis" in args.arms and runtime == "pytorch":
            out["_schemathesis"] = run_schemathesis(url, token, work, args.examples)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def parity_arm(
    work: Path, data: Path, models: dict[str, Path], parts: dict[str, list[Any]]
) -> dict[str, Any]:
    """ONNX parity: the served models, and one short covid_cxr run per fusion."""
    out = {name: onnx_parity(ckpt, parts[name]) for name, ckpt in models.items()}
    for fusion in FUSIONS:
        ckpt = trained(covid_config(work, data, fusion, 2))
        out[f"covid_{fusion}"] = onnx_parity(ckpt, parts["covid"])
        print("parity", fusion, out[f"covid_{fusion}"]["max_abs_diff"], flush=True)
    return out


def encoder_parity(data: Path) -> dict[str, Any]:
    """Every registered encoder, random weights over processors fitted on real inputs
    (tests/test_serve_onnx.py's models): max |logit difference| PyTorch vs ONNX Runtime."""
    import tempfile

    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_serve_onnx import export_parity, random_predictor, real_inputs

    from medmodal.errors import ConfigError
    from medmodal.models.encoders.base import ENCODERS, encoder_modalities

    rows = real_inputs(data)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ENCODERS.names():
            kind = encoder_modalities(name)[0]
            pred = random_predictor(kind, name, rows[kind])
            try:
                diff = export_parity(pred, rows[kind], Path(tmp) / f"{name}.onnx")
                out[name] = {"modality": kind, "samples": len(rows[kind]), "max_abs_diff": diff}
            except ConfigError as exc:
                out[name] = {"modality": kind, "refused": str(exc)}
            print("encoder parity", name, out[name], flush=True)
    return out


def service_parity(
    names: dict[str, Path], parts: dict[str, list[Any]], work: Path
) -> dict[str, Any]:
    """The same requests to a PyTorch and an ONNX Runtime server: answers compared."""
    import httpx

    from medmodal.serve.auth import create_token

    tokens = work / "tokens_parity.json"
    tokens.unlink(missing_ok=True)
    token = create_token(tokens, "parity")
    h = {"Authorization": f"Bearer {token}"}
    answers: dict[str, dict[str, list[Any]]] = {}
    for runtime in ("pytorch", "onnx"):
        proc, url = start_server([f"{n}={p}" for n, p in names.items()], tokens, work, runtime)
        try:
            for name in names:
                got = []
                for p in parts[name]:
                    files = {k: (fn or None, v) for k, (fn, v) in p.items()}
                    got.append(httpx.post(f"{url}/v1/models/{name}/predict", files=files,
                                          headers=h, timeout=60).json())  # fmt: skip
                answers.setdefault(name, {})[runtime] = got
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out = {}
    for name, by in answers.items():
        a, b = by["pytorch"], by["onnx"]
        errors = sum("probabilities" not in x for x in a + b)
        ok = [
            (x, y)
            for x, y in zip(a, b, strict=True)
            if "probabilities" in x and "probabilities" in y
        ]
        diff = max((abs(x["probabilities"][k] - y["probabilities"][k]) for x, y in ok
                    for k in x["probabilities"]), default=float("nan"))  # fmt: skip
        flips = sum(x["prediction"] != y["prediction"] for x, y in ok)
        out[name] = {
            "requests": len(a),
            "errors": errors,
            "max_abs_prob_diff": diff,
            "flips": flips,
        }
        print("service parity", name, out[name], flush=True)
    return out


def probes_arm(
    names: dict[str, Path], parts: dict[str, list[Any]], data: Path, work: Path
) -> dict[str, Any]:
    """The probe table: bad files as every modality, crafted JSON, bombs, mixed concurrency,
    stalled clients; against one PyTorch server with every model."""
    import random

    import serve_probes as sp

    from medmodal.predictor import Predictor
    from medmodal.serve.auth import create_token
    from medmodal.serve.limits import Limits

    rng = random.Random(0)
    tokens = work / "tokens_probes.json"
    tokens.unlink(missing_ok=True)
    token = create_token(tokens, "probes")
    proc, url = start_server([f"{n}={p}" for n, p in names.items()], tokens, work, "pytorch")
    samples = sp.sample_files(data)
    rows: dict[str, Any] = {}
    try:
        for name, ckpt in names.items():
            mods = Predictor.load(ckpt).schema.modalities
            for m, spec in mods.items():
                bodies = [sp.as_parts(spec.type, m, f) for f in sp.bad_files(samples, rng)]
                if spec.type == "tabular":
                    bodies += [sp.as_parts("tabular", m, j) for j in sp.crafted_json(rng)]
                key = f"bad files as {spec.type} ({name}.{m})"
                rows[key] = sp.probe(f"{url}/v1/models/{name}/predict", token, bodies)
                print(key, rows[key], flush=True)
        target = {
            "image": "breast_cnn",
            "signal": "mitdb",
            "tabular": "covid",
            "audio": "breast_cnn",
        }
        part = {"image": "image", "signal": "signal", "tabular": "record", "audio": "image"}
        for label, (kind, blob) in sp.bombs(data).items():
            base = kind.split("#")[0]
            model = target[base]
            body = sp.as_parts(kind, part[base], blob)
            for q in ("", "?explain=true"):
                key = f"bomb: {label}{' + explain' if q else ''}"
                rows[key] = sp.probe(f"{url}/v1/models/{model}/predict{q}", token, [body], 1)
                print(key, rows[key], flush=True)
        good = [("covid", p) for p in parts["covid"][:40]] + [
            ("mitdb", p) for p in parts["mitdb"][:40]
        ]
        bad = [("covid", sp.as_parts("image", "image", f)) for f in sp.bad_files(samples, rng)][:80]
        mixed = good * 3 + bad * 3
        rng.shuffle(mixed)
        key = f"concurrency: {len(mixed)} good and bad mixed, 64 at once"
        rows[key] = _mixed(sp, url, token, mixed)
        print(key, rows[key], flush=True)
        limits = Limits()
        key = "stalled: 20 idle connections + 20 bodies that stop"
        path = "/v1/models/covid/predict"
        rows[key] = sp.stalled(url, path, token, 20, limits.header_timeout, limits.timeout)
        print(key, rows[key], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def _mixed(sp: Any, url: str, token: str, mixed: list[tuple[str, Any]]) -> dict[str, Any]:
    import asyncio

    async def run() -> Any:
        by_model: dict[str, list[Any]] = {}
        for name, body in mixed:
            by_model.setdefault(name, []).append(body)
        outs = await asyncio.gather(*(sp._many(f"{url}/v1/models/{n}/predict", token, b, 32, 60)
                                      for n, b in by_model.items()))  # fmt: skip
        return [x for o in outs for x in o]

    results = asyncio.run(run())
    return sp.summarise([s for s, _ in results], [t for _, t in results])


def ab_arm(ckpt: Path, parts: list[Any], work: Path, baseline_src: str, reps: int = 2) -> Any:
    """The same locust load (breast_cnn, 16 users, 20 s) against a server running the code at
    ``baseline_src`` (another checkout's ``src``) and this one, alternated: the request rate of
    each and their ratio, measured beside whatever else runs on the machine at that time."""
    from medmodal.serve.auth import create_token

    bodies = write_bodies(parts, work / "bodies_ab.npz")
    tokens = work / "tokens_ab.json"
    tokens.unlink(missing_ok=True)
    token = create_token(tokens, "ab")
    own = os.environ.get("PYTHONPATH", "")
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(reps):
            for code, src in (("baseline", baseline_src), ("this", str(HERE.parent / "src"))):
                os.environ["PYTHONPATH"] = src
                proc, url = start_server([f"breast_cnn={ckpt}"], tokens, work, "pytorch")
                try:
                    load_test(url, token, "breast_cnn", bodies, work, 16, 5)  # warm-up
                    run = load_test(url, token, "breast_cnn", bodies, work, 16, 20)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                runs.append({"code": code, **run})
                print("ab", code, run, flush=True)
    finally:
        os.environ["PYTHONPATH"] = own
    mean = {
        c: float(np.mean([r["rps"] for r in runs if r["code"] == c])) for c in ("baseline", "this")
    }
    return {"baseline_src": baseline_src, "runs": runs, "mean_rps": mean,
            "ratio": mean["this"] / mean["baseline"]}  # fmt: skip


def memory_arm(ckpt: Path, work: Path, users: int = 16) -> dict[str, Any]:
    """Peak server RSS while ``users`` clients send maximum-size images at once (a grey
    gradient at the pixel limit), and /healthz's worst latency meanwhile."""
    import asyncio
    import math

    import serve_probes as sp

    from medmodal.serve.auth import create_token
    from medmodal.serve.limits import Limits

    limits = Limits()
    side = math.isqrt(limits.max_pixels)
    img = sp.gradient_png(side)
    tokens = work / "tokens_memory.json"
    tokens.unlink(missing_ok=True)
    token = create_token(tokens, "memory")
    proc, url = start_server([f"breast_cnn={ckpt}"], tokens, work, "pytorch")
    try:
        body = {"image": ("max.png", img)}
        sp.probe(f"{url}/v1/models/breast_cnn/predict", token, [body], 1)  # warm-up

        def run() -> Any:
            return sp.probe(
                f"{url}/v1/models/breast_cnn/predict", token, [body] * (4 * users), users
            )

        (counts, worst), rss = sp.peak_rss(
            proc.pid, lambda: asyncio.run(sp.healthz_during(url, run))
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "image": f"{side} x {side} grey PNG ({len(img) / 2**20:.1f} MB file)",
        "concurrent": users,
        "requests": counts,
        "rss": {k: round(v, 1) for k, v in rss.items()},
        "budget_mb": limits.memory_budget_mb,
        "limits": {
            "max_decodes": limits.max_decodes,
            "request_mb": limits.request_mb,
            "bodies_mb": limits.bodies_mb,
            "max_pixels": limits.max_pixels,
        },  # fmt: skip
        "healthz": worst,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(ap, "serve", arms=ARMS)
    ap.add_argument("--seconds", type=int, default=30, help="locust run time per model and runtime")
    ap.add_argument("--users", type=int, default=16, help="concurrent locust users (closed loop)")
    ap.add_argument("--examples", type=int, default=100, help="schemathesis examples per operation")
    ap.add_argument(
        "--baseline-src", default=None, help="arm ab: the src folder of the code to compare"
    )
    args = ap.parse_args()
    old = common.previous_results(args, args.out, _previous, render)
    if old is None:  # --render-only
        return
    data, work = common.data_dir(args), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), common.cpu_seconds()
    models = {
        "breast_cnn": trained(breast_config(work, data, "baseline_cnn", 10)),
        "breast_resnet18": trained(breast_config(work, data, "resnet18", 5)),
        "covid": trained(covid_config(work, data, "concat", 8)),
    }
    bparts = breast_parts(data, 156)
    parts = {
        "breast_cnn": bparts,
        "breast_resnet18": bparts,
        "covid": covid_parts(models["covid"], 80),
    }
    result: dict[str, Any] = {  # --merge: the sections of arms not run now are kept
        **old,
        "environment": common.environment(),
        "provenance": common.provenance(),
    }
    result["targets"] = {"rps": TARGET_RPS, "p99_ms": TARGET_P99_MS, "resnet18_ratio": TARGET_RATIO}
    result["test_metrics"] = {n: _test_auroc(p) for n, p in models.items()}
    hard = {  # the models the hardening issue (#26) probed: a BiGRU note model, MIT-BIH
        "covid_bigru": trained(covid_bigru_config(work, data, 8)),
        "mitdb": trained(mitdb_config(work, data, 2)),
    }
    parts["covid_bigru"] = covid_parts(hard["covid_bigru"], 80)
    parts["mitdb"] = mitdb_parts(hard["mitdb"], 80)
    if "parity" in args.arms:
        result["parity"] = parity_arm(work, data, models, parts)
        result["parity_encoders"] = encoder_parity(data)
        served = {"breast_cnn": models["breast_cnn"], "covid": models["covid"], **hard}
        for ckpt in served.values():
            onnx_parity(ckpt, parts[[k for k, v in served.items() if v == ckpt][0]][:8])
        result["parity_service"] = service_parity(served, parts, work)
    if "probes" in args.arms:
        served = {"breast_cnn": models["breast_cnn"], "covid": models["covid"], **hard}
        result["probes"] = probes_arm(served, parts, data, work)
    if "memory" in args.arms:
        result["memory"] = memory_arm(models["breast_cnn"], work)
    if "ab" in args.arms:
        if not args.baseline_src:
            raise SystemExit("--arms ab needs --baseline-src (another checkout's src folder)")
        result["ab"] = ab_arm(models["breast_cnn"], bparts, work, args.baseline_src)
    if "load" in args.arms or "schemathesis" in args.arms:
        for ckpt in models.values():
            if not ckpt.with_suffix(".onnx").is_file():
                onnx_parity(ckpt, parts["covid" if "covid" in str(ckpt) else "breast_cnn"][:4])
        torch_runs = serve_and_load(models, parts, args, work, "pytorch")
        schema_run = torch_runs.pop("_schemathesis", None)
        if "schemathesis" in args.arms:
            result["schemathesis"] = schema_run
        result["load"] = {"pytorch": torch_runs}
        if "load" in args.arms:
            result["load"]["onnx"] = serve_and_load(models, parts, args, work, "onnx")
            result["model_throughput"] = {
                n: model_throughput(models[n], bparts) for n in ("breast_cnn", "breast_resnet18")
            }
    result["invocation"] = common.invocation(args.arms, time.time() - t0, common.cpu_seconds() - c0)
    earlier = old.get("invocations") or ([old["invocation"]] if "invocation" in old else [])
    result["invocations"] = [*earlier, result["invocation"]]
    common.write_result(args.out, result, render)
    print(Path(args.out).with_suffix(".md").read_text())


def _previous(path: Path) -> dict[str, Any]:
    return common.read_json(Path(path).with_suffix(".json")) or {}


def _test_auroc(ckpt: Path) -> dict[str, Any]:
    import json

    m = json.loads((ckpt.parent / "metrics.json").read_text())["test"]
    return {"auroc": m.get("auroc"), "ci": (m.get("ci") or {}).get("auroc")}


def _verdicts(r: dict[str, Any]) -> list[str]:
    out = []
    tp = r.get("model_throughput") or {}
    for runtime, runs in (r.get("load") or {}).items():
        cnn = runs.get("breast_cnn")
        if cnn:
            ok = cnn["rps"] >= TARGET_RPS and cnn["p99_ms"] < TARGET_P99_MS
            out.append(
                f"- baseline_cnn, {runtime}: {cnn['rps']:.0f} requests/s, p99 {cnn['p99_ms']:.0f} ms "
                f"(target >= {TARGET_RPS} and < {TARGET_P99_MS} ms): **{'met' if ok else 'missed'}**"
            )
        r18 = runs.get("breast_resnet18")
        if r18 and tp.get("breast_resnet18"):
            ratio = r18["rps"] / tp["breast_resnet18"]
            out.append(
                f"- ResNet-18, {runtime}: {r18['rps']:.0f} requests/s = {100 * ratio:.0f} % of the "
                + ("PyTorch " if runtime != "pytorch" else "")
                + f"model's own batched throughput ({tp['breast_resnet18']:.0f} samples/s, PyTorch, 1 thread; "
                f"target >= {100 * TARGET_RATIO:.0f} %): **{_ratio_verdict(runtime, ratio)}**"
            )
        total = sum(v["requests"] for v in runs.values())
        fails = sum(v["failures"] for v in runs.values())
        out.append(f"- {runtime}: {total} requests, {fails} errors (target: 0 over >= 10,000)")
    return out


def _ratio_verdict(runtime: str, ratio: float) -> str:
    if runtime != "pytorch":
        return "not judged: ONNX Runtime's own model-only throughput was not measured"
    return "met" if ratio >= TARGET_RATIO else "missed"


LOAD_HEADERS = [
    "runtime",
    "model",
    "users",
    "requests",
    "errors",
    "requests/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "load avg before",
]


def _load_lines(r: dict[str, Any]) -> list[str]:
    rows = [
        [runtime, name, v["users"], v["requests"], v["failures"], f"{v['rps']:.0f}"]
        + [f"{v[k]:.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        + [v.get("load_average_before", ["?"])[0]]
        for runtime, runs in (r.get("load") or {}).items()
        for name, v in runs.items()
    ]
    lines = common.table(LOAD_HEADERS, rows) + [""] if rows else []
    tp = r.get("model_throughput") or {}
    if tp:
        what = ", ".join(f"{k} {v:.0f} samples/s" for k, v in tp.items())
        lines += [
            f"Model-only batched inference (batch 64, 1 thread, no preprocessing): {what}",
            "",
        ]
    return lines


def _parity_lines(par: dict[str, Any]) -> list[str]:
    if not par:
        return []
    rows = [
        [k, v["samples"], f"{v['max_abs_diff']:.2e}", max(v["by_case"], key=v["by_case"].get)]
        for k, v in par.items()
    ]
    head = ["## ONNX parity (max absolute logit difference, real test samples)", ""]
    return head + common.table(["model", "samples", "max abs diff", "worst case"], rows) + [""]


def _other_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    st = r.get("schemathesis")
    if st:
        lines += [
            "## schemathesis",
            "",
            f"exit code {st['exit_code']}; checks: not_a_server_error; "
            f"up to {st['max_examples']} examples per operation",
            "",
            "```",
            *st["summary"],
            "```",
            "",
        ]
    tm = r.get("test_metrics") or {}
    if tm:
        lines += ["## Served models (test AUROC, 95% CI)", ""]
        for k, v in tm.items():
            ci = f" [{v['ci']['low']:.3f}, {v['ci']['high']:.3f}]" if v.get("ci") else ""
            lines.append(f"- {k}: {v['auroc']:.3f}{ci}")
        lines.append("")
    runs = r.get("invocations") or [r.get("invocation") or {}]
    return lines + [
        "## Reproduce",
        "",
        *(
            f"- `{v.get('command', '')}` (arms {', '.join(v.get('arms') or [])}; commit "
            f"{v.get('commit', '')}, {v.get('date', '')})"
            for v in runs
        ),
        "",
    ]


PROBE_HEADERS = ["probe", "requests", "2xx", "4xx", "5xx", "503 busy", "hangs", "other", "max s"]


def _healthz_line(mem: dict[str, Any]) -> str:
    h = mem.get("healthz") or {}
    if "p50_ms" not in h:  # an earlier run recorded the worst latency only
        return f"- /healthz worst latency meanwhile: {mem.get('healthz_worst_s', 0) * 1000:.0f} ms"
    return (f"- /healthz meanwhile (every 20 ms, {h['polls']} polls): p50 {h['p50_ms']:.0f} ms, "
            f"p95 {h['p95_ms']:.0f} ms, max {h['max_ms']:.0f} ms; decoding runs in worker threads, "
            "not on the event loop")  # fmt: skip


def _hardening_lines(r: dict[str, Any]) -> list[str]:
    """The probe table, memory under maximum-size requests, ONNX parity per encoder and through
    the service, against the issue's targets (0 5xx, 0 hangs, RSS in budget, parity <= 1e-4)."""
    lines: list[str] = []
    probes = dict(r.get("probes") or {})
    st = r.get("schemathesis")
    if probes or st:
        rows = [[k, v["requests"], v["2xx"], v["4xx"], v["5xx"], v.get("503_busy", 0), v["hangs"],
                 v.get("other", 0), v.get("max_seconds", "")] for k, v in probes.items()]  # fmt: skip
        if st:
            rows.append(["schemathesis (stateful + every operation; see below)", "see below", "", "",
                         0 if st.get("exit_code") == 0 else "see log", "", "", "", ""])  # fmt: skip
        five = sum(v["5xx"] for v in probes.values())
        hangs = sum(v["hangs"] for v in probes.values())
        lines += ["## Hostile-client probes (issue #26)", ""]
        lines += common.table(PROBE_HEADERS, rows) + [""]
        lines += [f"Targets: 0 5xx ({five}: **{'met' if five == 0 else 'missed'}**), 0 hangs "
                  f"({hangs}: **{'met' if hangs == 0 else 'missed'}**). 503 busy = refused with "
                  "Retry-After at the decode / upload bound (by design, not an error); 'other' = "
                  "connection errors seen by the client (a closed idle connection is 'closed').", ""]  # fmt: skip
    mem = r.get("memory")
    if mem:
        rss = mem["rss"]
        ok = rss["growth_mb"] <= mem["budget_mb"]
        lines += ["## Memory: 16 concurrent maximum-size requests", "",
                  f"- {mem['concurrent']} clients, {mem['requests']['requests']} requests of a "
                  f"{mem['image']}: {mem['requests']['2xx']} answered, "
                  f"{mem['requests'].get('503_busy', 0)} told to retry (503), "
                  f"{mem['requests']['5xx']} 5xx, {mem['requests']['hangs']} hangs",
                  f"- server RSS: baseline {rss['baseline_mb']:.0f} MB, peak {rss['peak_mb']:.0f} MB "
                  f"(+{rss['growth_mb']:.0f} MB) against the configured budget of "
                  f"{mem['budget_mb']:.0f} MB over the loaded models "
                  f"({mem['limits']}): **{'within' if ok else 'over'}**",
                  _healthz_line(mem), ""]  # fmt: skip
    enc = r.get("parity_encoders") or {}
    if enc:
        rows = [[k, v["modality"], v.get("samples", ""),
                 f"{v['max_abs_diff']:.2e}" if "max_abs_diff" in v else "refused: " + v["refused"]]
                for k, v in enc.items()]  # fmt: skip
        worst = max((v["max_abs_diff"] for v in enc.values() if "max_abs_diff" in v), default=0)
        lines += ["## ONNX parity per registered encoder (random weights, real inputs)", ""]
        lines += common.table(["encoder", "modality", "samples", "max abs logit diff"], rows)
        lines += ["", f"Target <= 1e-4 for every exported model: worst {worst:.2e}, "
                  f"**{'met' if worst <= 1e-4 else 'missed'}**.", ""]  # fmt: skip
    ab = r.get("ab")
    if ab:
        m = ab["mean_rps"]
        lines += ["## Request rate against the code before this hardening (A/B, same run)", "",
                  f"breast_cnn, 16 locust users, 20 s per run, alternated x{len(ab['runs']) // 2}: "
                  f"before {m['baseline']:.0f} requests/s, after {m['this']:.0f} requests/s "
                  f"(ratio {ab['ratio']:.2f}); runs: "
                  + ", ".join(f"{x['code']} {x['rps']:.0f} (p99 {x['p99_ms']:.0f} ms, load "
                              f"{x['load_average_before'][0]})" for x in ab["runs"]), ""]  # fmt: skip
    svc = r.get("parity_service") or {}
    if svc:
        rows = [[k, v["requests"], v["errors"], f"{v['max_abs_prob_diff']:.2e}", v["flips"]]
                for k, v in svc.items()]  # fmt: skip
        lines += ["## ONNX through the service (same requests to a PyTorch and an ONNX server)", ""]
        lines += common.table(["model", "requests", "errors", "max abs prob diff", "flipped"], rows)
        lines += [""]
    return lines


def render(r: dict[str, Any]) -> str:
    lines = ["# Prediction service under load", "", common.env_line(r.get("environment", {})), ""]
    lines += [
        "Locust (FastHttpUser, headless, closed loop) and the server share this machine's 2 CPU",
        "cores; the server is one process, torch on one thread, micro-batching up to 64 requests.",
        "",
    ]
    lines += _load_lines(r) + ["## Against the targets", "", *_verdicts(r), ""]
    lines += [
        "Caveat: server and locust share the 2 cores (locust takes about one). The load average",
        "(1 min) before each run is in the table; runs follow one another, so it includes the",
        "previous run's server and locust, and anything else on the machine (a shared VM: a load",
        "above 2.5 means other jobs). The ONNX ResNet-18 ratio is against PyTorch's model-only",
        "throughput (ONNX Runtime's own was not measured).",
        "",
    ]
    lines += _hardening_lines(r)
    return "\n".join(lines + _parity_lines(r.get("parity") or {}) + _other_lines(r))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
