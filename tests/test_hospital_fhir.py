"""FHIR R4 out and in: a validated DiagnosticReport bundle from the CLI and the service
(``Accept: application/fhir+json``, errors as OperationOutcome), and a FHIR Bundle (Patient,
Observation, DocumentReference) mapped onto a note + record model by a declared mapping."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("fhir.resources")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from medmodal import api  # noqa: E402
from medmodal.errors import ConfigError  # noqa: E402
from medmodal.hospital.fhir import FhirError, validate  # noqa: E402
from medmodal.hospital.fhir_input import bundle_parts, read_mapping  # noqa: E402
from medmodal.serve.auth import TokenStore, create_token  # noqa: E402
from medmodal.serve.inference import ModelEntry  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
MAPPING = {
    "note": {"resource": "DocumentReference"},
    "record": {
        "age": {"resource": "Patient", "field": "age"},
        "sex": {"resource": "Patient", "field": "gender", "values": {"male": "M", "female": "F"}},
        "crp": {"resource": "Observation", "code": "1988-5"},
    },
}


@pytest.fixture(scope="module")
def note_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SYNTHETIC note + record model (word tokenizer, BiGRU, MLP): mechanics only."""
    out = tmp_path_factory.mktemp("fhir")
    rng = np.random.default_rng(0)
    n = 160
    y = rng.integers(0, 2, n)
    words = np.array(["fever and cough", "no complaints today"])
    frame = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "note": [f"{words[v]} {w}" for v, w in zip(y, rng.choice(["a", "b"], n), strict=True)],
            "age": rng.integers(20, 90, n).astype(float),
            "sex": rng.choice(["M", "F"], n),
            "crp": y * 40 + rng.normal(10, 5, n),
            "label": np.array(["neg", "pos"])[y],
        }
    )
    frame.to_csv(out / "manifest.csv", index=False)
    schema = {
        "id_column": "sample_id",
        "target": {"task": "binary", "column": "label", "classes": ["neg", "pos"]},
        "modalities": {
            "note": {"type": "text", "column": "note", "preprocess": {"min_freq": 1}},
            "record": {"type": "tabular", "columns": ["age", "sex", "crp"], "categorical": ["sex"]},
        },
    }
    cfg = {
        "name": "notes",
        "seed": 0,
        "output_dir": str(out / "run"),
        "data": {"manifest": str(out / "manifest.csv"), "schema": schema},
        "model": {
            "encoders": {
                "note": {"name": "bigru", "hidden": 8, "embed_dim": 8},
                "record": {"name": "mlp", "hidden": [8]},
            }
        },
        "train": {"epochs": 2, "batch_size": 32, "threads": 1},
        "evaluate": {"bootstrap": 0, "report": False},
    }
    return api.fit(cfg, progress=False).checkpoint


def patient_bundle(note: str = "fever and cough a", crp: float = 55.0) -> dict[str, Any]:
    data = base64.b64encode(note.encode()).decode()
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": "2024-06-01T10:00:00Z",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                "resource": {
                    "resourceType": "Patient",
                    "gender": "female",
                    "birthDate": "1950-03-20",
                },
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "1988-5"}]},
                    "valueQuantity": {"value": crp, "unit": "mg/L"},
                },
            },
            {
                "fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333",
                "resource": {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "content": [{"attachment": {"contentType": "text/plain", "data": data}}],
                },
            },
        ],
    }


def test_bundle_maps_onto_the_inputs_like_an_upload(note_ckpt: Path) -> None:
    entry = ModelEntry("notes", note_ckpt)
    parts = bundle_parts(patient_bundle(), read_mapping(MAPPING, entry.predictor))
    assert parts["note"].data == b"fever and cough a"
    assert json.loads(parts["record"].data) == {"age": 74, "sex": "F", "crp": 55.0}
    from medmodal.serve.limits import Part

    upload = {
        "note": Part(b"fever and cough a", None),
        "record": Part(b'{"age": 74, "sex": "F", "crp": 55.0}', None),
    }
    a = entry.run_batch([entry.prepare(parts).sample])[0]
    b = entry.run_batch([entry.prepare(upload).sample])[0]
    assert a == b
    partial = patient_bundle()
    partial["entry"] = partial["entry"][:1]  # no note, no CRP: absent, as in an upload
    assert set(bundle_parts(partial, read_mapping(MAPPING, entry.predictor))) == {"record"}


def test_mapping_typos_and_bad_bundles_name_the_problem(note_ckpt: Path) -> None:
    entry = ModelEntry("notes", note_ckpt)
    with pytest.raises(ConfigError, match="'image' is not an input"):
        read_mapping({"image": {"resource": "Media"}}, entry.predictor)
    with pytest.raises(ConfigError, match="record.crpp is not a column"):
        read_mapping(
            {"record": {"crpp": {"resource": "Observation", "code": "1"}}}, entry.predictor
        )
    with pytest.raises(ConfigError, match="resourse"):
        read_mapping({"note": {"resourse": "DocumentReference"}}, entry.predictor)
    with pytest.raises(ConfigError, match="needs its code"):
        read_mapping({"record": {"crp": {"resource": "Observation"}}}, entry.predictor)
    bad = patient_bundle()
    bad["entry"][1]["resource"]["valueQuantity"]["value"] = "high"
    from medmodal.errors import DataError

    with pytest.raises(DataError, match="invalid FHIR Bundle"):
        bundle_parts(bad, read_mapping(MAPPING, entry.predictor))
    with pytest.raises(FhirError, match="DiagnosticReport"):
        validate({"resourceType": "DiagnosticReport", "status": "final"})


def test_cli_bundle_in_validated_report_out(note_ckpt: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medmodal.cli import app

    (tmp_path / "bundle.json").write_text(json.dumps(patient_bundle()))
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(MAPPING))
    args = ["predict", str(note_ckpt), str(tmp_path / "bundle.json"), "--fhir-mapping"]
    args += [str(tmp_path / "map.yaml"), "--fhir", str(tmp_path / "report.json")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "inputs used: note, record" in " ".join(res.output.split())
    report = json.loads((tmp_path / "report.json").read_text())
    validate(report)
    resources = {e["resource"]["resourceType"]: e["resource"] for e in report["entry"]}
    assert set(resources) == {"DiagnosticReport", "Device", "RiskAssessment", "Observation"}
    dr = resources["DiagnosticReport"]
    assert dr["status"] == "preliminary" and dr["subject"]["reference"].startswith("urn:uuid:1111")
    assert "not verified by a clinician" in dr["conclusion"]
    assert len(dr["result"]) == 3  # P(neg), P(pos), the predicted class
    probs = [p["probabilityDecimal"] for p in resources["RiskAssessment"]["prediction"]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_service_answers_fhir_when_asked(note_ckpt: Path, tmp_path: Path) -> None:
    from medmodal.serve.app import create_app
    from medmodal.serve.hospital import configure_hospital

    token = create_token(tmp_path / "tokens.json", "ehr")
    models = {"notes": ModelEntry("notes", note_ckpt)}
    from medmodal.serve.audit_log import AuditLog

    audit = AuditLog(tmp_path / "audit.jsonl")
    app = create_app(models, TokenStore.load(tmp_path / "tokens.json"), audit)
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(MAPPING))
    configure_hospital(app, models, None, [f"notes={tmp_path / 'map.yaml'}"])
    files = {
        "note": (None, "fever and cough b"),
        "record": (None, '{"age": 60, "sex": "M", "crp": 50}'),
    }
    h = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as c:
        plain = c.post("/v1/models/notes/predict", files=files, headers=h)
        assert plain.headers["content-type"].startswith("application/json")
        fhir = c.post(
            "/v1/models/notes/predict",
            files=files,
            headers={**h, "Accept": "application/fhir+json"},
        )
        assert fhir.status_code == 200 and fhir.headers["content-type"] == "application/fhir+json"
        bundle = fhir.json()
        validate(bundle)
        risk = next(
            e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "RiskAssessment"
        )
        p_pos = next(
            p["probabilityDecimal"]
            for p in risk["prediction"]
            if p["outcome"]["coding"][0]["code"] == "pos"
        )
        assert p_pos == pytest.approx(plain.json()["probabilities"]["pos"])
        denied = c.post(
            "/v1/models/notes/predict", files=files, headers={"Accept": "application/fhir+json"}
        )
        assert denied.status_code == 401 and denied.json()["resourceType"] == "OperationOutcome"
        bad = c.post(
            "/v1/models/notes/predict",
            files={"record": (None, "{oops")},
            headers={**h, "Accept": "application/fhir+json"},
        )
        assert bad.status_code == 422 and "record" in bad.json()["issue"][0]["diagnostics"]
        r = c.post(
            "/v1/models/notes/fhir",
            content=json.dumps(patient_bundle()),
            headers={**h, "Content-Type": "application/fhir+json"},
        )
        assert r.status_code == 200, r.text
        validate(r.json())
        assert c.post("/v1/models/notes/fhir", content=b"[]", headers=h).status_code == 422
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["token"] for e in lines] == ["ehr", "ehr", "ehr"]  # 2 predicts + 1 bundle
    assert set(lines[-1]["inputs"]) == {"note", "record"}
