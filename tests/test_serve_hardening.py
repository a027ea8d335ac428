"""The service against a hostile client: bombs, crafted JSON, empty inputs, every subset explained,
.npy / WFDB uploads, busy and stalled requests, audit-log damage, de-identification of the meta.

The model has four modalities (image, note, record, ECG beat) with random weights over processors
fitted on a few real inputs: nothing here needs training.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_models import four_modality_checkpoint, four_modality_inputs, png  # noqa: E402

from medmodal.data.readers import Blob  # noqa: E402
from medmodal.errors import ConfigError  # noqa: E402
from medmodal.serve.audit_log import AuditLog, head_path, verify  # noqa: E402
from medmodal.serve.auth import TokenStore, create_token  # noqa: E402
from medmodal.serve.inference import ModelEntry  # noqa: E402
from medmodal.serve.limits import Limits  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
URL = "/v1/models/m/predict"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` grey pixels (a bomb's header; the
    service must refuse it from the header, so the pixel data need not be there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


@pytest.fixture(scope="module")
def inputs(data_dir: Path) -> dict[str, Any]:
    return four_modality_inputs(data_dir)


@pytest.fixture(scope="module")
def ckpt(inputs: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return four_modality_checkpoint(inputs, tmp_path_factory.mktemp("hardening"))


def make_client(ckpt: Path, tmp: Path, limits: Limits | None = None, **kw: Any) -> Any:
    from medmodal.serve.app import create_app

    token = create_token(tmp / "tokens.json", "t") if not (tmp / "tokens.json").exists() else None
    entry = ModelEntry("m", ckpt, **kw)
    app = create_app({"m": entry}, TokenStore.load(tmp / "tokens.json"), AuditLog(tmp / "a.jsonl"),
                     limits or Limits())  # fmt: skip
    return app, token


@pytest.fixture(scope="module")
def service(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("svc")
    app, token = make_client(ckpt, d, Limits(max_pixels=4_000_000, request_mb=200))
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        c.dir = d  # type: ignore[attr-defined]
        yield c


def parts_of(inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": ("x.png", png(inputs["images"][0])),
        "note": (None, inputs["notes"][0]),
        "record": (None, json.dumps({"age": 65, "sex": "M"})),
        "ecg": ("beat.npy", npy(np.sin(np.arange(252) / 9).astype(np.float32))),
    }


def assert_part_error(r: Any, status: int, part: str, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["part"] == part, body
    assert " at 0x" not in body["detail"], body  # no memory addresses in messages
    for w in words:
        assert w in body["detail"], body


def test_decompression_bombs_are_413_from_their_header(service: Any) -> None:
    for w, h, words in ((30000, 30000, "decompression bomb"), (12000, 12000, "12000 x 12000")):
        for q in ("", "?explain=true"):
            r = service.post(URL + q, files={"image": ("b.png", png_header_only(w, h))})
            assert_part_error(r, 413, "image", words, "limit")
    vol = np.zeros((2, 2, 2), np.float32)  # a NIfTI header declaring 4000^3 voxels
    import nibabel as nib

    raw = bytearray(nib.Nifti1Image(vol, np.eye(4)).to_bytes())
    raw[42:48] = struct.pack("<hhh", 4000, 4000, 4000)
    r = service.post(URL, files={"image": ("v.nii", bytes(raw))})
    assert_part_error(r, 413, "image", "NIfTI", "limit")
    big = npy(np.zeros((1, 10), np.float32)).replace(b"(1, 10)", b"(1, 99999999999)")
    r = service.post(URL, files={"ecg": ("e.npy", big)})
    assert_part_error(r, 413, "ecg", "samples")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{"age": 1' + "0" * 400 + "}", ("number of 401 characters",)),
        ('{"age": ' + "9" * 310 + "}", ("number of 310",)),
        ("[" * 100_000, ("flat JSON object",)),
        ('{"a":' * 50_000, ("flat JSON object",)),
        ('{"age": NaN}', ("NaN",)),
        ('{"age": true}', ("true/false",)),
        ('{"age": {"x": 1}}', ("dict",)),
        ('{"age": 1e400}', ("not finite",)),
        ('{"age": "x", "nope": 1}', ("unknown field 'nope'",)),
        ("[1, 2]", ("JSON object",)),
        ("\xff\xfe", ("UTF-8",)),
    ],
)
def test_crafted_record_json_is_422_naming_the_part(
    service: Any, body: str, words: tuple[str, ...]
) -> None:
    data = body.encode("latin-1") if body.startswith("\xff") else body.encode()
    r = service.post(URL, files={"record": (None, data)})
    assert_part_error(r, 422, "record", *words)


@pytest.mark.parametrize(
    "parts",
    [
        {"note": (None, "")},
        {"note": (None, "   \n\t")},
        {"record": (None, "{}")},
        {"record": (None, '{"age": null, "temperature": null, "sex": null}')},
        {"record": (None, '{"sex": ""}')},
        {"note": (None, " "), "record": (None, "{}")},
    ],
)
def test_a_request_with_no_usable_input_is_422(service: Any, parts: dict[str, Any]) -> None:
    r = service.post(URL, files=parts)
    assert r.status_code == 422, r.text
    assert "no usable input" in r.json()["detail"]


@pytest.mark.slow
def test_every_subset_is_explained(service: Any, inputs: dict[str, Any]) -> None:
    """On this four-modality model 14 of 15 subsets failed to explain (KeyError / DataError)."""
    parts = parts_of(inputs)
    for k in range(1, 5):
        for subset in itertools.combinations(parts, k):
            r = service.post(URL + "?explain=true", files={m: parts[m] for m in subset})
            assert r.status_code == 200, (subset, r.text)
            ex = r.json()["explanation"]
            assert ex["available"], (subset, ex)
            assert {e["modality"] for e in ex["modalities"]} == set(subset)
            assert all(e["available"] for e in ex["modalities"]), (subset, ex["modalities"])
            if "image" in subset:
                assert ex["modality"] == "image" and set(ex["overlay"]) >= {
                    "image_png",
                    "heatmap_png",
                }


def test_npy_image_and_ecg_parts(service: Any, inputs: dict[str, Any]) -> None:
    img = service.post(URL, files={"image": ("x.npy", npy(inputs["images"][1]))})
    assert img.status_code == 200, img.text
    two = npy(np.random.default_rng(0).normal(size=(2, 252)).astype(np.float32))
    r = service.post(URL, files={"ecg": ("e.npy", two)})  # two unnamed leads: which is MLII?
    assert_part_error(r, 422, "ecg", "2 lead(s)", "MLII", "'ecg.leads'")
    for leads in ("V5,MLII", '["V5", "MLII"]'):
        r = service.post(URL, files={"ecg": ("e.npy", two), "ecg.leads": (None, leads)})
        assert r.status_code == 200, r.text
    named = service.post(
        URL, files={"ecg": ("e.npy", two), "ecg.leads": (None, "V1,V2"), "ecg.fs": (None, "360")}
    )
    assert_part_error(named, 422, "ecg", "lead MLII or V5 not in the record")


def test_wfdb_upload_is_read_in_memory_as_from_disk(service: Any, inputs: dict[str, Any]) -> None:
    from medmodal.data.readers.signal import load_record

    rec: Path = inputs["mitdb"]
    hea, dat = rec.with_suffix(".hea").read_bytes(), rec.with_suffix(".dat").read_bytes()
    got = load_record(Blob(hea, "ecg", files={"100.dat": dat}))
    want = load_record(rec, cache=False)
    assert got.names == want.names and got.fs == want.fs
    assert np.array_equal(got.signal, want.signal)
    files = [("ecg", ("100.hea", hea)), ("ecg", ("100.dat", dat))]
    assert service.post(URL, files=files).status_code == 200
    r = service.post(URL, files=[("ecg", ("100.hea", hea)), ("ecg", ("101.dat", dat))])
    assert_part_error(r, 422, "ecg", "'100.dat'", "uploaded: 101.dat")
    r = service.post(URL, files=[("ecg", ("100.hea", hea)), ("ecg", ("100.dat", dat[:1000]))])
    assert_part_error(r, 422, "ecg", "truncated")
    r = service.post(URL, files={"ecg": ("100.hea", hea)})
    assert_part_error(r, 422, "ecg", "without its signal files")


def test_minor_input_faults(service: Any) -> None:
    r = service.post(URL, files={"note": (None, b"caf\xe9 au lait")})
    assert_part_error(r, 422, "note", "not UTF-8")
    r = service.post(URL, files={"image": ("x.png", b"GIF89a not supported")})
    assert_part_error(r, 422, "image", "by its content")
    r = service.post(URL, files={"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)})
    assert_part_error(r, 422, "image")
    wide = (",".join(f"c{i}" for i in range(20000)) + "\n" + ",".join(["1"] * 20000)).encode()
    r = service.post(URL, files={"ecg": ("e.csv", wide)})
    assert_part_error(r, 422, "ecg", "at most 1024 columns")
    assert r.elapsed.total_seconds() < 2


def test_decoding_runs_off_the_event_loop_a_bounded_number_at_once(
    ckpt: Path, inputs: dict[str, Any], tmp_path: Path
) -> None:
    """One decode slot, a slow decode: the second request waits, then is a 503 + Retry-After;
    decoding happens in a worker thread, never on the event loop's."""
    import threading
    import time

    import httpx

    app, token = make_client(ckpt, tmp_path, Limits(max_decodes=1, queue_wait=0.2))
    entry = app.state.models["m"]
    threads = []
    prepare = entry.prepare

    def slow(parts: Any) -> Any:
        threads.append(threading.current_thread().name)
        time.sleep(0.6)
        return prepare(parts)

    entry.prepare = slow
    files = {"image": ("x.png", png(inputs["images"][2]))}

    async def both() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        h = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=h) as c:
            return await asyncio.gather(c.post(URL, files=files), c.post(URL, files=files))

    a, b = asyncio.run(both())
    assert sorted([a.status_code, b.status_code]) == [200, 503]
    busy = a if a.status_code == 503 else b
    assert busy.headers["retry-after"].isdigit() and "decoding" in busy.json()["detail"]
    assert threads and all(t.startswith("medmodal-decode") for t in threads)


def test_uploads_held_at_once_are_bounded(
    ckpt: Path, inputs: dict[str, Any], tmp_path: Path
) -> None:
    app, token = make_client(ckpt, tmp_path, Limits(bodies_mb=0.01))
    with TestClient(app) as c:
        r = c.post(URL, headers={"Authorization": f"Bearer {token}"},
                   files={"image": ("x.png", b"\0" * 20000)})  # fmt: skip
    assert r.status_code == 503 and r.headers["retry-after"].isdigit()


@pytest.mark.slow
def test_a_stalled_client_is_cut_off(ckpt: Path, tmp_path: Path) -> None:
    """A connection that sends nothing is closed after the header timeout; a body that stops
    arriving ends with a 408 within the request timeout."""
    import socket
    import threading
    import time

    import uvicorn

    from medmodal.serve.server import guarded_protocol

    app, token = make_client(ckpt, tmp_path, Limits(timeout=1.5, header_timeout=1.0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                            http=guarded_protocol(1.0))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        idle = socket.create_connection(("127.0.0.1", port))
        idle.settimeout(5)
        t0 = time.monotonic()
        assert idle.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 3
        slow = socket.create_connection(("127.0.0.1", port))
        slow.settimeout(6)
        head = (f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n")  # fmt: skip
        slow.sendall(head.encode() + b"--b\r\n")
        t0 = time.monotonic()
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - t0 < 4
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_audit_log_is_private_and_its_damage_is_named(tmp_path: Path) -> None:
    import os

    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.append(token="t", model="m", inputs={}, output={"p": i})
    log.close()
    assert path.stat().st_mode & 0o077 == 0 and head_path(path).stat().st_mode & 0o077 == 0
    lines = path.read_bytes().splitlines(keepends=True)
    for damaged, words in (
        (b"".join(lines) + b'{"seq": 4, "ti', "line 4: incomplete"),
        (b"".join(lines) + b"\n", "line 4: blank"),
        (b"".join(lines[:2]), "says line 3"),  # cut: the head file knows
    ):
        path.write_bytes(damaged)
        with pytest.raises(ConfigError, match=rf"audit log {path}: .*{words}"):
            AuditLog(path)
        assert not verify(path).ok
    path.write_bytes(b"".join(lines))
    AuditLog(path).append(token="t", model="m", inputs={}, output={})
    assert verify(path).ok and verify(path).lines == 4
    os.chmod(path, 0o644)
    AuditLog(path).close()
    assert path.stat().st_mode & 0o077 == 0


def test_metrics_show_the_audit_head(service: Any, inputs: dict[str, Any]) -> None:
    service.post(URL, files={"note": (None, inputs["notes"][1])})
    text = service.get("/metrics").text
    seq, head = head_path(service.dir / "a.jsonl").read_text().split()
    assert f'medmodal_audit_head{{value="{head}"}} 1' in text
    assert f"medmodal_audit_lines {seq}" in text


def _dicom_with_hidden_identity(burned_in: str | None = None) -> bytes:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.SourceApplicationEntityTitle = "MRN4711"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"MRN4712"
    ds.add_new(0x00100033, "LO", "ALTBIRTH-1961")
    ds.add_new(0x00100034, "LO", "ALTDEATH-2020")
    ds.add_new(0x00100035, "CS", "ALTCAL")
    issuer = Dataset()
    issuer.UniversalEntityID = "MRN4713-ISSUER"
    ds.add_new(0x00100024, "SQ", Sequence([issuer]))
    if burned_in:
        ds.BurnedInAnnotation = burned_in
    ds.preamble = b"MRN4714".ljust(128, b"\0")
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


def test_deidentification_covers_the_file_meta_and_refuses_burned_in_text(
    service: Any, ckpt: Path, tmp_path: Path
) -> None:
    from medmodal.serve.deid import deidentify_bytes

    out = deidentify_bytes(_dicom_with_hidden_identity(), "image")
    for secret in (
        b"MRN4711",
        b"MRN4712",
        b"MRN4713",
        b"MRN4714",
        b"ALTBIRTH",
        b"ALTDEATH",
        b"ALTCAL",
    ):
        assert secret not in out, secret
    r = service.post(URL, files={"image": ("ct.dcm", _dicom_with_hidden_identity("YES"))})
    assert_part_error(r, 422, "image", "BurnedInAnnotation", "--allow-burned-in")
    assert (
        service.post(
            URL, files={"image": ("ct.dcm", _dicom_with_hidden_identity("NO"))}
        ).status_code
        == 200
    )
    app, token = make_client(ckpt, tmp_path, allow_burned_in=True)
    with TestClient(app) as c:
        r = c.post(URL, headers={"Authorization": f"Bearer {token}"},
                   files={"image": ("ct.dcm", _dicom_with_hidden_identity("YES"))})  # fmt: skip
    assert r.status_code == 200, r.text
