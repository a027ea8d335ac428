"""The web page in real Chromium (Playwright): BreastMNIST image, covid_cxr X-ray + note, bad token."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api")

from medmodal import api  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def checkpoints(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("page")
    breast = {
        "name": "breast",
        "output_dir": str(out / "breast"),
        "data": {"dataset": "breastmnist", "data_dir": str(data_dir)},
        "model": {"encoders": {"image": {"name": "baseline_cnn", "filters": 8, "hidden": 16}}},
        "train": {"epochs": 2, "batch_size": 64, "threads": 1},
        "evaluate": {"bootstrap": 50, "report": False},
    }
    covid = {
        "name": "covid",
        "output_dir": str(out / "covid"),
        "data": {
            "dataset": "covid_cxr",
            "data_dir": str(data_dir),
            "dataset_options": {"target": "finding", "image_size": 32},
        },
        "model": {
            "encoders": {
                "image": {"name": "baseline_cnn", "filters": 8, "hidden": 16},
                "note": {"name": "embedding_mlp"},
                "record": {"name": "mlp"},
            },
            "fusion": {"name": "attention"},
        },
        "train": {"epochs": 2, "batch_size": 32, "threads": 1},
        "evaluate": {
            "bootstrap": 50,
            "report": False,
            "ablation": False,
            "calibrate": {"method": "temperature"},
        },
    }
    return {
        "breast": api.fit(breast, progress=False).checkpoint,
        "covid": api.fit(covid, progress=False).checkpoint,
    }


@pytest.fixture(scope="module")
def server(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    import uvicorn

    from medmodal.serve.auth import create_token
    from medmodal.serve.server import build_app

    d = tmp_path_factory.mktemp("page_server")
    token = create_token(d / "tokens.json", "page-test")
    app = build_app(
        [f"{k}={v}" for k, v in checkpoints.items()], d / "tokens.json", audit_log=d / "audit.jsonl"
    )
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "token": token, "dir": d}
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server: dict[str, Any]) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page()
        yield pg
        browser.close()


def _connect(page: Any, server: dict[str, Any], token: str) -> None:
    page.goto(server["url"] + "/")
    page.fill("#token", token)
    page.click("#connect")


def test_wrong_token_shows_a_clear_message(page: Any, server: dict[str, Any]) -> None:
    _connect(page, server, "mm_not-a-token")
    page.wait_for_selector("#status.error")
    assert "token was refused (401" in page.inner_text("#status")
    assert page.is_hidden("#inputs")


def test_breastmnist_image_gives_a_result(
    page: Any, server: dict[str, Any], data_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    img = np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][3]
    Image.fromarray(img).save(tmp_path / "breast.png")
    _connect(page, server, server["token"])
    page.wait_for_selector("#model option[value=breast]", state="attached")
    page.select_option("#model", "breast")
    page.set_input_files("#part-image", str(tmp_path / "breast.png"))
    page.check("#explain")
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    text = page.inner_text("#result")
    assert "Prediction:" in text and "malignant" in text and "%" in text
    assert "Modalities used: image" in text
    card = page.inner_text("#card")
    assert "Intended use" in card and "auroc" in card
    assert "recall (class malignant)" in card  # a per-class figure names its class
    assert page.locator("#versions td", has_text="served_by_medmodal").count() == 1
    # the heat map lies over the image (same box), its opacity follows the slider
    base = page.locator(".overlay img").first.bounding_box()
    heat = page.locator("#heat").bounding_box()
    assert (
        base and heat and abs(base["x"] - heat["x"]) < 1 and abs(base["width"] - heat["width"]) < 1
    )
    page.fill("#opacity", "20")
    page.dispatch_event("#opacity", "input")
    assert page.eval_on_selector("#heat", "e => e.style.opacity") == "0.2"
    page.screenshot(path=str(server["dir"] / "breast.png"), full_page=True)


def test_an_error_shows_next_to_the_predict_button(page: Any, server: dict[str, Any]) -> None:
    _connect(page, server, server["token"])
    page.wait_for_selector("#model option[value=covid]", state="attached")
    page.select_option("#model", "covid")
    page.fill("#part-note", "   ")  # nothing usable: the page sends no part -> 422 from the API
    page.fill("#field-record-age", "x" * 2000)
    page.click("#predict")
    page.wait_for_selector("#predict-status.error")
    assert "Error 422" in page.inner_text("#predict-status")
    assert page.inner_text("#status").startswith("Connected")


def test_covid_xray_with_its_note_gives_a_result(
    page: Any, server: dict[str, Any], checkpoints: dict[str, Path]
) -> None:
    run = checkpoints["covid"].parent
    frame = pd.read_csv(run / "data" / "manifest.csv")
    test_ids = set(pd.read_csv(run / "predictions_test.csv")["sample_id"].astype(str))
    row = frame[frame["sample_id"].astype(str).isin(test_ids) & frame["note"].notna()].iloc[0]
    _connect(page, server, server["token"])
    page.wait_for_selector("#model option[value=covid]", state="attached")
    page.select_option("#model", "covid")
    page.set_input_files("#part-image", str(row["image"]))
    page.fill("#part-note", str(row["note"]))
    if pd.notna(row.get("age")):
        page.fill("#field-record-age", str(row["age"]))
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    text = page.inner_text("#result")
    assert "COVID-19" in text and "Prediction:" in text
    assert "Modalities used: image, note" in text
    # the calibrated probability is the primary figure, the raw one beside it
    assert page.inner_text("#probs-primary") == "calibrated probability"
    assert "raw" in page.inner_text("#probs-secondary")
    page.screenshot(path=str(server["dir"] / "covid.png"), full_page=True)
    print(server["dir"])
