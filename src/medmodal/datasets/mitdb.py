"""MIT-BIH Arrhythmia Database (PhysioNet ``mitdb`` 1.0.0): one row per annotated heartbeat.

Each row is one beat of the 15 AAMI beat symbols, labelled with its AAMI class
(N: N,L,R,e,j; S: A,a,J,S; V: V,E; F: F; Q: /,f,Q), with two modalities:

* ``signal``: a segment reference ``<data>/mitdb/<record>#start:stop`` around the R peak
  (default 0.25 s before, 0.45 s after, native 360 Hz samples); the schema's processor takes
  lead MLII (V5 where MLII is absent: records 102, 104; record 114 has MLII as its *second*
  signal, found by name), band-passes 0.5-40 Hz on the whole record, resamples (default
  180 Hz) and z-scores each beat.
* ``rr``: RR-interval features in seconds from the beat annotation times (see
  :func:`rr_features`): pre-RR, post-RR, local average RR (10 surrounding intervals),
  record-average RR and the normalised ratios (pre/record, post/record, pre/post,
  local/record, pre/local). Normalised RR is what makes supraventricular (S) beats
  detectable across patients. The first / last beat of a record has no pre / post
  interval: the cell is empty and the tabular processor imputes it (training median) and
  adds a missing indicator. All columns are in the manifest; the ``rr`` modality uses the
  ratios only by default (``rr_columns="normalised"``): the raw intervals, and above all
  the record-average RR (constant per record), identify training patients, and on the DS1
  validation records they lowered V sensitivity; ``rr_columns="all"`` uses every column.
  The ratios divide by the record's mean RR (``rr_reference="record"``, offline) or by a
  causal running mean over the last ``rr_window`` seconds (``"running"``, 300 s).

Splits (``split=``):

* ``inter_patient`` (default): de Chazal et al. 2004 DS1 -> train (minus a fixed,
  record-grouped validation subset :data:`VAL_RECORDS`), DS2 -> test; the paced
  records 102, 104, 107, 217 are in neither set.
* ``random``: a seeded, stratified *beat-level* split (70/10/20). Beats of one patient
  land in train and test: this is **leaky** and optimistic; the schema declares each
  beat its own group (``patient_column: sample_id``) so the run is possible, and the
  manifest keeps the true ``patient_id``.
* ``none``: no split column (for patient-grouped ``cross_validate``).

Records 201 and 202 come from the same subject (202's header: "taken from the same analog
tape as record 201"); they share the patient id ``201+202``. de Chazal put 201 in DS1 and
202 in DS2, which leaks that subject across the sets; ``subject_201_202="drop_201"``
(default) leaves 201 out of training so that the test set is exactly de Chazal's DS2,
``"drop_202"`` keeps DS1 whole and leaves 202 out of the test set.

Every file used is checked against the SHA-256 values of PhysioNet's release
(``checksums/mitdb.sha256``); a missing, truncated or altered file is a
:class:`~medmodal.errors.DatasetError` naming it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from medmodal.data.schema import Schema
from medmodal.datasets.base import DATASETS, BuiltinDataset, DatasetInfo, Prepared
from medmodal.errors import DataError, DatasetError
from medmodal.options import Strict
from medmodal.utils.io import file_digest

SOURCE = (
    "PhysioNet MIT-BIH Arrhythmia Database 1.0.0 (https://physionet.org/content/mitdb/1.0.0/, "
    "DOI 10.13026/C2F305)"
)
CITATION = (
    "Moody G.B., Mark R.G. The impact of the MIT-BIH Arrhythmia Database. IEEE Eng Med Biol "
    "20(3):45-50 (2001). Goldberger A.L. et al. PhysioBank, PhysioToolkit, and PhysioNet. "
    "Circulation 101(23):e215-e220 (2000). Splits: de Chazal P., O'Dwyer M., Reilly R.B. "
    "Automatic classification of heartbeats using ECG morphology and heartbeat interval "
    "features. IEEE Trans Biomed Eng 51(7):1196-1206 (2004)."
)
CHECKSUMS = Path(__file__).with_name("checksums") / "mitdb.sha256"
FS = 360.0

RECORDS: tuple[str, ...] = (
    "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "111", "112",
    "113", "114", "115", "116", "117", "118", "119", "121", "122", "123", "124", "200",
    "201", "202", "203", "205", "207", "208", "209", "210", "212", "213", "214", "215",
    "217", "219", "220", "221", "222", "223", "228", "230", "231", "232", "233", "234",
)  # fmt: skip
# de Chazal P., O'Dwyer M., Reilly R.B., "Automatic classification of heartbeats using ECG
# morphology and heartbeat interval features", IEEE TBME 51(7):1196-1206, 2004: DS1 (training)
# and DS2 (testing), 22 records each; the paced records are in neither.
DS1: tuple[str, ...] = (
    "101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124",
    "201", "203", "205", "207", "208", "209", "215", "220", "223", "230",
)  # fmt: skip
DS2: tuple[str, ...] = (
    "100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212",
    "213", "214", "219", "221", "222", "228", "231", "232", "233", "234",
)  # fmt: skip
PACED: tuple[str, ...] = ("102", "104", "107", "217")
# Validation records (a record-grouped subset of DS1, fixed so every run sees the same set):
# they hold S, V and F beats (S 143, V 325, F 21) while training keeps 208 (most F beats) and
# 209 / 207 / 118 / 223 (most S beats). Never DS2: nothing is tuned on the test records.
VAL_RECORDS: tuple[str, ...] = ("114", "124", "205", "215", "220")
SAME_SUBJECT = {"201": "201+202", "202": "201+202"}

AAMI: dict[str, str] = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
}  # fmt: skip
# Beat annotations that delimit RR intervals: the AAMI symbols plus "!" (ventricular flutter
# wave, record 207), a WFDB beat code without an AAMI class.
RR_SYMBOLS = frozenset(AAMI) | {"!"}
RR_COLUMNS = [
    "pre_rr", "post_rr", "local_rr", "record_rr",
    "pre_rr_norm", "post_rr_norm", "pre_post_ratio", "local_rr_norm", "pre_local_ratio",
]  # fmt: skip
# The ratios only: free of each patient's heart rate, so the model cannot recognise training
# patients by their RR level (the record-average RR is constant per record).
RR_NORMALISED = [
    "pre_rr_norm",
    "post_rr_norm",
    "pre_post_ratio",
    "local_rr_norm",
    "pre_local_ratio",
]
LOCAL_INTERVALS = 10
RUNNING_SECONDS = 300.0  # a running reference RR: the mean over the last 5 minutes
SPLITS = ("inter_patient", "random", "none")


def rr_features(
    times: np.ndarray,
    local: int = LOCAL_INTERVALS,
    reference: str = "record",
    window: float = RUNNING_SECONDS,
) -> dict[str, np.ndarray]:
    """RR features (seconds / ratios) of every beat given all beat times of one record.

    ``pre_rr[i] = t[i] - t[i-1]`` (NaN for the first beat), ``post_rr[i] = t[i+1] - t[i]``
    (NaN for the last), ``local_rr[i]`` = mean of the ``local`` RR intervals around beat i
    (``local // 2`` ending at or before it, the rest after it; fewer at the record ends),
    ``record_rr`` = the patient's reference RR: with ``reference="record"`` the mean of all RR
    intervals of the record (offline: it uses future beats), with ``"running"`` the mean of the
    intervals ending in the ``window`` seconds up to and including beat i (causal; the first
    beat takes the first interval), and the ratios ``pre/record``, ``post/record``, ``pre/post``,
    ``local/record`` and ``pre/local`` (prematurity against the local rhythm). Dividing by the
    patient's own RR level is the standard inter-patient device (de Chazal et al. 2004;
    Mondéjar-Guerra et al. 2019 divide each RR feature by the record's average).
    """
    t = np.asarray(times, dtype=np.float64)
    n = len(t)
    rr = np.diff(t)
    pre = np.full(n, np.nan)
    post = np.full(n, np.nan)
    pre[1:] = rr
    post[:-1] = rr
    loc = np.full(n, np.nan)
    if len(rr):
        csum = np.concatenate([[0.0], np.cumsum(rr)])
        half = local // 2
        lo = np.clip(np.arange(n) - half, 0, len(rr))  # interval k = t[k+1] - t[k]
        hi = np.clip(np.arange(n) + (local - half), 0, len(rr))
        cnt = hi - lo
        loc = np.where(cnt > 0, (csum[hi] - csum[lo]) / np.maximum(cnt, 1), np.nan)
    avg: float | np.ndarray = float(rr.mean()) if len(rr) else math.nan
    if reference == "running":
        avg = running_mean_rr(t, window)
    rec = np.broadcast_to(np.asarray(avg, dtype=np.float64), (n,)).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "pre_rr": pre,
            "post_rr": post,
            "local_rr": loc,
            "record_rr": rec,
            "pre_rr_norm": pre / avg,
            "post_rr_norm": post / avg,
            "pre_post_ratio": pre / post,
            "local_rr_norm": loc / avg,
            "pre_local_ratio": pre / loc,
        }


def running_mean_rr(t: np.ndarray, window: float) -> np.ndarray:
    """Per beat i: the mean of the RR intervals ending in ``(t[i] - window, t[i]]`` (at least
    the interval ending at beat i); the first beat, which has none yet, takes the first
    interval (so its post-RR ratio exists)."""
    n = len(t)
    out = np.full(n, np.nan)
    if n < 2:
        return out
    rr = np.diff(t)  # rr[k] ends at beat k + 1
    csum = np.concatenate([[0.0], np.cumsum(rr)])
    ends = np.arange(1, n)
    first = np.searchsorted(t, t[ends] - window, side="right")  # first beat inside the window
    lo = np.minimum(np.maximum(first, 1) - 1, ends - 1)  # first interval index
    out[1:] = (csum[ends] - csum[lo]) / (ends - lo)
    out[0] = rr[0]
    return out


@lru_cache(maxsize=4)
def load_checksums(path: Path = CHECKSUMS) -> dict[str, str]:
    """File name -> SHA-256 from the packaged ``mitdb.sha256`` (``sha256sum`` format)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def _dataset_error(msg: str) -> DatasetError:
    return DatasetError(f"mitdb: {msg}. It comes from {SOURCE}.")


def check_record_files(folder: Path, record: str, verify: bool = True) -> None:
    """The record's ``.hea``, ``.dat`` and ``.atr`` exist, the ``.dat`` is long enough and (with
    ``verify``) every file has PhysioNet's SHA-256; otherwise a DatasetError naming the file."""
    sums = load_checksums()
    for ext in ("hea", "atr", "dat"):
        f = folder / f"{record}.{ext}"
        if not f.is_file():
            raise _dataset_error(
                f"file {f} is missing (record {record} needs {record}.hea, .dat and .atr; "
                "point data_dir / $MEDMODAL_DATA_DIR at the folder holding mitdb/)"
            )
    dat = folder / f"{record}.dat"
    need = _dat_bytes(folder / f"{record}.hea")
    have = dat.stat().st_size
    if need is not None and have < need:
        raise _dataset_error(f"file {dat} is truncated: {have} bytes, its header needs {need}")
    if not verify:
        return
    for ext in ("hea", "atr", "dat"):
        f = folder / f"{record}.{ext}"
        want = sums.get(f.name)
        if want is None:
            raise _dataset_error(f"file {f} is not part of the release (no known checksum)")
        got = file_digest(f, "sha256")
        if got != want:
            raise _dataset_error(
                f"file {f} is altered or incomplete (sha256 {got}, expected {want}); fetch it again"
            )


def _dat_bytes(hea: Path) -> int | None:
    """Bytes the header's signals need (format 212 etc.), or None when unknown."""
    from medmodal.data.readers.signal import import_wfdb

    wfdb = import_wfdb()

    from medmodal.data.readers.signal import WFDB_BITS

    try:
        h = wfdb.rdheader(str(hea.with_suffix("")))
    except Exception as exc:
        raise _dataset_error(f"file {hea} is not a readable WFDB header ({exc})") from None
    fmts = {str(f) for f in (h.fmt or [])}
    if not h.sig_len or len(fmts) != 1 or (fmt := fmts.pop()) not in WFDB_BITS:
        return None
    return math.floor(h.sig_len * h.n_sig * WFDB_BITS[fmt] / 8)


def _header_facts(hea: Path) -> dict[str, Any]:
    """Age and sex from the first header comment (``# 69 M 1085 1629 x1``; age -1 = unknown)."""
    age: float = math.nan
    sex: str | None = None
    for line in hea.read_text(errors="replace").splitlines():
        if line.startswith("#"):
            parts = line[1:].split()
            if len(parts) >= 2:
                try:
                    a = float(parts[0])
                    age = a if a >= 0 else math.nan
                except ValueError:
                    pass
                sex = parts[1] if parts[1] in ("M", "F") else None
            break
    return {"age": age, "sex": sex}


def record_beats(
    folder: Path,
    record: str,
    window: tuple[float, float] = (0.25, 0.45),
    n_samples: int = 650000,
    rr_reference: tuple[str, float] = ("record", RUNNING_SECONDS),
) -> pd.DataFrame:
    """Every AAMI-labelled beat of one record with its segment, RR features (``rr_reference``:
    the reference RR, ``record`` or ``running`` over that many seconds) and header facts."""
    from medmodal.data.readers.signal import read_annotations

    try:
        ann = read_annotations(folder / record, "atr")
    except DataError as err:
        raise _dataset_error(f"file {err.path}: {err.reason}") from None
    fs = float(ann.fs or FS)
    samples = np.asarray(ann.sample, dtype=np.int64)
    symbols = list(ann.symbol)
    beat_idx = np.array([i for i, s in enumerate(symbols) if s in RR_SYMBOLS], dtype=np.int64)
    rr = rr_features(samples[beat_idx] / fs, reference=rr_reference[0], window=rr_reference[1])
    keep = np.array([symbols[i] in AAMI for i in beat_idx], dtype=bool)
    idx = beat_idx[keep]
    before, after = round(window[0] * fs), round(window[1] * fs)
    width = before + after
    r = samples[idx]
    start = np.clip(r - before, 0, n_samples - width)
    base = str((folder / record).resolve())
    facts = _header_facts(folder / f"{record}.hea")
    frame = pd.DataFrame(
        {
            "sample_id": [f"{record}_{i:04d}" for i in idx],
            "patient_id": SAME_SUBJECT.get(record, record),
            "record": record,
            "symbol": [symbols[i] for i in idx],
            "label": [AAMI[symbols[i]] for i in idx],
            "r_sample": r,
            "window_shift": (r - before) - start,  # != 0 only within `before`/`after` of the ends
            "signal": [f"{base}#{s}:{s + width}" for s in start],
            **{c: rr[c][keep] for c in RR_COLUMNS},
            "age": facts["age"],
            "sex": facts["sex"],
        }
    )
    return frame


def _record_length(folder: Path, record: str) -> int:
    from medmodal.data.readers.signal import import_wfdb

    wfdb = import_wfdb()

    return int(wfdb.rdheader(str(folder / record)).sig_len)


class MITDBOptions(Strict):
    """Options of ``medmodal datasets prepare mitdb`` (see the module doc): ``records``
    restricts to a subset (tests), ``limit`` keeps the first N beats of each split (demos);
    ``download`` is not offered: the files come from PhysioNet."""

    split: str = "inter_patient"
    records: Sequence[str | int] | None = None
    include_q: bool = False
    exclude_paced: bool = True
    subject_201_202: str = "drop_201"
    window: Sequence[float] = (0.25, 0.45)
    fs: float | None = 180.0
    standardize: str = "record"
    demographics: bool = False
    rr_columns: str = "normalised"
    rr_reference: Literal["record", "running"] = "record"
    templates: bool = False
    rr_window: float = Field(default=RUNNING_SECONDS, gt=0)
    val_records: Sequence[str | int] | None = None
    seed: int = 0
    verify: bool = True
    limit: int | None = None
    download: bool = False


def check_options(o: MITDBOptions) -> None:
    """DatasetError for values the options model cannot refuse on its own."""
    if o.download:
        raise _dataset_error(
            "medmodal does not download mitdb; fetch the 1.0.0 release (e.g. "
            "`wget -r -np https://physionet.org/files/mitdb/1.0.0/`) into <data_dir>/mitdb"
        )
    if o.split not in SPLITS:
        raise DatasetError(f"mitdb: split must be one of {SPLITS}, got {o.split!r}")
    if o.rr_columns not in ("normalised", "all"):
        raise DatasetError(f"mitdb: rr_columns must be 'normalised' or 'all', got {o.rr_columns!r}")
    if o.subject_201_202 not in ("drop_201", "drop_202"):
        raise DatasetError("mitdb: subject_201_202 must be 'drop_201' or 'drop_202'")
    if o.split == "inter_patient" and not o.exclude_paced:
        raise DatasetError(
            "mitdb: the paced records 102, 104, 107, 217 are in neither DS1 nor DS2; "
            "use exclude_paced=True or split='random' / 'none'"
        )
    window = o.window
    if len(window) != 2 or min(window) < 0 or sum(window) <= 0:
        raise DatasetError(f"mitdb: window must be [seconds before, seconds after], got {window}")


def select_records(o: MITDBOptions) -> tuple[list[str], dict[str, str], tuple[str, ...]]:
    """The records to read, those left out (record -> why) and the validation records."""
    wanted = list(RECORDS) if o.records is None else [str(r) for r in o.records]
    unknown_recs = sorted(set(wanted) - set(RECORDS))
    if unknown_recs:
        raise DatasetError(f"mitdb: {unknown_recs} are not MIT-BIH Arrhythmia records")
    val = tuple(str(r) for r in (VAL_RECORDS if o.val_records is None else o.val_records))
    if o.split == "inter_patient" and set(val) - set(DS1):
        raise DatasetError(
            f"mitdb: val_records must be DS1 records, got {sorted(set(val) - set(DS1))}"
        )
    dropped: dict[str, str] = {}
    if o.exclude_paced:
        dropped.update({r: "paced" for r in PACED if r in wanted})
    if o.split == "inter_patient":
        gone = "201" if o.subject_201_202 == "drop_201" else "202"
        if gone in wanted:
            dropped[gone] = "same subject as 20" + ("2 (DS2)" if gone == "201" else "1 (DS1)")
    used = [r for r in wanted if r not in dropped]
    if not used:
        raise DatasetError(f"mitdb: no record left to prepare (asked for {wanted})")
    return used, dropped, val


def read_beats(folder: Path, records: list[str], o: MITDBOptions) -> pd.DataFrame:
    """Every AAMI beat of ``records``, each record's files checked first."""
    frames = []
    win = (float(o.window[0]), float(o.window[1]))
    reference = (o.rr_reference, float(o.rr_window))
    for r in records:
        check_record_files(folder, r, o.verify)
        frames.append(record_beats(folder, r, win, _record_length(folder, r), reference))
    return pd.concat(frames, ignore_index=True)


def label_beats(
    frame: pd.DataFrame, o: MITDBOptions, val: tuple[str, ...]
) -> tuple[pd.DataFrame, str]:
    """Q beats left out (unless ``include_q``), the split column, ``limit``; returns the frame
    and the schema's patient column."""
    if not o.include_q:
        frame = frame[frame["label"] != "Q"].reset_index(drop=True)
    patient_column = "patient_id"
    if o.split == "inter_patient":
        frame["split"] = [
            "test" if r in DS2 else ("val" if r in val else "train") for r in frame["record"]
        ]
    elif o.split == "random":
        frame["split"] = _random_split(frame["label"].to_numpy(), o.seed)
        patient_column = "sample_id"  # leaky on purpose: beats treated as independent
    if o.limit is not None:
        keys = frame["split"] if "split" in frame else pd.Series("all", index=frame.index)
        frame = frame[frame.groupby(keys).cumcount() < int(o.limit)].reset_index(drop=True)
    return frame, patient_column


def signal_preprocess(o: MITDBOptions) -> dict[str, Any]:
    """The beat window's processing: MLII (V5 where absent), 0.5-40 Hz, ``fs``, its length."""
    seconds = float(o.window[0]) + float(o.window[1])
    pp: dict[str, Any] = {
        "leads": ["MLII", "V5"], "lead_fallback": True, "bandpass": [0.5, 40],
        "length": round(seconds * (o.fs or FS)),
    }  # fmt: skip
    if o.fs:
        pp["fs"] = float(o.fs)
    return pp


def write_templates(frame: pd.DataFrame, folder: Path, o: MITDBOptions) -> list[str]:
    """Per record, its median beat (``templates/<record>.npy``): the median over every annotated
    beat's window of the processed lead, labels unused, on the scale ``standardize`` gives the
    beats (``source``: the record's mean / std; ``record``: its own z-score). Offline, like the
    record-average RR: it uses the whole record. Returns each beat's template path."""
    from medmodal.data.preprocess.signal import SignalProcessor
    from medmodal.data.schema import ModalitySpec

    pp = {**signal_preprocess(o), "standardize": "none"}

    def processor(**drop: Any) -> SignalProcessor:
        opts = {k: v for k, v in pp.items() if k not in drop}
        return SignalProcessor("signal", ModalitySpec(type="signal", column="ref", preprocess=opts))

    beat, record_proc = processor(), processor(length=None)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for record, refs in frame.groupby("record")["signal"]:
        beats = np.stack([beat.read({"ref": r}, None) for r in refs])  # (n, 1, L)
        template = np.median(beats, axis=0)
        if o.standardize == "source":
            whole_ref = {"ref": str(refs.iloc[0]).split("#")[0]}
            whole = record_proc.read(whole_ref, None).astype(np.float64)
            template = (template - whole.mean(axis=1, keepdims=True)) / whole.std(
                axis=1, keepdims=True
            )
        elif o.standardize == "record":
            template = (template - template.mean()) / max(float(template.std()), 1e-6)
        np.save(folder / f"{record}.npy", template.astype(np.float32))
        paths[str(record)] = str((folder / f"{record}.npy").resolve())
    return [paths[str(r)] for r in frame["record"]]


class MITBIH(BuiltinDataset):
    info = DatasetInfo(
        name="mitdb",
        title="MIT-BIH Arrhythmia Database: heartbeats, AAMI classes N/S/V/F (Q optional)",
        task="multiclass",
        modalities={
            "signal": "ECG beat window around the R peak (MLII, V5 fallback), 0.5-40 Hz",
            "rr": "tabular RR-interval features (pre/post/local/record average and ratios)",
        },
        size="48 half-hour 2-lead records, 47 subjects, 109494 AAMI beats (100674 N/S/V/F "
        "beats in the 44 non-paced records)",
        source=SOURCE,
        citation=CITATION,
        licence="ODC-By 1.0 (open access on PhysioNet)",
        pairing="paired: each beat has its waveform and its RR features",
        notes="Inter-patient split of de Chazal et al. 2004 (DS1 train / DS2 test), paced records "
        "excluded; records 201 and 202 are one subject (patient id 201+202). split=random is a "
        "leaky beat-level split, for comparison only.",
    )

    def locate(self, data_dir: Path | None) -> Path:
        if data_dir is None:
            raise _dataset_error(
                "no data directory; pass --data-dir or set $MEDMODAL_DATA_DIR to the folder that "
                "holds mitdb/"
            )
        data_dir = Path(data_dir)
        for c in (data_dir / "mitdb", data_dir):
            if (c / "RECORDS").is_file() or any(c.glob("[12][0-9][0-9].hea")):
                return c
        raise _dataset_error(f"no MIT-BIH records in {data_dir / 'mitdb'} (nor in {data_dir})")

    def write(self, out_dir: Path, data_dir: Path | None, options: MITDBOptions) -> Prepared:
        """Write ``manifest.csv`` + ``schema.yaml``: check the options, select the records,
        read and verify their beats, label and split them, write (see :class:`MITDBOptions`)."""
        o = options
        check_options(o)
        folder = self.locate(data_dir)
        used, dropped, val = select_records(o)
        frame = read_beats(folder, used, o)
        n_q = int((frame["label"] == "Q").sum())
        out_dir.mkdir(parents=True, exist_ok=True)
        if o.templates:
            frame["template"] = write_templates(frame, out_dir / "templates", o)
        frame, patient_column = label_beats(frame, o, val)
        manifest = out_dir / "manifest.csv"
        frame.to_csv(manifest, index=False)
        classes = ["N", "S", "V", "F"] + (["Q"] if o.include_q else [])
        schema = self.schema(classes, o.split != "none", patient_column, o)
        schema_path = out_dir / "schema.yaml"
        schema.save(schema_path)
        facts = self._facts(frame, used, dropped, n_q, o.include_q, o.split)
        return Prepared(manifest, schema_path, facts)

    @staticmethod
    def schema(
        classes: list[str], with_split: bool, patient_column: str, o: MITDBOptions
    ) -> Schema:
        signal_pp = {**signal_preprocess(o), "standardize": o.standardize}
        if o.templates:
            signal_pp["reference_column"] = "template"
        rr_columns = RR_NORMALISED if o.rr_columns == "normalised" else RR_COLUMNS
        demographics = o.demographics
        modalities: dict[str, Any] = {
            "signal": {"type": "signal", "column": "signal", "allow_missing": False,
                       "preprocess": signal_pp},
            "rr": {"type": "tabular", "columns": list(rr_columns), "allow_missing": False,
                   "preprocess": {"indicators": "auto"}},
        }  # fmt: skip
        if demographics:
            modalities["demographics"] = {
                "type": "tabular",
                "columns": ["age", "sex"],
                "categorical": ["sex"],
            }
        spec: dict[str, Any] = {
            "id_column": "sample_id",
            "patient_column": patient_column,
            "target": {"task": "multiclass", "column": "label", "classes": classes},
            "modalities": modalities,
        }
        if with_split:
            spec["split_column"] = "split"
        return Schema.load(spec)

    @staticmethod
    def _facts(
        frame: pd.DataFrame,
        used: list[str],
        dropped: dict[str, str],
        n_q: int,
        include_q: bool,
        split: str,
    ) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        if "split" in frame:
            for s, g in frame.groupby("split"):
                counts[str(s)] = {k: int(v) for k, v in Counter(g["label"]).items()}
        return {
            "rows": len(frame),
            "records": used,
            "records_per_split": {
                str(s): sorted(set(g["record"])) for s, g in frame.groupby("split")
            }
            if "split" in frame
            else {},
            "records_left_out": dropped,
            "q_beats": n_q,
            "q_beats_left_out": 0 if include_q else n_q,
            "labels": {k: int(v) for k, v in Counter(frame["label"]).items()},
            "labels_per_split": counts,
            "windows_shifted_inside_record": int((frame["window_shift"] != 0).sum()),
            "missing_pre_rr": int(frame["pre_rr"].isna().sum()),
            "missing_post_rr": int(frame["post_rr"].isna().sum()),
            "split": split,
            "leaky": split == "random",
        }


def _random_split(labels: np.ndarray, seed: int, val: float = 0.1, test: float = 0.2) -> list[str]:
    """Stratified beat-level train/val/test (LEAKY: ignores patients)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_test, n_val = round(test * len(idx)), round(val * len(idx))
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "val"
        out[idx[n_test + n_val :]] = "train"
    return out.tolist()


DATASETS.register("mitdb", options=MITDBOptions)(MITBIH)
