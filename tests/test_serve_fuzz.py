"""Fuzzing the service (slow tier, about two minutes): schemathesis over every route (stateful, by
the schema's links, and each operation alone), Hypothesis on the record JSON parser, the multipart
parser and every reader (random bytes and mutated real files), an adversarial DICOM set. Only 2xx
and 4xx answers are allowed, readers raise only DataError, and the process stays within the
service's memory budget. Deeper campaigns: ``benchmarks/serve.py --arms probes``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from serve_models import four_modality_checkpoint, four_modality_inputs  # noqa: E402

from medmodal.data.readers import Blob, read_image  # noqa: E402
from medmodal.data.readers.audio import read_audio  # noqa: E402
from medmodal.data.readers.budget import DecodeLimits, decode_limits  # noqa: E402
from medmodal.data.readers.signal import load_record  # noqa: E402
from medmodal.data.readers.text import read_text  # noqa: E402
from medmodal.errors import DataError  # noqa: E402
from medmodal.serve.limits import BadRequest, read_parts  # noqa: E402
from medmodal.serve.records import parse_record  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
LIMITS = DecodeLimits(4_000_000, 16_000_000, 4_000_000, 256 << 20)  # what a fuzzed file may take
URL = "/v1/models/m/predict"


@pytest.fixture(scope="module")
def real_files(data_dir: Path) -> dict[str, list[bytes]]:
    """A few real files of every kind the service reads, to mutate."""
    from PIL import Image

    img = np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][0]
    out: dict[str, list[bytes]] = {"image": [], "signal": [], "audio": []}
    for fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        b = io.BytesIO()
        Image.fromarray(img).save(b, fmt)
        out["image"].append(b.getvalue())
    out["image"].append(_npy(img))
    out["image"] += [_dicom(), _nifti()]
    rec = data_dir / "mitdb" / "100"
    out["signal"] += [_npy(np.sin(np.arange(720) / 9).astype(np.float32)),
                      b"MLII,V5\n" + b"\n".join(b"%d,%d" % (i, -i) for i in range(200)),
                      rec.with_suffix(".hea").read_bytes()]  # fmt: skip
    wav = sorted((data_dir / "heart_sounds" / "N").glob("*.wav"))[0].read_bytes()
    out["audio"].append(wav[:60_000])
    return out


def _npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def _dicom() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def _nifti() -> bytes:
    import nibabel as nib

    return nib.Nifti1Image(np.random.rand(6, 7, 8).astype(np.float32), np.eye(4)).to_bytes()


@st.composite
def mutated(draw: Any, files: list[bytes]) -> bytes:
    """A real file with a few bytes flipped, inserted or deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(files)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "big"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "cut":
            del data[at:]
        else:  # a header field grown to a huge value
            data[at : at + 4] = b"\xff\xff\xff\x7f"
    return bytes(data)


def _only_data_errors(read: Any, data: bytes) -> None:
    with decode_limits(LIMITS):
        try:
            read(Blob(data, "fuzz"))
        except DataError:
            pass


READERS = {
    "image": read_image,
    "signal": lambda b: load_record(b, fs=100.0),
    "audio": read_audio,
    "text": lambda b: read_text(b, None),
}


@pytest.mark.parametrize("kind", ["image", "signal", "audio", "text"])
def test_readers_raise_only_data_errors(kind: str, real_files: dict[str, list[bytes]]) -> None:
    read = READERS[kind]
    files = real_files.get(kind) or [b"a clinical note\n"]
    tried: list[int] = []

    @FUZZ
    @given(data=st.binary(max_size=2048) | mutated(files))
    def run(data: bytes) -> None:
        tried.append(len(data))
        _only_data_errors(read, data)  # anything but a DataError (or a clean read) fails here

    run()
    assert len(tried) > 1, f"{kind}: the fuzzer ran {len(tried)} example(s)"


@FUZZ
@given(
    text=st.text(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
        ),
        max_leaves=20,
    ).map(json.dumps)
)
def test_record_parser_answers_a_dict_or_a_bad_request(text: str) -> None:
    try:
        out = parse_record("record", text.encode("utf-8", "surrogatepass"), ["age", "sex", ""])
    except BadRequest as exc:
        assert exc.part == "record" and exc.status == 422
        return
    assert isinstance(out, dict) and set(out) <= {"age", "sex", ""}


@FUZZ
@given(
    body=st.binary(max_size=1024)
    | st.lists(
        st.tuples(st.text(max_size=10), st.none() | st.text(max_size=10), st.binary(max_size=64)),
        max_size=5,
    ).map(lambda parts: _multipart(parts))
)
def test_multipart_parser_answers_parts_or_a_bad_request(body: bytes) -> None:
    try:
        parts = read_parts("multipart/form-data; boundary=XyZ", body, 8)
    except BadRequest as exc:
        assert exc.status in (400, 422)
        return
    assert all(isinstance(p.data, bytes) for p in parts.values())


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, fname, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{fname}"' if fname is not None else "")
        out += b"--XyZ\r\nContent-Disposition: " + disp.encode("utf-8", "replace") + b"\r\n\r\n"
        out += data + b"\r\n"
    return out + b"--XyZ--\r\n"


# -- the service ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fastapi.testclient import TestClient

    from medmodal.serve.app import create_app
    from medmodal.serve.audit_log import AuditLog
    from medmodal.serve.auth import TokenStore, create_token
    from medmodal.serve.inference import ModelEntry
    from medmodal.serve.limits import Limits

    d = tmp_path_factory.mktemp("fuzz_service")
    ckpt = four_modality_checkpoint(four_modality_inputs(data_dir), d)
    token = create_token(d / "tokens.json", "fuzz")
    limits = Limits(max_pixels=4_000_000, request_mb=256, max_decodes=2)
    app = create_app({"m": ModelEntry("m", ckpt)}, TokenStore.load(d / "tokens.json"),
                     AuditLog(d / "audit.jsonl"), limits)  # fmt: skip
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        yield {"client": c, "app": app, "token": token, "limits": limits}


def test_schemathesis_stateful_and_every_operation(client: dict[str, Any]) -> None:
    import schemathesis

    auth = {"Authorization": f"Bearer {client['token']}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", client["app"], headers=auth)
    statuses: list[int] = []

    def no_server_error(case: Any) -> None:
        r = case.call(headers=auth)
        statuses.append(r.status_code)
        assert r.status_code < 500, (case.method, case.path, r.status_code, r.text[:300])

    for result in schema.get_all_operations():
        strategy = result.ok().as_strategy()
        settings(FUZZ, max_examples=40)(given(case=strategy)(no_server_error))()
    machine = schema.as_state_machine()

    class NoServerError(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": auth}

        def validate_response(self, response: Any, case: Any, *args: Any, **kw: Any) -> None:
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

    NoServerError.run(settings=settings(FUZZ, max_examples=25, stateful_step_count=4))
    assert len(statuses) > 100 and all(s < 500 for s in statuses)
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)


def test_mutated_uploads_are_answered_2xx_or_4xx_within_the_memory_budget(
    client: dict[str, Any], real_files: dict[str, list[bytes]]
) -> None:
    import psutil

    c, limits = client["client"], client["limits"]
    rss0 = psutil.Process().memory_info().rss
    statuses: list[int] = []
    part_of = {"image": ("image", "x.bin"), "signal": ("ecg", "x.bin"), "audio": ("image", "x")}

    @settings(FUZZ, max_examples=60)
    @given(kind=st.sampled_from(sorted(part_of)), data=st.data())
    def run(kind: str, data: Any) -> None:
        body = data.draw(mutated(real_files[kind]))
        part, fname = part_of[kind]
        r = c.post(
            URL + ("?explain=true" if len(body) % 5 == 0 else ""), files={part: (fname, body)}
        )
        statuses.append(r.status_code)
        assert r.status_code < 500 and r.status_code in (200, 413, 422), r.text[:300]

    run()
    grown = (psutil.Process().memory_info().rss - rss0) / (1 << 20)
    assert grown < limits.memory_budget_mb, grown
    assert 200 in statuses and 422 in statuses


def adversarial_dicoms() -> dict[str, bytes]:
    """Crafted DICOM files: lies in the pixel module, deep nesting, hidden identity, damage."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def base() -> Any:
        return dcmread(get_testdata_file("CT_small.dcm"))

    def save(ds: Any) -> bytes:
        b = io.BytesIO()
        ds.save_as(b, enforce_file_format=True)
        return b.getvalue()

    out: dict[str, bytes] = {}
    for name, edit in {
        "rows_huge": lambda d: setattr(d, "Rows", 65535),
        "frames_huge": lambda d: setattr(d, "NumberOfFrames", "999999"),
        "frames_text": lambda d: d.__setitem__(0x00280008, DataElement(0x00280008, "LO", "many")),
        "bits_wrong": lambda d: setattr(d, "BitsAllocated", 32),
        "samples_3": lambda d: setattr(d, "SamplesPerPixel", 3),
        "no_pixels": lambda d: delattr(d, "PixelData"),
        "photometric_odd": lambda d: setattr(d, "PhotometricInterpretation", "HSV"),
        "burned_in": lambda d: setattr(d, "BurnedInAnnotation", "YES"),
        "private_mrn": lambda d: d.add_new(0x00291010, "LO", "MRN-PRIVATE"),
        "alt_calendar": lambda d: d.add_new(0x00100033, "LO", "MRN-ALT"),
    }.items():
        ds = base()
        edit(ds)
        out[name] = save(ds)
    deep = base()
    item = Dataset()
    item.PatientName = "Deep^Secret"
    for _ in range(60):  # sequences nested 60 deep, identity at the bottom
        outer = Dataset()
        outer.ReferencedStudySequence = Sequence([item])
        item = outer
    deep.ContentSequence = Sequence([item])
    out["nested_60"] = save(deep)
    meta = base()
    meta.file_meta.SourceApplicationEntityTitle = "MRN-META"
    out["meta_mrn"] = save(meta)
    raw = out["meta_mrn"]
    out["truncated"] = raw[: len(raw) // 2]
    out["header_only"] = raw[:400]
    out["garbage_after_dicm"] = b"\0" * 128 + b"DICM" + bytes(range(256)) * 4
    return out


def test_an_adversarial_dicom_set(client: dict[str, Any]) -> None:
    from pydicom import dcmread

    from medmodal.serve.deid import action_of, deidentify_bytes

    c = client["client"]
    for name, data in adversarial_dicoms().items():
        r = c.post(URL, files={"image": (f"{name}.dcm", data)})
        assert r.status_code in (200, 413, 422), (name, r.status_code, r.text[:300])
        if r.status_code != 200:
            assert r.json()["part"] == "image", (name, r.json())
            continue
        out = deidentify_bytes(data, "image", allow_burned_in=False)
        assert b"MRN" not in out and b"Secret" not in out, name
        ds = dcmread(io.BytesIO(out))
        for elem in ds.iterall():
            assert not elem.tag.is_private and action_of(int(elem.tag)) != "X", (name, elem)
    burned = c.post(URL, files={"image": ("b.dcm", adversarial_dicoms()["burned_in"])})
    assert burned.status_code == 422 and "BurnedInAnnotation" in burned.json()["detail"]
