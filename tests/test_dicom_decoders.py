"""DICOM as hospitals send it: every compressed transfer syntax decodes with the installed
plugins (pylibjpeg + libjpeg / openjpeg / rle, pyjpegls), files without a preamble are read with a
warning, and what cannot be decoded names its transfer syntax (and the package that would)."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder, pixel_array

from medmodal.data.readers import Blob, read_image
from medmodal.data.readers import dicom as dicom_reader
from medmodal.data.readers.dicom import NoPreambleWarning, read_dicom
from medmodal.errors import DataError

ROOT = Path(get_testdata_file("CT_small.dcm")).parent
# Two files of pydicom's corpus are damaged on purpose (a misplaced JPEG marker, a J2K code
# stream cut by a sequence delimiter): no plugin decodes them, pydicom's own tests expect that.
DAMAGED = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}
HOSPITAL_SYNTAXES = [
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
]


def _compressed_files() -> list[Path]:
    out = []
    for p in sorted(ROOT.glob("*.dcm")):
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is not None and ts.is_compressed and "BitsAllocated" in ds:
            out.append(p)
    return out


COMPRESSED = _compressed_files()


@pytest.mark.parametrize("ts", HOSPITAL_SYNTAXES, ids=lambda t: t.name)
def test_every_hospital_transfer_syntax_has_a_decoder(ts: uid.UID) -> None:
    decoder = get_decoder(ts)
    assert decoder.is_available, f"{ts.name}: {decoder.missing_dependencies}"


def test_the_corpus_holds_every_jpeg_family() -> None:
    names = {
        pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        for p in COMPRESSED
    }
    for family in (
        "JPEG Baseline",
        "JPEG Extended",
        "JPEG Lossless",
        "JPEG-LS",
        "JPEG 2000",
        "RLE",
    ):
        assert any(n.startswith(family) for n in names), family
    assert len(COMPRESSED) >= 38


@pytest.mark.parametrize("path", COMPRESSED, ids=lambda p: p.name)
def test_every_compressed_file_decodes_to_pydicoms_pixels(path: Path) -> None:
    if path.name in DAMAGED:
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        with pytest.raises(DataError, match=re.escape(f"cannot decode {ts.name}")):
            read_dicom(path)
        return
    out = read_dicom(path)
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pixel_array(ds, as_rgb=True)
    raw, _ = dicom_reader._decode(ds, path)
    np.testing.assert_array_equal(raw.reshape(ref.shape), ref)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("rtdose_rle.dcm", "rtdose.dcm"),
        ("rtdose_rle_1frame.dcm", "rtdose_1frame.dcm"),
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),  # JPEG Lossless SV1 vs RLE: both lossless
    ],
)
def test_lossless_files_equal_their_uncompressed_twin(compressed: str, reference: str) -> None:
    np.testing.assert_array_equal(read_dicom(ROOT / compressed), read_dicom(ROOT / reference))


def test_lossy_jpeg_is_close_to_the_lossless_twin() -> None:
    lossy, exact = read_dicom(ROOT / "SC_rgb_jpeg_dcmtk.dcm"), read_dicom(ROOT / "SC_rgb_rle.dcm")
    assert lossy.shape == exact.shape and np.abs(lossy - exact).mean() < 0.03


def test_encoded_here_with_the_plugins_round_trips(tmp_path: Path) -> None:
    """JPEG 2000 lossless and JPEG-LS lossless written by pydicom with the same plugins."""
    ref = read_dicom(ROOT / "CT_small.dcm")
    for ts in (uid.JPEG2000Lossless, uid.JPEGLSLossless, uid.RLELossless):
        ds = pydicom.dcmread(ROOT / "CT_small.dcm")
        ds.compress(ts)
        ds.save_as(tmp_path / f"{ts.name}.dcm")
        np.testing.assert_array_equal(read_dicom(tmp_path / f"{ts.name}.dcm"), ref)


def _without_preamble(src: Path) -> bytes:
    ds = pydicom.dcmread(src)
    buf = io.BytesIO()
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    data = buf.getvalue()
    assert data[128:132] != b"DICM" and b"DICM" not in data[:256]
    return data


def test_a_file_without_preamble_is_read_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "raw.dcm"
    path.write_bytes(_without_preamble(ROOT / "CT_small.dcm"))
    with pytest.warns(NoPreambleWarning, match="raw.dcm: DICOM file without the 128-byte preamble"):
        out = read_image(path)
    np.testing.assert_array_equal(out, read_dicom(ROOT / "CT_small.dcm"))


def test_pydicoms_preambleless_files_read_or_say_why() -> None:
    for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "rtstruct.dcm"):
        with pytest.warns(NoPreambleWarning), pytest.raises(DataError, match="no pixel data"):
            read_dicom(ROOT / name)  # RT objects: read, then refused as having no image
    with pytest.raises(DataError, match="not a DICOM file"):
        read_dicom(ROOT / "no_meta.dcm")  # garbage once forced: no SOP class, no pixels


def test_an_upload_without_preamble_is_refused() -> None:
    """Uploads are de-identified as Part 10 files before reading: no forced parse of a Blob."""
    blob = Blob(_without_preamble(ROOT / "CT_small.dcm"), "image")
    with pytest.raises(DataError, match="not a PNG, JPEG, TIFF, BMP, DICOM"):
        read_image(blob)
    with pytest.raises(DataError, match="not a DICOM file"):
        read_dicom(blob)


def test_a_missing_plugin_names_the_transfer_syntax_and_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = SimpleNamespace(
        is_available=False,
        missing_dependencies=[
            "pylibjpeg - requires numpy, pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1",
            "pyjpegls - requires numpy and pyjpegls>=1.2",
        ],
    )
    monkeypatch.setattr(dicom_reader, "get_decoder", lambda ts: missing)
    path = ROOT / "JPEGLSNearLossless_08.dcm"
    with pytest.raises(DataError, match="JPEG-LS Lossy.*pip install 'pylibjpeg>=2.0'") as err:
        read_dicom(path)
    assert "pyjpegls>=1.2" in str(err.value) and "\n" not in str(err.value)
