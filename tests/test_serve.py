"""The prediction service: tokens, de-identification, audit chain, limits, inputs, ONNX parity."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medmodal import api  # noqa: E402
from medmodal.errors import ConfigError  # noqa: E402
from medmodal.serve.audit_log import AuditLog, verify  # noqa: E402
from medmodal.serve.auth import TokenStore, create_token  # noqa: E402
from medmodal.serve.deid import action_of, deidentify_bytes, profile  # noqa: E402
from medmodal.serve.inference import ModelEntry  # noqa: E402
from medmodal.serve.limits import MB, Limits  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def breast_ckpt(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BreastMNIST baseline CNN (28 px, 2 epochs) trained on the real data."""
    out = tmp_path_factory.mktemp("serve_breast")
    cfg = {
        "name": "breast",
        "seed": 0,
        "output_dir": str(out / "breast"),
        "data": {"dataset": "breastmnist", "data_dir": str(data_dir)},
        "model": {"encoders": {"image": {"name": "baseline_cnn", "filters": 8, "hidden": 16}}},
        "train": {"epochs": 2, "batch_size": 64, "threads": 1},
        "evaluate": {"bootstrap": 50, "report": False},
    }
    return api.fit(cfg, progress=False).checkpoint


@pytest.fixture(scope="module")
def breast_images(data_dir: Path) -> np.ndarray:
    return np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][:8]


@pytest.fixture(scope="module")
def service(breast_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from medmodal.serve.app import create_app

    d = tmp_path_factory.mktemp("serve_app")
    token = create_token(d / "tokens.json", "alice")
    audit = AuditLog(d / "audit.jsonl")
    models = {"breast": ModelEntry("breast", breast_ckpt)}
    app = create_app(models, TokenStore.load(d / "tokens.json"), audit, Limits(max_bytes=1 * MB))
    with TestClient(app) as client:
        yield {"client": client, "token": token, "audit": d / "audit.jsonl", "dir": d}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_endpoint_refuses_no_token_and_a_wrong_token(service: dict[str, Any]) -> None:
    c = service["client"]
    schema = c.get("/openapi.json", headers=auth(service["token"])).json()
    routes = [(m, p) for p, ops in schema["paths"].items() for m in ops if p != "/healthz"]
    routes.append(("get", "/openapi.json"))
    assert len(routes) >= 5
    for method, path in routes:
        url = path.replace("{name}", "breast")
        for headers in ({}, auth("mm_wrong"), {"Authorization": "Basic abc"}):
            r = c.request(method.upper(), url, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
    assert c.get("/healthz").status_code == 200


def test_predict_png_named_dcm_reads_by_content_and_audits(
    service: dict[str, Any], breast_images: np.ndarray
) -> None:
    c = service["client"]
    files = {"image": ("scan.dcm", png_bytes(breast_images[0]), "application/dicom")}
    r = c.post("/v1/models/breast/predict", headers=auth(service["token"]), files=files)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out["probabilities"]) == {"normal, benign", "malignant"}
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-5
    assert out["modalities"] == {"used": ["image"], "missing": [], "empty": []}
    assert out["calibration"] == "none in this checkpoint" and out["prediction_set"] is None
    assert out["explanation"]["available"] is False
    line = json.loads(service["audit"].read_text().splitlines()[-1])
    assert line["token"] == "alice" and line["model"] == "breast" and line["hash"] == out["audit"]
    assert line["inputs"]["image"] == out["input_digests"]["image"]


def test_bad_inputs_are_4xx_naming_the_part(service: dict[str, Any]) -> None:
    c, h = service["client"], auth(service["token"])
    cases = [
        ({"image": ("x.png", b"not an image at all", "image/png")}, 422, "image"),
        ({"image": ("x.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")}, 422, "image"),
        ({"scan": ("x.png", b"abc", "image/png")}, 422, "scan"),
        (
            {"image": ("x.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 64, "application/dicom")},
            422,
            "image",
        ),
    ]
    for files, status, part in cases:
        r = c.post("/v1/models/breast/predict", headers=h, files=files)
        assert r.status_code == status, r.text
        assert part in r.json()["detail"] and r.json()["part"] == part
    r = c.post("/v1/models/breast/predict", headers=h, content=b"{}")
    assert r.status_code == 415
    r = c.post("/v1/models/nope/predict", headers=h, files={"image": ("x", b"x")})
    assert r.status_code == 404 and "breast" in r.json()["detail"]


def test_upload_size_limit_is_413(service: dict[str, Any]) -> None:
    c = service["client"]
    big = {"image": ("big.png", b"\0" * (MB + 10), "image/png")}
    r = c.post("/v1/models/breast/predict", headers=auth(service["token"]), files=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_model_card_and_metrics(service: dict[str, Any], breast_images: np.ndarray) -> None:
    c, h = service["client"], auth(service["token"])
    card = c.get("/v1/models/breast", headers=h).json()
    assert card["training_data"]["dataset"] == "breastmnist"
    assert len(card["training_data"]["data_hash"]) > 8
    assert card["metrics"]["test"]["auroc"]["ci95"][0] is not None
    assert card["known_limits"] and card["versions"]["trained_with"]["torch"]
    assert [m["name"] for m in c.get("/v1/models", headers=h).json()["models"]] == ["breast"]
    text = c.get("/metrics", headers=h).text
    assert 'medmodal_requests_total{method="GET",route="/v1/models/{name}",status="200"}' in text
    assert "medmodal_request_seconds_bucket" in text


def test_concurrent_requests_share_batches(breast_ckpt: Path, breast_images: np.ndarray) -> None:
    import asyncio

    entry = ModelEntry("breast", breast_ckpt, max_wait=0.05)
    from medmodal.serve.limits import Part

    prepared = [entry.prepare({"image": Part(png_bytes(a))}) for a in breast_images]

    async def all_at_once() -> list[dict[str, Any]]:
        return await asyncio.gather(*(entry.predict(p) for p in prepared))

    outs = asyncio.run(all_at_once())
    assert entry.batcher.batches == 1 and entry.batcher.items == len(breast_images)
    one = entry.run_batch([prepared[3].sample])[0]
    assert outs[3]["probabilities"] == pytest.approx(one["probabilities"], abs=1e-6)


def test_token_file_keeps_only_hashes(tmp_path: Path) -> None:
    token = create_token(tmp_path / "t.json", "bob")
    text = (tmp_path / "t.json").read_text()
    assert token not in text and "bob" in text
    store = TokenStore.load(tmp_path / "t.json")
    assert store.name_of(token) == "bob" and store.name_of(token + "x") is None
    assert (tmp_path / "t.json").stat().st_mode & 0o077 == 0


def test_audit_chain_catches_an_edited_or_deleted_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    for i in range(5):
        log.append(token="t", model="m", inputs={"image": f"{i:064x}"}, output={"p": i / 10})
    log.close()
    assert verify(tmp_path / "a.jsonl").ok
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    edited = lines.copy()
    edited[2] = edited[2].replace('"p": 0.2', '"p": 0.9')
    (tmp_path / "b.jsonl").write_text("\n".join(edited) + "\n")
    v = verify(tmp_path / "b.jsonl")
    assert not v.ok and "line 3" in v.problems[0] and "edited" in v.problems[0]
    (tmp_path / "c.jsonl").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    v = verify(tmp_path / "c.jsonl")
    assert not v.ok and "line 2" in v.problems[0]
    assert not verify(tmp_path / "a.jsonl", expect_head="0" * 64).ok
    reopened = AuditLog(tmp_path / "a.jsonl")  # appending continues the chain
    reopened.append(token="t", model="m", inputs={}, output={})
    reopened.close()
    assert verify(tmp_path / "a.jsonl").lines == 6


def _identified_dicom() -> bytes:
    """pydicom's CT test file with identifying values in many basic-profile attributes."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "123-45", "19610704"
    ds.InstitutionName, ds.ReferringPhysicianName = "St Elsewhere", "Dr^Who"
    ds.AccessionNumber, ds.StudyDate, ds.PatientAddress = "ACC99", "20200101", "1 Main St"
    ds.OtherPatientIDs, ds.StudyDescription = "XYZ", "chest for Jane Doe"
    ds.add_new(0x00091001, "LO", "private secret")
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


def test_deidentification_leaves_no_basic_profile_tag_and_the_pixels(tmp_path: Path) -> None:
    from pydicom import dcmread

    raw = _identified_dicom()
    before, after = dcmread(io.BytesIO(raw)), dcmread(io.BytesIO(deidentify_bytes(raw, "image")))
    assert len(profile()[0]) > 600
    for elem in after.iterall():
        action = action_of(int(elem.tag))
        assert not elem.tag.is_private, elem
        assert action != "X", elem
        if action == "Z":
            assert elem.value in (None, "", b"") or len(elem.value) == 0, elem
        if action in ("D", "U") and elem.VR != "SQ":
            assert str(elem.value) != str(before.get(elem.tag).value), elem
    text = str(after)
    for secret in ("Doe", "123-45", "19610704", "Elsewhere", "ACC99", "Main St", "private secret"):
        assert secret not in text
    assert after.PatientIdentityRemoved == "YES"
    assert after.PixelData == before.PixelData
    assert np.array_equal(after.pixel_array, before.pixel_array)


def test_dicom_upload_is_deidentified_before_the_audit(service: dict[str, Any]) -> None:
    import hashlib

    c = service["client"]
    raw = _identified_dicom()
    r = c.post(
        "/v1/models/breast/predict", headers=auth(service["token"]), files={"image": ("ct", raw)}
    )
    assert r.status_code == 200, r.text
    digest = r.json()["input_digests"]["image"]
    assert digest != hashlib.sha256(raw).hexdigest()
    assert digest == hashlib.sha256(deidentify_bytes(raw, "image")).hexdigest()
    assert "Doe" not in service["audit"].read_text()


def test_onnx_parity_every_fusion(
    breast_ckpt: Path, breast_images: np.ndarray, tmp_path: Path
) -> None:
    """Each fusion over image + record (random weights suffice for parity) on real images."""
    pytest.importorskip("onnxruntime")
    from medmodal.config import ExperimentConfig
    from medmodal.data.readers import Blob
    from medmodal.data.schema import Schema
    from medmodal.export.onnx import export_onnx, onnx_session, parity
    from medmodal.predictor import Predictor, make_processors, model_for

    base = Predictor.load(breast_ckpt)
    schema = Schema.load(
        {
            **base.schema.model_dump(mode="json"),
            "modalities": {
                "image": base.schema.modalities["image"].model_dump(mode="json"),
                "record": {"type": "tabular", "columns": ["age", "size"], "categorical": ["side"]},
            },
        }
    )
    procs = make_processors(schema)
    procs["image"].load_state_dict(base.processors["image"].state_dict())
    rows = [{"age": 40 + i, "size": 1.5 * i, "side": "lr"[i % 2]} for i in range(8)]
    procs["record"].fit([procs["record"].read(r, None) for r in rows])
    from medmodal.fusion import FUSIONS

    assert {"concat", "mean", "sum", "late", "attention", "gated"} <= set(FUSIONS.names())
    for fusion in FUSIONS.names():  # a new fusion is covered as soon as it is registered
        cfg = base.config.to_dict()
        cfg["model"] = {
            "encoders": {
                "image": {"name": "baseline_cnn", "filters": 4, "hidden": 8},
                "record": {"name": "mlp", "hidden": [8]},
            },
            "fusion": {"name": fusion},
        }
        cfg = ExperimentConfig.model_validate(cfg)
        pred = Predictor(
            schema, base.label_map, procs, model_for(schema, base.label_map, procs, cfg), cfg
        )
        pred.model.eval()
        session = onnx_session(export_onnx(pred, tmp_path / f"{fusion}.onnx"))
        samples = []
        for i, img in enumerate(breast_images):
            row: dict[str, Any] = {"image": Blob(png_bytes(img))} if i % 3 else {}
            if i % 4:
                row.update(rows[i])
            samples.append(
                pred.sample(row) if row else pred.sample({"image": Blob(png_bytes(img))})
            )
        samples[0]["present"] = {"image": True, "record": False}
        diff = parity(pred, session, samples)
        assert diff <= 1e-4, (fusion, diff)


def test_readers_take_uploads_in_memory_by_content(tmp_path: Path) -> None:
    import nibabel as nib
    import soundfile as sf

    from medmodal.data.readers import Blob, read_image
    from medmodal.data.readers.audio import read_audio
    from medmodal.data.readers.signal import load_record
    from medmodal.errors import DataError

    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert read_image(Blob(png_bytes(img), "scan.dcm")).shape == (1, 28, 28)
    vol = nib.Nifti1Image(np.random.rand(6, 7, 8).astype(np.float32), np.eye(4))
    assert read_image(Blob(vol.to_bytes(), "v")).shape == (1, 8, 7, 6)
    wav = io.BytesIO()
    sf.write(wav, 0.5 * np.sin(np.arange(2000) / 5).astype(np.float32), 2000, format="WAV")
    assert read_audio(Blob(wav.getvalue(), "heart"))[0].shape == (2000,)
    arr = io.BytesIO()
    np.save(arr, np.random.rand(2, 300))
    assert load_record(Blob(arr.getvalue(), "ecg"), fs=100).signal.shape == (2, 300)
    with pytest.raises(DataError, match="upload 'image'.*by its content"):
        read_image(Blob(b"%PDF-1.4 not an image", "image"))
    assert not list(tmp_path.iterdir())  # nothing was written


def test_cli_token_audit_and_export(breast_ckpt: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medmodal.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["token", "create", "carol", "--tokens", str(tmp_path / "t.json")])
    assert r.exit_code == 0 and r.stdout.strip().startswith("mm_")
    assert TokenStore.load(tmp_path / "t.json").name_of(r.stdout.strip()) == "carol"
    log = AuditLog(tmp_path / "a.jsonl")
    log.append(token="carol", model="m", inputs={}, output={})
    log.append(token="carol", model="m", inputs={}, output={"p": 1})
    log.close()
    assert runner.invoke(app, ["audit-log", "verify", str(tmp_path / "a.jsonl")]).exit_code == 0
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    (tmp_path / "a.jsonl").write_text(lines[1] + "\n")
    r = runner.invoke(app, ["audit-log", "verify", str(tmp_path / "a.jsonl")])
    assert r.exit_code == 1 and "line 1" in r.output
    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", str(breast_ckpt), "--format", "onnx", "--out", str(out)])
    assert r.exit_code == 0 and out.stat().st_size > 1000


def test_onnx_runtime_entry_matches_pytorch(
    breast_ckpt: Path, breast_images: np.ndarray, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from medmodal.export.onnx import export_onnx
    from medmodal.predictor import Predictor
    from medmodal.serve.limits import Part

    onnx = export_onnx(Predictor.load(breast_ckpt), tmp_path / "breast.onnx")
    torch_entry = ModelEntry("b", breast_ckpt)
    onnx_entry = ModelEntry("b", breast_ckpt, runtime="onnx", onnx_path=onnx)
    assert onnx_entry.card["model"]["runtime"] == "onnx"
    samples = [torch_entry.prepare({"image": Part(png_bytes(a))}).sample for a in breast_images]
    for a, b in zip(torch_entry.run_batch(samples), onnx_entry.run_batch(samples), strict=True):
        assert a["prediction"] == b["prediction"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_bf16_runtime_entry_is_close_to_fp32(breast_ckpt: Path, breast_images: np.ndarray) -> None:
    from medmodal.serve.limits import Part
    from medmodal.serve.server import load_models

    fp32 = ModelEntry("b", breast_ckpt)
    bf16 = load_models([f"b={breast_ckpt}"], runtime="pytorch-bf16")["b"]
    assert bf16.predictor.amp and bf16.card["model"]["runtime"] == "pytorch-bf16"
    samples = [fp32.prepare({"image": Part(png_bytes(a))}).sample for a in breast_images]
    diffs = [
        abs(a["probabilities"][k] - b["probabilities"][k])
        for a, b in zip(fp32.run_batch(samples), bf16.run_batch(samples), strict=True)
        for k in a["probabilities"]
    ]
    assert 0 < max(diffs) < 0.05  # bf16 really ran, and stays close
    with pytest.raises(ConfigError, match="pytorch-bf16"):
        load_models([f"b={breast_ckpt}"], runtime="tensorrt")
