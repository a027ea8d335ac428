# ruff: noqa: F811  (fixtures imported from hospital_fixtures are parameters here)
"""PACS round trips through a real Orthanc: DICOMweb pull and push (QIDO / WADO / STOW-RS) with
the DICOM SR read back item by item, DIMSE routing to the listener, the CLI, the service routes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hospital_fixtures import breast_ckpt, breast_images, cxr_arrays, orthanc  # noqa: F401
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")

from medmodal.hospital.convert import StudyFields, images_to_study  # noqa: E402
from medmodal.hospital.dicomweb import Pacs, PacsError  # noqa: E402
from medmodal.hospital.pipeline import run_dicomweb_study  # noqa: E402
from medmodal.hospital.sr import ModelIdentity, read_sr, validate_sr  # noqa: E402
from medmodal.hospital.study import part10_bytes  # noqa: E402
from medmodal.serve.audit_log import AuditLog, verify  # noqa: E402
from medmodal.serve.inference import ModelEntry  # noqa: E402
from medmodal.serve.limits import Part  # noqa: E402

# slow tier: starts a real Orthanc process and trains a model (about 20 s together)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def entry(breast_ckpt: Path) -> ModelEntry:  # noqa: F811
    return ModelEntry("breast", breast_ckpt)


@pytest.fixture(scope="module")
def breast_study(orthanc: Any, breast_images: np.ndarray) -> list[pydicom.Dataset]:  # noqa: F811
    """Three real BreastMNIST test images as a JPEG-LS lossless study, stored by STOW-RS."""
    fields = StudyFields(patient_name="Doe^Jane", patient_id="PAT-77", accession="ACC-BREAST")
    study = images_to_study(list(breast_images), fields, transfer_syntax=JPEGLSLossless)
    Pacs(orthanc.dicomweb).store(study)
    return study


def _sr_of(pacs: Pacs, study_uid: str) -> list[pydicom.Dataset]:
    return [d for d in pacs.fetch_study(study_uid) if d.Modality == "SR"]


def _upload_output(entry: ModelEntry, ds: pydicom.Dataset) -> dict[str, Any]:
    """What the service answers for the same instance uploaded as a file."""
    prepared = entry.prepare({"image": Part(part10_bytes(ds), "x.dcm")})
    return entry.run_batch([prepared.sample])[0]


def test_search_finds_the_study_by_accession_and_date(orthanc: Any, breast_study: list) -> None:  # noqa: F811
    pacs = Pacs(orthanc.dicomweb)
    found = pacs.search(accession="ACC-BREAST")
    assert [s["StudyInstanceUID"] for s in found] == [breast_study[0].StudyInstanceUID]
    assert found[0]["NumberOfStudyRelatedInstances"] == 3 and found[0]["ModalitiesInStudy"] == [
        "CR"
    ]
    assert "PatientName" not in found[0] and "Doe" not in json.dumps(found)
    assert pacs.search(date="20240101-20240102") and not pacs.search(date="19990101")
    with pytest.raises(PacsError, match="YYYYMMDD"):
        pacs.search(date="yesterday")


def test_dicomweb_pull_predict_push_sr_read_back_item_by_item(
    orthanc: Any,
    breast_study: list,
    entry: ModelEntry,
    tmp_path: Path,  # noqa: F811
) -> None:
    pacs = Pacs(orthanc.dicomweb)
    uid = breast_study[0].StudyInstanceUID
    fetched = pacs.fetch_study(uid)
    assert {d.file_meta.TransferSyntaxUID for d in fetched} == {JPEGLSLossless}  # as stored
    audit = AuditLog(tmp_path / "audit.jsonl")
    outcome = run_dicomweb_study(entry, pacs, uid, audit=audit, caller="tester")
    assert set(outcome.prediction.timings) == {"fetch", "deidentify", "predict", "sr", "store"}
    [sr] = _sr_of(pacs, uid)
    assert sr.SOPInstanceUID == outcome.sr.SOPInstanceUID
    assert sr.PatientID == "PAT-77" and sr.StudyInstanceUID == uid  # filed with its study
    report = read_sr(sr)
    sources = {d.SOPInstanceUID: d for d in breast_study}
    assert len(report["groups"]) == 3
    identity = ModelIdentity.of(entry.card)
    for group in report["groups"]:
        src = sources[group["source_sop_instance_uid"]]
        expected = _upload_output(entry, src)
        assert group["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        assert group["calibrated_probabilities"] == pytest.approx(
            expected["calibrated_probabilities"], abs=1e-6
        )
        assert group["prediction"] == [expected["prediction"]]
        assert group["prediction_set"] == expected["prediction_set"]
        alg = group["algorithm"]
        assert alg["name"] == "medmodal breast" and alg["version"]
        assert f"model card sha256 {identity.card_sha256}" in alg["parameters"]
        assert f"checkpoint sha256 {entry.card['checkpoint']['sha256']}" in alg["parameters"]
    verdict = validate_sr(sr)
    assert verdict["highdicom"] == "ok" and verdict["groups"] == 3
    if verdict["dciodvfy"] is not None:
        assert verdict["dciodvfy"] == [], verdict["dciodvfy"]
    audit.close()
    log = (tmp_path / "audit.jsonl").read_text()
    assert verify(tmp_path / "audit.jsonl").ok and len(log.splitlines()) == 3
    assert "Doe" not in log and "PAT-77" not in log and uid not in log
    digests = [json.loads(line)["inputs"]["image"] for line in log.splitlines()]
    assert digests == [r.digest for r in outcome.prediction.results]


def test_covid_xrays_and_pydicom_files_round_trip(
    orthanc: Any,
    entry: ModelEntry,
    covid_cxr: Path,  # noqa: F811
) -> None:
    """Real X-rays as JPEG 2000 lossless, and pydicom's own compressed files, through Orthanc."""
    pacs = Pacs(orthanc.dicomweb)
    xrays = images_to_study(
        cxr_arrays(covid_cxr), StudyFields(accession="ACC-CXR"), transfer_syntax=JPEG2000Lossless
    )
    pacs.store(xrays)
    studies = [xrays[0].StudyInstanceUID]
    for name in ("CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        pacs.store([ds])
        studies.append(ds.StudyInstanceUID)
    for uid in studies:
        outcome = run_dicomweb_study(entry, pacs, uid, explain=uid == studies[0])
        assert outcome.prediction.results and not outcome.prediction.skipped
        [sr] = _sr_of(pacs, uid)
        refs = {g["source_sop_instance_uid"] for g in read_sr(sr)["groups"]}
        assert refs == {str(r.source.SOPInstanceUID) for r in outcome.prediction.results}
        assert validate_sr(sr)["highdicom"] == "ok"
    heat = [d for d in pacs.fetch_study(studies[0]) if d.get("SeriesNumber") == 9902]
    assert len(heat) == 2 and heat[0].PatientID == xrays[0].PatientID  # one per X-ray, same study
    assert heat[0].pixel_array.ndim == 3 and heat[0].pixel_array.shape[-1] == 3
    assert "gradcam" in heat[0].SeriesDescription


def test_missing_study_and_unreachable_pacs_are_one_line_errors(
    orthanc: Any, entry: ModelEntry
) -> None:  # noqa: F811
    with pytest.raises(PacsError, match="not found|no instances"):
        run_dicomweb_study(entry, Pacs(orthanc.dicomweb), "1.2.3.4.5")
    with pytest.raises(PacsError, match="is not a DICOM UID"):
        Pacs(orthanc.dicomweb).fetch_study("1.2.x")
    from medmodal.hospital.orthanc import free_port

    with pytest.raises(PacsError, match="cannot connect"):
        Pacs(f"http://127.0.0.1:{free_port()}/dicom-web").search(accession="x")


def test_dimse_routing_to_the_listener_returns_the_sr(
    orthanc: Any,
    breast_images: np.ndarray,
    entry: ModelEntry,
    tmp_path: Path,  # noqa: F811
) -> None:
    from medmodal.hospital.listen import Destination, Listener
    from medmodal.hospital.orthanc import free_port

    study = images_to_study(list(breast_images[:2]), StudyFields(accession="ACC-DIMSE"))
    pacs = Pacs(orthanc.dicomweb)
    pacs.store(study)
    port = free_port()
    dest = Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port)
    audit = AuditLog(tmp_path / "audit.jsonl")
    listener = Listener({"breast": entry}, ["ORTHANC"], dest, quiet=0.5, audit=audit)
    listener.start("MEDMODAL", port)
    try:
        orthanc.add_modality("medmodal", "MEDMODAL", port)
        [found] = orthanc.rest("POST", "/tools/lookup", raw=study[0].StudyInstanceUID.encode())
        sent = orthanc.rest(
            "POST", "/modalities/medmodal/store", {"Resources": [found["ID"]], "Synchronous": True}
        )
        assert sent["InstancesCount"] == 2 and sent["FailedInstancesCount"] == 0
        deadline = time.monotonic() + 30
        while not listener.outcomes and not listener.errors and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not listener.errors, list(listener.errors)
        [sr] = _sr_of(pacs, study[0].StudyInstanceUID)
        assert len(read_sr(sr)["groups"]) == 2
        assert _refused_caller(port)  # an AE title not allow-listed cannot associate
    finally:
        listener.stop()
        audit.close()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["token"] == "dimse:ORTHANC"
    assert verify(tmp_path / "audit.jsonl").ok


def _refused_caller(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDMODAL")
    established = assoc.is_established
    if established:
        assoc.release()
    return not established and assoc.is_rejected


def test_cli_predict_dicomweb_writes_csv_and_fhir(
    orthanc: Any,
    breast_study: list,
    breast_ckpt: Path,
    tmp_path: Path,  # noqa: F811
) -> None:
    from typer.testing import CliRunner

    from medmodal.cli import app
    from medmodal.hospital.fhir import validate

    uid = breast_study[0].StudyInstanceUID
    args = ["predict", str(breast_ckpt), "--dicomweb", orthanc.dicomweb, "--study", uid]
    args += ["--out", str(tmp_path / "p.csv"), "--fhir", str(tmp_path / "r.json"), "--no-store-sr"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "3 image(s) predicted" in text and "not stored" in text
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith(
        'study_instance_uid,sop_instance_uid,"p_normal, benign"'
    )
    bundles = json.loads((tmp_path / "r.json").read_text())
    assert len(bundles) == 3
    for b in bundles:
        validate(b)
        kinds = [e["resource"]["resourceType"] for e in b["entry"]]
        assert kinds[:3] == ["DiagnosticReport", "Device", "RiskAssessment"]
    bad = CliRunner().invoke(
        app, ["predict", str(breast_ckpt), "--dicomweb", orthanc.dicomweb, "--study", "9.9.9"]
    )
    assert bad.exit_code == 2 and "not found" in " ".join(bad.output.split())


def test_service_searches_the_pacs_and_predicts_a_study(
    orthanc: Any,
    breast_study: list,
    entry: ModelEntry,
    tmp_path: Path,  # noqa: F811
) -> None:
    from fastapi.testclient import TestClient

    from medmodal.serve.app import create_app
    from medmodal.serve.auth import TokenStore, create_token

    token = create_token(tmp_path / "tokens.json", "dr-who")
    audit = AuditLog(tmp_path / "audit.jsonl")
    app = create_app({"breast": entry}, TokenStore.load(tmp_path / "tokens.json"), audit)
    h = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as c:
        assert c.get("/v1/pacs", headers=h).json()["configured"] is False
        assert c.get("/v1/pacs/studies?accession=x", headers=h).status_code == 404
        app.state.pacs = Pacs(orthanc.dicomweb)
        assert c.get("/v1/pacs/studies?accession=x").status_code == 401
        found = c.get("/v1/pacs/studies?accession=ACC-BREAST", headers=h).json()["studies"]
        uid = found[0]["StudyInstanceUID"]
        r = c.post(f"/v1/models/breast/pacs/{uid}?store_sr=false", headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["instances"]) == 3 and body["sr"]["stored"] is False
        assert c.post("/v1/models/breast/pacs/1.2.3.4", headers=h).status_code == 404
        bad = c.get("/v1/pacs/studies?date=bad", headers=h)
        assert bad.status_code == 502 and "YYYYMMDD" in bad.json()["detail"]
        js = c.get("/hospital/pacs.js")
        assert js.status_code == 200 and "pacsSearch" in js.text
    audit.close()
    assert json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])["token"] == "dr-who"
