"""Leakage audit: planted duplicates (byte-identical, re-encoded, identical notes and signals) are
found with the right classification, a clean manifest gives nothing, bad files are listed, the
command line's exit code and JSON, and every byte-identical image pair of the real covid_cxr."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from medmodal.audit import NEAR_THRESHOLD, AuditReport, audit_manifest, normalize_note, phash
from medmodal.audit.hashing import near_pairs
from medmodal.cli import app
from medmodal.data.readers import read_image
from medmodal.errors import ManifestError

N = 8  # distinct base samples, one patient each
SPLITS = ["train", "train", "train", "train", "val", "val", "test", "test"]
SCHEMA: dict[str, Any] = {
    "id_column": "sample_id",
    "patient_column": "patient_id",
    "split_column": "split",
    "target": {"task": "binary", "column": "label"},
    "modalities": {
        "image": {"type": "image", "column": "image"},
        "note": {"type": "text", "column": "note"},
        "ecg": {"type": "signal", "column": "ecg", "preprocess": {"fs": 100}},
        "sound": {"type": "audio", "column": "sound"},
        "record": {"type": "tabular", "columns": ["age"]},
    },
}


def _picture(seed: int, side: int = 96) -> np.ndarray:
    """A smooth random grey picture (uint8): distinct seeds give unrelated pHashes."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(side, side)), sigma=3)
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 255).astype(np.uint8)


def _row(tmp: Path, i: int, patient: str, split: str) -> dict[str, Any]:
    """Sample ``s{i}``: its own picture, note, 2-lead signal and sound, written to ``tmp``."""
    import soundfile as sf

    for d in ("img", "ecg", "wav"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(_picture(i)).save(tmp / "img" / f"s{i}.png")
    rng = np.random.default_rng(100 + i)
    np.save(tmp / "ecg" / f"s{i}.npy", rng.normal(size=(2, 500)).astype(np.float32))
    sf.write(tmp / "wav" / f"s{i}.wav", 0.1 * rng.normal(size=800), 4000, subtype="PCM_16")
    return {
        "sample_id": f"s{i}",
        "patient_id": patient,
        "split": split,
        "label": i % 2,
        "image": f"img/s{i}.png",
        "note": f"Patient {i} seen on day {3 * i}; cough.",
        "ecg": f"ecg/s{i}.npy",
        "sound": f"wav/s{i}.wav",
        "age": 40 + i,
    }


def _clean(tmp: Path) -> pd.DataFrame:
    """N samples of N patients with unrelated files and notes."""
    return pd.DataFrame([_row(tmp, i, f"p{i}", SPLITS[i]) for i in range(N)])


def _add(
    frame: pd.DataFrame, tmp: Path, sid: str, patient: str, split: str, **cells: str
) -> pd.DataFrame:
    """A new row with files of its own, except the given (planted) cells."""
    row = {**_row(tmp, len(frame) + 50, patient, split), "sample_id": sid, **cells}
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True)


def _planted(tmp: Path) -> pd.DataFrame:
    """The clean table plus one duplicate of each kind (see the expected groups in the test)."""
    frame = _clean(tmp)
    shutil.copy(tmp / "img" / "s0.png", tmp / "img" / "copy_of_s0.png")  # same bytes, new name
    small = Image.fromarray(_picture(1)).resize((72, 72), Image.LANCZOS)  # s1 resized and
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=70)  # re-encoded as JPEG (lossy)
    (tmp / "img" / "s1_small.jpg").write_bytes(buf.getvalue())
    x = np.load(tmp / "ecg" / "s2.npy")
    np.save(tmp / "ecg" / "s2_again.npy", x.astype(np.float64))  # same samples, other bytes
    shutil.copy(tmp / "wav" / "s3.wav", tmp / "wav" / "s3_copy.wav")
    frame = _add(frame, tmp, "dup_img", "p6", "test", image="img/copy_of_s0.png")  # s0: p0, train
    frame = _add(frame, tmp, "near_img", "p1", "test", image="img/s1_small.jpg")  # s1: p1, train
    frame = _add(frame, tmp, "dup_ecg", "p5", "val", ecg="ecg/s2_again.npy")  # s2: p2, train
    frame = _add(frame, tmp, "dup_wav", "p3", "train", sound="wav/s3_copy.wav")  # s3: p3, train
    return _add(frame, tmp, "dup_note", "p7", "test", note="  patient 4 SEEN on day 12;\n cough. ")


def _found(report: AuditReport) -> set[tuple[str, str, frozenset[str], bool, bool]]:
    return {
        (
            g.modality,
            g.kind,
            frozenset(m.sample_id for m in g.members),
            g.cross_patient,
            g.cross_split,
        )
        for g in report.groups
    }


def test_planted_duplicates_are_found_and_classified(tmp_path: Path) -> None:
    frame = _planted(tmp_path)
    report = audit_manifest(frame, SCHEMA, root=tmp_path)
    assert _found(report) == {
        # another patient, another split: a byte-identical copy under a new file name
        ("image", "file", frozenset({"s0", "dup_img"}), True, True),
        # the same patient's film resized and re-encoded as JPEG, placed in another split
        ("image", "near", frozenset({"s1", "near_img"}), False, True),
        ("ecg", "content", frozenset({"s2", "dup_ecg"}), True, True),  # same samples, other bytes
        ("sound", "file", frozenset({"s3", "dup_wav"}), False, False),  # same patient and split
        ("note", "content", frozenset({"s4", "dup_note"}), True, True),  # case and spaces differ
    }
    near = next(g for g in report.groups if g.kind == "near")
    assert near.distance is not None and near.distance[0] <= NEAR_THRESHOLD
    assert (near.pairs, near.cross_patient_pairs, near.cross_split_pairs) == (1, 0, 1)
    assert not report.unreadable
    assert report.modalities["image"] == {
        "type": "image",
        "read": 13,
        "absent": 0,
        "unreadable": 0,
        "files": 13,
    }
    assert "record" not in report.modalities  # tabular columns are not compared


def test_clean_manifest_has_no_duplicates(tmp_path: Path) -> None:
    frame = _clean(tmp_path)
    report = audit_manifest(frame, SCHEMA, root=tmp_path)
    assert report.groups == [] and report.unreadable == []
    assert all(c["groups"] == 0 for c in report.counts())
    assert {m["read"] for m in report.modalities.values()} == {N}


def test_pair_counts_and_splits_argument(tmp_path: Path) -> None:
    """Three copies of one image: 3 pairs; patients p0, p0, p1; splits from the argument."""
    frame = _clean(tmp_path)
    shutil.copy(tmp_path / "img" / "s0.png", tmp_path / "img" / "c.png")
    frame = _add(frame, tmp_path, "a", "p0", "train", image="img/c.png")
    frame = _add(frame, tmp_path, "b", "p1", "train", image="img/c.png")
    splits = ["train"] * (len(frame) - 1) + ["test"]  # b goes to test
    report = audit_manifest(
        frame, {**SCHEMA, "split_column": None}, root=tmp_path, splits=splits, modalities=["image"]
    )
    [group] = report.groups
    assert {m.sample_id for m in group.members} == {"s0", "a", "b"}
    assert (group.pairs, group.cross_patient_pairs, group.cross_split_pairs) == (3, 2, 2)
    assert report.split_source == "argument"
    assert {m.sample_id: m.split for m in group.members}["b"] == "test"
    no_split = audit_manifest(
        frame, {**SCHEMA, "split_column": None}, root=tmp_path, modalities=["image"]
    )
    assert no_split.groups[0].cross_split_pairs == 0 and no_split.split_source is None
    with pytest.raises(ManifestError, match="split value"):
        audit_manifest(frame, SCHEMA, root=tmp_path, splits=["training"] * len(frame))


def test_unreadable_files_are_listed_not_fatal(tmp_path: Path) -> None:
    frame = _clean(tmp_path)
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "ecg" / "broken.npy").write_bytes(b"not an array")
    frame.loc[1, "image"] = "img/broken.png"
    frame.loc[2, "image"] = "img/missing.png"
    frame.loc[3, "ecg"] = "ecg/broken.npy"
    frame.loc[4, "note"] = "   "  # empty: absent, not unreadable
    frame.loc[5, "sound"] = None
    report = audit_manifest(frame, SCHEMA, root=tmp_path)
    bad = {(u.modality, u.sample_id): u for u in report.unreadable}
    assert set(bad) == {("image", "s1"), ("image", "s2"), ("ecg", "s3")}
    assert bad[("image", "s1")].file.endswith("broken.png")
    assert "not found" in bad[("image", "s2")].reason and bad[("image", "s2")].file.endswith(
        "missing.png"
    )
    assert report.modalities["image"]["read"] == N - 2 and report.modalities["note"]["absent"] == 1
    assert report.modalities["sound"]["absent"] == 1
    assert report.groups == []
    json.dumps(report.to_dict(), allow_nan=False)  # JSON-safe


def test_npz_members_and_text_files(tmp_path: Path) -> None:
    """Two members of an .npz with equal arrays; two note files with the same text."""
    images = np.stack([_picture(i, 28) for i in range(4)])
    images[3] = images[0]
    np.savez(tmp_path / "set.npz", train_images=images)
    (tmp_path / "a.txt").write_text("Same note.\n")
    (tmp_path / "b.txt").write_text("Same note.\n")
    (tmp_path / "c.txt").write_text("same   NOTE.")
    frame = pd.DataFrame(
        {
            "sample_id": list("wxyz"),
            "patient_id": ["p1", "p2", "p3", "p4"],
            "label": [0, 1, 0, 1],
            "image": [f"set.npz#train_images/{i}" for i in range(4)],
            "note": ["a.txt", "b.txt", "c.txt", None],
        }
    )
    schema = {
        "id_column": "sample_id",
        "patient_column": "patient_id",
        "target": {"task": "binary", "column": "label"},
        "modalities": {
            "image": {"type": "image", "column": "image"},
            "note": {"type": "text", "column": "note"},
        },
    }
    report = audit_manifest(frame, schema, root=tmp_path)
    assert _found(report) == {
        ("image", "file", frozenset("wz"), True, False),
        ("note", "file", frozenset("wx"), True, False),
        ("note", "content", frozenset("wxy"), True, False),
    }
    content = next(g for g in report.groups if g.modality == "note" and g.kind == "content")
    assert content.pairs == 2  # w-x is already counted as byte-identical files


def test_phash_and_near_pairs() -> None:
    pics = [_picture(i).astype(np.float32)[None] / 255 for i in range(6)]
    hashes = np.stack([phash(p) for p in pics])
    assert hashes.shape == (6, 256) and hashes.dtype == bool
    brighter = np.clip(pics[2] * 0.9 + 0.05, 0, 1)
    assert int((phash(brighter) != hashes[2]).sum()) <= NEAR_THRESHOLD
    assert near_pairs(hashes, NEAR_THRESHOLD) == []  # unrelated pictures are far apart
    both = np.concatenate([hashes, phash(brighter)[None]])
    [(i, j, d)] = near_pairs(both, NEAR_THRESHOLD)
    assert (i, j) == (2, 6) and d == int((both[2] != both[6]).sum())
    assert normalize_note("  A\tB\n c ") == "a b c"


def _write(tmp: Path, frame: pd.DataFrame) -> tuple[Path, Path]:
    manifest, schema = tmp / "manifest.csv", tmp / "schema.yaml"
    frame.to_csv(manifest, index=False)
    schema.write_text(yaml.safe_dump(SCHEMA))
    return manifest, schema


def test_cli_exit_code_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    clean_dir, dirty_dir = tmp_path / "clean", tmp_path / "dirty"
    clean_dir.mkdir()
    dirty_dir.mkdir()
    manifest, schema = _write(clean_dir, _clean(clean_dir))
    res = runner.invoke(app, ["audit", str(manifest), "--schema", str(schema), "--strict"])
    assert res.exit_code == 0, res.output

    manifest, schema = _write(dirty_dir, _planted(dirty_dir))
    out = tmp_path / "audit.json"
    args = ["audit", str(manifest), "--schema", str(schema), "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output  # without --strict findings do not fail
    assert "dup_img" in res.output and "across splits and patients" in res.output
    saved = json.loads(out.read_text())
    assert saved["rows"] == N + 5 and saved["cross_split_groups"] == 4
    assert saved["cross_patient_groups"] == 3
    image = [g for g in saved["groups"] if g["modality"] == "image" and g["kind"] == "file"]
    assert [{m["sample_id"] for m in g["members"]} for g in image] == [{"s0", "dup_img"}]
    assert image[0]["patients"] == ["p0", "p6"] and image[0]["splits"] == ["test", "train"]

    res = runner.invoke(app, [*args, "--strict"])
    assert res.exit_code == 1
    assert "audit failed (--strict)" in res.output

    res = runner.invoke(app, [*args, "--no-near", "--split-column", "patient_id"])
    assert res.exit_code == 2 and "split value" in res.output  # patient ids are not splits
    res = runner.invoke(app, ["audit", str(manifest)])
    assert res.exit_code == 2 and "--schema" in res.output


def _sha_pairs(frame: pd.DataFrame) -> set[frozenset[str]]:
    """Pairs of sample ids whose image files have the same sha256 (hashlib, independent of medmodal)."""
    digest = frame["image"].map(lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest())
    return {
        frozenset(pair)
        for _, ids in frame.groupby(digest)["sample_id"]
        for pair in combinations(ids, 2)
    }


def _file_pairs(report: AuditReport, modality: str = "image") -> set[frozenset[str]]:
    return {
        frozenset(pair)
        for g in report.groups
        if g.modality == modality and g.kind == "file"
        for pair in combinations([m.sample_id for m in g.members], 2)
    }


@pytest.fixture(scope="module")
def covid(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    from medmodal.datasets.covid_cxr import CovidCXR

    if not (data_dir / "covid_cxr" / "metadata.csv").is_file():
        pytest.skip("covid_cxr data not in the data directory")
    out = tmp_path_factory.mktemp("covid_audit")
    return lambda target: CovidCXR().prepare(out / target, data_dir, target=target)


@pytest.mark.parametrize("target", ["finding", pytest.param("survival", marks=pytest.mark.slow)])
def test_covid_cxr_every_identical_image_pair_listed_and_merged(
    covid: Callable[[str], Any], target: str
) -> None:
    prepared = covid(target)
    frame = pd.read_csv(prepared.manifest, dtype=str, keep_default_na=False, na_values=[""])
    report = audit_manifest(prepared.manifest, prepared.schema)
    expected = _sha_pairs(frame)
    assert len(expected) == {"finding": 6, "survival": 5}[target]
    assert _file_pairs(report) == expected
    assert report.cross_patient == [] and report.unreadable == []
    patient = dict(zip(frame["sample_id"], frame["patient_id"], strict=True))
    assert all(len({patient[s] for s in pair}) == 1 for pair in expected)

    # Under the upstream patient ids the same pairs span two ids (the merge is what fixes them).
    raw = (
        Path(prepared.schema)
        .read_text()
        .replace("patient_column: patient_id", "patient_column: source_patientid")
    )
    before = audit_manifest(prepared.manifest, yaml.safe_load(raw), near_threshold=None)
    crossing = {
        frozenset(m.sample_id for m in g.members)
        for g in before.cross_patient
        if g.modality == "image"
    }
    source = dict(zip(frame["sample_id"], frame["source_patientid"], strict=True))
    assert crossing == {p for p in expected if len({source[s] for s in p}) == 2}
    assert len(crossing) == {"finding": 6, "survival": 5}[target]


def test_covid_cxr_near_identical_films_across_patients(covid: Callable[[str], Any]) -> None:
    """The re-encoded / recropped films the pHash finds across upstream ids are merged too."""
    prepared = covid("finding")
    frame = pd.read_csv(prepared.manifest, dtype=str, keep_default_na=False, na_values=[""])
    raw = (
        Path(prepared.schema)
        .read_text()
        .replace("patient_column: patient_id", "patient_column: source_patientid")
    )
    before = audit_manifest(prepared.manifest, yaml.safe_load(raw), modalities=["image"])
    near = [g for g in before.cross_patient if g.kind == "near"]
    assert {frozenset(m.patient_id for m in g.members) for g in near} == {
        frozenset({"97", "178"}),
        frozenset({"137", "202"}),
    }
    assert len(near) == 5  # four films of 97 / 178, one of 137 / 202
    for g in near:  # the decoded films really are close: recompute the distance
        a, b = (phash(read_image(m.file)) for m in g.members)
        assert int((a != b).sum()) == g.distance[0] <= NEAR_THRESHOLD
    patient = dict(zip(frame["sample_id"], frame["patient_id"], strict=True))
    assert all(len({patient[m.sample_id] for m in g.members}) == 1 for g in near)
