"""Image readers on real files: PIL, .npz members, DICOM (files and series), NIfTI, bad inputs."""

from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIB_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import (
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    pixel_array,
)

from medmodal.data.readers import IMAGE_READERS, Blob, find_reader, read_image
from medmodal.data.readers.dicom import dicom_meta, read_dicom, read_dicom_series
from medmodal.data.readers.nifti import read_nifti
from medmodal.errors import ConfigError, DataError

PYDICOM_DIR = Path(get_testdata_file("CT_small.dcm")).parent
CR_MONO1 = PYDICOM_DIR / "dicomdirtests" / "77654033" / "CR1" / "6154"
CT_SERIES = PYDICOM_DIR / "dicomdirtests" / "98892001" / "CT5N"


def dcm(name: str) -> Path:
    return Path(get_testdata_file(name))


def nii(name: str) -> Path:
    return Path(NIB_DATA) / name


def medmnist(data_dir: Path, name: str) -> np.ndarray:
    with np.load(data_dir / "medmnist" / f"{name}.npz") as d:
        return d["train_images"][0]


@pytest.fixture
def cxr_png(covid_cxr: Path) -> Path:
    return sorted((covid_cxr / "images").glob("*.png"))[0]


# --------------------------------------------------------------------------- PIL


def test_pil_real_chest_xray_png(cxr_png: Path) -> None:
    ref = np.asarray(Image.open(cxr_png).convert("L"), dtype=np.float32) / 255.0
    out = read_image(cxr_png)
    assert out.dtype == np.float32 and out.shape == (1, *ref.shape)
    np.testing.assert_array_equal(out[0], ref)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0.05


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
@pytest.mark.parametrize("name", ["breastmnist", "retinamnist"])
def test_pil_formats_from_real_medmnist(
    data_dir: Path, tmp_path: Path, name: str, suffix: str
) -> None:
    img = medmnist(data_dir, name)  # (28, 28) gray or (28, 28, 3) RGB, uint8
    path = tmp_path / f"img{suffix}"
    Image.fromarray(img).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    out = read_image(path)
    ref = (img[None] if img.ndim == 2 else img.transpose(2, 0, 1)).astype(np.float32) / 255.0
    assert out.shape == ref.shape and out.dtype == np.float32
    if suffix == ".jpg":  # lossy: close, not equal
        assert np.abs(out - ref).mean() < 0.03
    else:
        np.testing.assert_array_equal(out, ref)


def test_pil_16bit_png_scaled_by_bit_depth(data_dir: Path, tmp_path: Path) -> None:
    img = medmnist(data_dir, "breastmnist").astype(np.uint16) * 257  # 0..65535
    Image.fromarray(img).save(tmp_path / "x16.png")
    out = read_image(tmp_path / "x16.png")
    np.testing.assert_allclose(out[0], img / 65535.0, atol=1e-6)


def test_pil_gray_with_alpha_is_one_channel(data_dir: Path, tmp_path: Path) -> None:
    img = medmnist(data_dir, "breastmnist")
    Image.fromarray(img).convert("LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out.shape == (1, 28, 28)
    np.testing.assert_array_equal(out[0], img / np.float32(255.0))


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("breastmnist", (1, 28, 28)),
        ("retinamnist", (3, 28, 28)),
        ("adrenalmnist3d", (1, 28, 28, 28)),
    ],
)
def test_npz_member_matches_raw_array(data_dir: Path, name: str, shape: tuple[int, ...]) -> None:
    raw = medmnist(data_dir, name)
    out = read_image(f"{data_dir}/medmnist/{name}.npz#train_images/0")
    assert out.shape == shape and out.dtype == np.float32
    ref = np.moveaxis(raw, -1, 0) if raw.ndim == 3 and raw.shape[-1] == 3 else raw[None]
    np.testing.assert_array_equal(out, ref.astype(np.float32) / 255.0)


def test_npz_member_index_selects_that_image(data_dir: Path) -> None:
    with np.load(data_dir / "medmnist" / "breastmnist.npz") as d:
        raw = d["val_images"][5]
    out = read_image(f"{data_dir}/medmnist/breastmnist.npz#val_images/5")
    np.testing.assert_array_equal(out[0], raw / np.float32(255.0))


# --------------------------------------------------------------------------- DICOM


def _hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def test_dicom_ct_rescale_to_hounsfield_units() -> None:
    path = dcm("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) == -1024.0  # the data the test relies on
    # A 4096-wide window centred on 0 is linear over -2048..2048 HU: invert it to get HU back.
    out = read_dicom(path, window=[0, 4096])
    hu = out[0].astype(np.float64) * 4096 - 2048
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) - 1024.0
    np.testing.assert_allclose(hu, expected, atol=0.05)
    assert -1100 < hu.min() < -700  # air / lung
    assert 300 < hu.max() < 3000  # bone, not raw stored values (max 2191 stored)


def test_dicom_ct_soft_tissue_window_and_min_max_fallback() -> None:
    path = dcm("CT_small.dcm")
    hu = _hu(path)
    out = read_dicom(path, window=[40, 400])
    assert out.shape == (1, 128, 128) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], np.clip((hu + 160) / 400, 0, 1), atol=1e-6)
    plain = read_dicom(path)  # CT_small has no window in the file: min-max of the HU image
    np.testing.assert_allclose(plain[0], (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


def test_dicom_mr_file_window_matches_pydicom_voi() -> None:
    path = dcm("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert ds.WindowCenter == 600 and ds.WindowWidth == 1600
    y = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)  # signed 16-bit output range
    out = read_dicom(path)
    assert out.shape == (1, 64, 64)
    np.testing.assert_allclose(out[0], (y + 32768) / 65535, atol=1e-5)
    assert out.min() > 0.0 and out.max() == 1.0  # window, not min-max


def test_dicom_voi_lut_sequence_preferred_over_window(tmp_path: Path) -> None:
    ds = pydicom.dcmread(dcm("MR_small.dcm"))  # has WindowCenter/Width 600/1600 too
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", list(range(0, 4096 * 2, 2)))  # output 2 * input, 0..8190
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(tmp_path / "lut.dcm")
    out = read_dicom(tmp_path / "lut.dcm")
    raw = ds.pixel_array.astype(np.float64)  # no rescale in MR_small
    np.testing.assert_allclose(out[0], np.clip(raw, 0, 4095) * 2 / 8190, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CR_MONO1)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = read_dicom(CR_MONO1)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "mono2.dcm")
    mono2 = read_dicom(tmp_path / "mono2.dcm")
    np.testing.assert_allclose(out, 1.0 - mono2, atol=1e-6)
    raw = ds.pixel_array
    hi, lo = np.unravel_index(raw.argmax(), raw.shape), np.unravel_index(raw.argmin(), raw.shape)
    assert out[0][hi] < out[0][lo]  # MONOCHROME1: the highest stored value is the darkest


def test_dicom_multiframe_all_and_single_frames() -> None:
    path = dcm("rtdose.dcm")  # 15 frames of 10x10, no window: one min-max for the volume
    vol = read_dicom(path)
    assert vol.shape == (1, 15, 10, 10)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_allclose(vol[0], (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    np.testing.assert_array_equal(read_dicom(path, frames=3), vol[:, 3])
    np.testing.assert_array_equal(read_dicom(path, frames="middle"), vol[:, 7])
    np.testing.assert_array_equal(read_image(path, slice_index=4), vol[:, 4])
    with pytest.raises(DataError, match="frame 15 out of range"):
        read_dicom(path, frames=15)
    with pytest.raises(ConfigError):
        read_dicom(path, frames="first")


def test_dicom_multiframe_colour() -> None:
    path = dcm("SC_rgb_rle_2frame.dcm")
    vol = read_dicom(path)
    assert vol.shape == (3, 2, 100, 100)
    ref = pydicom.dcmread(path).pixel_array.astype(np.float32) / 255.0  # (2, 100, 100, 3)
    np.testing.assert_allclose(vol, np.moveaxis(ref, -1, 0), atol=1e-6)
    np.testing.assert_array_equal(read_dicom(path, frames=1), vol[:, 1])


def test_dicom_rgb_is_three_channels() -> None:
    path = dcm("examples_rgb_color.dcm")
    ds = pydicom.dcmread(path)
    out = read_dicom(path, window=[40, 400])  # a window does not apply to colour
    assert ds.PhotometricInterpretation == "RGB" and out.shape == (3, 240, 320)
    np.testing.assert_allclose(out, ds.pixel_array.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_dicom_ybr_converted_to_rgb() -> None:
    path = dcm("SC_ybr_full_422_uncompressed.dcm")
    assert pydicom.dcmread(path).PhotometricInterpretation == "YBR_FULL_422"
    ybr = pixel_array(path, raw=True)  # as stored, Y/Cb/Cr
    assert not np.allclose(ybr[..., 1], ybr[..., 2])
    rgb = convert_color_space(ybr, "YBR_FULL", "RGB")
    out = read_dicom(path)
    assert out.shape == (3, 100, 100)
    np.testing.assert_allclose(out, rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert out[:, 0, 0].tolist() == pytest.approx([254 / 255, 0.0, 0.0])  # red corner


def test_dicom_palette_colour_to_rgb() -> None:
    out = read_dicom(dcm("examples_palette.dcm"))
    assert out.shape == (3, 350, 800) and 0.0 <= out.min() and out.max() <= 1.0
    assert not np.allclose(out[0], out[2])  # really coloured


def test_dicom_extensionless_file_is_sniffed(tmp_path: Path) -> None:
    shutil.copy(dcm("MR_small.dcm"), tmp_path / "IM0001")
    np.testing.assert_array_equal(read_image(tmp_path / "IM0001"), read_dicom(dcm("MR_small.dcm")))


def test_dicom_sniffs_before_a_tiff_header_in_its_preamble(tmp_path: Path) -> None:
    """A DICOM-TIFF dual file: its preamble starts like a TIFF, its "DICM" marker decides, by
    the priority the DICOM reader declares (not the order the reader modules are imported in)."""
    data = bytearray(dcm("MR_small.dcm").read_bytes())
    data[:8] = b"II*\x00\x08\x00\x00\x00"
    (tmp_path / "dual.tif").write_bytes(bytes(data))
    assert IMAGE_READERS.capabilities("pil").sniff(bytes(data))  # the TIFF magic matches too
    assert find_reader(tmp_path / "dual.tif").name == "dicom"
    assert find_reader(Blob(bytes(data), "upload")).name == "dicom"
    expect = read_dicom(dcm("MR_small.dcm"))
    np.testing.assert_array_equal(read_image(tmp_path / "dual.tif"), expect)
    order = IMAGE_READERS.ordered()
    assert order[0] == "dicom" and IMAGE_READERS.entry("dicom").priority > max(
        IMAGE_READERS.entry(n).priority for n in order[1:]
    )


def test_every_image_reader_declares_its_format() -> None:
    for name in IMAGE_READERS.names():
        fmt = IMAGE_READERS.capabilities(name)
        assert fmt.suffixes and all(s.startswith(".") and s == s.lower() for s in fmt.suffixes)
        assert callable(fmt.sniff) and not fmt.sniff(b"") and not fmt.sniff(b"plain text" * 60)
    claimed = [s for n in IMAGE_READERS.names() for s in IMAGE_READERS.capabilities(n).suffixes]
    assert len(claimed) == len(set(claimed))  # one reader per suffix: the fallback is unambiguous


def test_dicom_meta_is_technical_only() -> None:
    path = dcm("CT_small.dcm")
    ds = pydicom.dcmread(path)
    meta = dicom_meta(path)
    assert meta["Modality"] == "CT" and meta["Rows"] == 128 and meta["Columns"] == 128
    assert meta["RescaleIntercept"] == -1024.0 and meta["PixelSpacing"] == [0.661468, 0.661468]
    text = repr(meta)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName"):
        assert keyword not in meta
        value = str(ds.get(keyword) or "")
        if value:
            assert value not in text


# --------------------------------------------------------------------------- DICOM series


def _write_series(directory: Path, n: int = 6, *, positions: bool = True) -> list[float]:
    """n slices of CT_small, slice k marked with value k*100 in its corner; shuffled names."""
    directory.mkdir()
    src = pydicom.dcmread(dcm("CT_small.dcm"))
    iop = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # coronal: normal = row x col = (0, 1, 0)
    names = [f"slice_{i:02d}.dcm" for i in range(n)]
    random.Random(1).shuffle(names)
    zs = [float(-30 + 2.5 * k) for k in range(n)]
    for k in range(n):
        ds = copy.deepcopy(src)
        px = ds.pixel_array.copy()
        px[:4, :4] = 1024 + k * 100  # HU k*100 after the -1024 intercept
        ds.PixelData = px.tobytes()
        ds.InstanceNumber = n - k  # deliberately opposite to the spatial order
        if positions:
            ds.ImageOrientationPatient = iop
            ds.ImagePositionPatient = [10.0, zs[k], 5.0]
        else:
            del ds.ImagePositionPatient
            del ds.ImageOrientationPatient
        ds.save_as(directory / names[k])
    return zs


def test_series_sorted_by_position_along_normal(tmp_path: Path) -> None:
    _write_series(tmp_path / "s")
    vol = read_dicom_series(tmp_path / "s", window=[250, 500])  # 0..500 HU -> 0..1
    assert vol.shape == (1, 6, 128, 128) and vol.dtype == np.float32
    corners = vol[0, :, 0, 0] * 500
    np.testing.assert_allclose(corners, [0, 100, 200, 300, 400, 500], atol=1e-3)
    middle = read_image(tmp_path / "s", window=[250, 500], frames="middle")
    np.testing.assert_array_equal(middle, vol[:, 3])


def test_series_falls_back_to_instance_number(tmp_path: Path) -> None:
    _write_series(tmp_path / "s", positions=False)
    vol = read_dicom_series(tmp_path / "s", window=[250, 500])
    np.testing.assert_allclose(vol[0, :, 0, 0] * 500, [500, 400, 300, 200, 100, 0], atol=1e-3)


def test_series_real_ct_slices_restore_z_order(tmp_path: Path) -> None:
    files = sorted(CT_SERIES.iterdir())
    zs = {f.name: float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files}
    target = tmp_path / "ct"
    target.mkdir()
    for i, f in enumerate(reversed(files)):  # names now run against the z order
        shutil.copy(f, target / f"{i:03d}_{f.name}")
    vol = read_dicom_series(target, window=[40, 400])
    by_z = sorted(files, key=lambda f: zs[f.name])
    expected = np.stack([read_dicom(f, window=[40, 400])[0] for f in by_z])
    assert vol.shape == (1, len(files), 16, 16)
    np.testing.assert_array_equal(vol[0], expected)


def test_series_mixed_or_inconsistent_raise(tmp_path: Path) -> None:
    _write_series(tmp_path / "mixed", n=3)
    other = pydicom.dcmread(dcm("CT_small.dcm"))
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.save_as(tmp_path / "mixed" / "other.dcm")
    with pytest.raises(DataError, match="mixes 2 DICOM series"):
        read_dicom_series(tmp_path / "mixed")

    _write_series(tmp_path / "shapes", n=3)
    shutil.copy(dcm("MR_small.dcm"), tmp_path / "shapes" / "mr.dcm")
    mr = pydicom.dcmread(tmp_path / "shapes" / "mr.dcm")
    mr.SeriesInstanceUID = pydicom.dcmread(dcm("CT_small.dcm")).SeriesInstanceUID
    mr.save_as(tmp_path / "shapes" / "mr.dcm")
    with pytest.raises(DataError, match="different shapes"):
        read_dicom_series(tmp_path / "shapes")

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files"):
        read_image(tmp_path / "empty")


# --------------------------------------------------------------------------- NIfTI


def _canonical(path: Path) -> np.ndarray:
    """Independent reference: RAS+ data as (C, z, -y, -x)."""
    data = nib.as_closest_canonical(nib.load(path)).get_fdata()
    if data.ndim == 3:
        data = data[..., None]
    return data[::-1, ::-1].transpose(3, 2, 1, 0)


def _pct(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / (hi - lo), 0, 1)


def test_nifti_3d_real_file() -> None:
    path = nii("anatomical.nii")  # (33, 41, 25), LAS
    out = read_nifti(path)
    assert out.shape == (1, 25, 41, 33) and out.dtype == np.float32
    np.testing.assert_allclose(out, _pct(_canonical(path)), atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0


def test_nifti_4d_becomes_channels() -> None:
    path = nii("example4d.nii.gz")  # (128, 96, 24, 2)
    out = read_nifti(path)
    assert out.shape == (2, 24, 96, 128)
    ref = _canonical(path)
    for c in range(2):  # each channel has its own percentile window
        np.testing.assert_allclose(out[c], _pct(ref[c]), atol=1e-5)


def test_nifti_2d_slice_selection() -> None:
    path = nii("anatomical.nii")
    vol = read_nifti(path)
    np.testing.assert_array_equal(read_nifti(path, spatial_dims=2), vol[:, 12])
    np.testing.assert_array_equal(read_nifti(path, spatial_dims=2, slice_index=3), vol[:, 3])
    via_dispatch = read_image(path, spatial_dims=2, slice_index=20)
    np.testing.assert_array_equal(via_dispatch, vol[:, 20])
    with pytest.raises(DataError, match="slice_index 25 out of range"):
        read_nifti(path, spatial_dims=2, slice_index=25)


def test_nifti_axis_order_and_reorientation(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    data[0, 0, 0] = 100.0  # RAS voxel (0, 0, 0): patient left, posterior, inferior
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "ras.nii.gz")
    out = read_nifti(tmp_path / "ras.nii.gz", window=[50, 100])
    assert out.shape == (1, 6, 5, 4)
    assert out[0, 0, 4, 3] == 1.0 and out.sum() == 1.0  # D inferior, H posterior, W left
    # Same anatomy stored left-right flipped with an LAS affine reads identically.
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[0, 3] = 3.0
    nib.save(nib.Nifti1Image(data[::-1].copy(), las), tmp_path / "las.nii")
    np.testing.assert_array_equal(read_nifti(tmp_path / "las.nii", window=[50, 100]), out)


def test_nifti_window_and_2d_file(tmp_path: Path) -> None:
    img = np.arange(20, dtype=np.int16).reshape(4, 5) * 10  # 0..190
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "flat.nii")
    out = read_nifti(tmp_path / "flat.nii", window=[100, 200], spatial_dims=2)
    assert out.shape == (1, 5, 4)
    np.testing.assert_allclose(out[0], img[::-1, ::-1].T / 200.0, atol=1e-6)
    assert read_nifti(tmp_path / "flat.nii").shape == (1, 1, 5, 4)


# --------------------------------------------------------------------------- bad inputs


def _half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _nan_nifti(path: Path) -> Path:
    vol = np.ones((4, 4, 4), np.float32)
    vol[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    return path


def _npy_as_npz(path: Path) -> Path:
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((2, 3, 3), np.uint8))
    return path


def _cxr(data: Path) -> Path:
    return sorted((data / "covid_cxr" / "images").glob("*.png"))[0]


BREAST = "medmnist/breastmnist.npz"

# name -> (needs shared data, builder(tmp, data_dir) -> reference, regex the reason must match)
BAD_INPUTS = {
    "missing_file": (False, lambda t, d: t / "nope.png", "file not found"),
    "corrupt_png": (
        False,
        lambda t, d: _write(t / "x.png", bytes(range(256)) * 8),
        "cannot decode image",
    ),
    "truncated_png": (True, lambda t, d: _half(_cxr(d), t / "half.png"), "cannot decode image"),
    "mr_truncated_dcm": (False, lambda t, d: dcm("MR_truncated.dcm"), "truncated pixel data"),
    "text_named_dcm": (
        False,
        lambda t, d: _write(t / "notes.dcm", b"a clinical note, not an image\n" * 20),
        "not a DICOM file",
    ),
    "dicom_cut_in_header": (
        False,
        lambda t, d: _write(t / "cut.dcm", dcm("CT_small.dcm").read_bytes()[:600]),
        "no pixel data .*truncated",
    ),
    "dicom_cut_in_pixels": (
        False,
        lambda t, d: _half(dcm("CT_small.dcm"), t / "half.dcm"),
        "truncated pixel data",
    ),
    "dicom_without_pixels": (False, lambda t, d: dcm("rtplan.dcm"), "no pixel data"),
    "truncated_nii_gz": (
        False,
        lambda t, d: _half(nii("example4d.nii.gz"), t / "t.nii.gz"),
        "truncated NIfTI",
    ),
    "truncated_nii": (False, lambda t, d: _half(nii("anatomical.nii"), t / "t.nii"), "truncated"),
    "junk_nii": (False, lambda t, d: _write(t / "j.nii", b"\x00garbage" * 64), "NIfTI"),
    "nan_nii": (False, lambda t, d: _nan_nifti(t / "nan.nii.gz"), "NaN"),
    "unknown_suffix": (
        False,
        lambda t, d: _write(t / "scan.xyz", b"1234"),
        "unsupported image format .xyz",
    ),
    "corrupt_npz": (
        False,
        lambda t, d: f"{_write(t / 'j.npz', b'PK' + bytes(200))}#train_images/0",
        "cannot read .npz archive",
    ),
    "truncated_npz": (
        True,
        lambda t, d: f"{_half(d / BREAST, t / 'half.npz')}#train_images/0",
        "cannot read .npz archive",
    ),
    "npy_named_npz": (
        False,
        lambda t, d: f"{_npy_as_npz(t / 'plain.npz')}#x/0",
        "not an .npz archive",
    ),
    "npz_ref_without_index": (
        True,
        lambda t, d: f"{d / BREAST}#train_images",
        "bad .npz reference",
    ),
    "npz_unknown_key": (True, lambda t, d: f"{d / BREAST}#nope/0", "no array 'nope'"),
    "npz_index_out_of_range": (
        True,
        lambda t, d: f"{d / BREAST}#train_images/9999",
        "out of range",
    ),
    "npz_label_not_image": (
        True,
        lambda t, d: f"{d / BREAST}#train_labels/0",
        "unexpected image array shape",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_data_error_naming_the_file(
    request: pytest.FixtureRequest, tmp_path: Path, case: str
) -> None:
    needs_data, build, reason = BAD_INPUTS[case]
    data = request.getfixturevalue("data_dir") if needs_data else None
    ref = str(build(tmp_path, data))
    with pytest.raises(DataError, match=reason) as err:
        read_image(ref)
    file_part = Path(ref.split("#", 1)[0])
    assert err.value.path is not None
    assert Path(err.value.path.split("#", 1)[0]) == file_part
    assert file_part.name in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        read_dicom(dcm("CT_small.dcm"), window=[40, 0])
    with pytest.raises(ConfigError):
        read_nifti(nii("anatomical.nii"), window=[1, 2, 3])
    with pytest.raises(ConfigError):
        read_nifti(nii("anatomical.nii"), spatial_dims=4)
