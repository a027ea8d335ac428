# ruff: noqa: F811  (fixtures imported from hospital_fixtures are parameters here)
"""Processes: `medmodal listen` as a command receiving a study routed by Orthanc (C-STORE) and
sending the SR back; the page in Chromium picking a study from the PACS (QIDO) and predicting it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hospital_fixtures import breast_ckpt, breast_images, orthanc  # noqa: F401

pytest.importorskip("pynetdicom")
playwright = pytest.importorskip("playwright.sync_api")

from medmodal.hospital.convert import StudyFields, images_to_study  # noqa: E402
from medmodal.hospital.dicomweb import Pacs  # noqa: E402
from medmodal.hospital.orthanc import free_port  # noqa: E402
from medmodal.hospital.sr import read_sr  # noqa: E402
from medmodal.serve.audit_log import verify  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SRC = Path(__file__).resolve().parents[1] / "src"


def _wait_sr(pacs: Pacs, study_uid: str, timeout: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        srs = [d for d in pacs.fetch_study(study_uid) if d.Modality == "SR"]
        if srs:
            return srs
        time.sleep(0.3)
    return []


def test_listen_command_gets_a_routed_study_and_returns_the_sr(
    orthanc: Any, breast_ckpt: Path, breast_images: np.ndarray, tmp_path: Path
) -> None:
    study = images_to_study(list(breast_images), StudyFields(accession="ACC-LISTEN"))
    pacs = Pacs(orthanc.dicomweb)
    pacs.store(study)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "medmodal.cli",
        "listen",
        f"breast={breast_ckpt}",
        "--port",
        str(port),
    ]
    cmd += ["--allow", "ORTHANC", "--destination", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]
    cmd += ["--quiet", "1", "--audit-log", str(tmp_path / "audit.jsonl")]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "medmodal listen: MEDMODAL" in line, line
        orthanc.add_modality("medmodal", "MEDMODAL", port)
        [found] = orthanc.rest("POST", "/tools/lookup", raw=study[0].StudyInstanceUID.encode())
        orthanc.rest(
            "POST", "/modalities/medmodal/store", {"Resources": [found["ID"]], "Synchronous": True}
        )
        srs = _wait_sr(pacs, study[0].StudyInstanceUID)
        assert len(srs) == 1 and len(read_sr(srs[0])["groups"]) == 3
        time.sleep(1.0)  # the command reports each study on its next tick (0.5 s)
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "SR " in rest and "stopped" in rest
    assert verify(tmp_path / "audit.jsonl").ok
    entries = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(entries) == 3 and {e["token"] for e in entries} == {"dimse:ORTHANC"}


@pytest.fixture(scope="module")
def pacs_server(orthanc: Any, breast_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import uvicorn

    from medmodal.serve.auth import create_token
    from medmodal.serve.server import build_app

    d = tmp_path_factory.mktemp("pacs_page")
    token = create_token(d / "tokens.json", "radiologist")
    app = build_app(
        [f"breast={breast_ckpt}"],
        d / "tokens.json",
        audit_log=d / "audit.jsonl",
        dicomweb=orthanc.dicomweb,
    )
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "token": token, "dir": d}
    srv.should_exit = True
    thread.join(timeout=10)


def test_page_picks_a_study_from_the_pacs(
    orthanc: Any, pacs_server: dict[str, Any], breast_images: np.ndarray
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    study = images_to_study(
        list(breast_images[:2]), StudyFields(accession="ACC-PAGE", study_date="20240315")
    )
    pacs = Pacs(orthanc.dicomweb)
    pacs.store(study)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(pacs_server["url"] + "/")
        page.fill("#token", pacs_server["token"])
        page.click("#connect")
        page.wait_for_selector("#pacs:not([hidden])")
        page.fill("#pacs-accession", "ACC-PAGE")
        page.click("#pacs-search")
        page.wait_for_selector("#pacs-studies:not([hidden]) .pacs-predict")
        assert "20240315" in page.inner_text("#pacs-studies")
        page.click(".pacs-predict")
        page.wait_for_selector("#result:not([hidden])")
        text = page.inner_text("#result")
        assert "Prediction:" in text and "%" in text and "Modalities used: image" in text
        summary = page.inner_text("#pacs-summary")
        assert "2 image(s) predicted" in summary and "stored in the PACS as DICOM SR" in summary
        page.screenshot(path=str(pacs_server["dir"] / "pacs.png"), full_page=True)
        browser.close()
    assert len(_wait_sr(pacs, study[0].StudyInstanceUID, timeout=5)) == 1
