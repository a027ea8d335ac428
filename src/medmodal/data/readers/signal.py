"""Biosignal reader: WFDB records, ``.npy`` and ``.csv`` files, and windows of them.

A reference is a path, optionally followed by a **segment** ``#start:stop`` (sample
indices at the native rate, ``stop`` exclusive; either end may be left out):
``mitdb/100#1000:1360``. A beat data set reads ~100k windows from 48 records, so a
whole record is decoded once per process and kept in a byte-bounded LRU cache
keyed by its path (and the header file's size and mtime).

* WFDB: the record name without extension, or its ``.hea`` / ``.dat`` path; read
  with ``wfdb.rdrecord`` in physical units (``uV`` and ``V`` are converted to mV).
* ``.npy``: a (C, T) or (T, C) array (the longer axis is time); ``fs`` is required.
* ``.csv``: one numeric column per lead, the header row names the leads; ``fs`` required.

The formats are entries of :data:`SIGNAL_FORMATS` (a :class:`~medmodal.registry.Registry`), each
declaring its suffixes, a content sniffer and a priority (:class:`SignalFormat`). A path is read
by the format that claims its suffix; a file with another suffix by its content; a reference
that is no file (``mitdb/100``) is a WFDB record name. An upload (:class:`Blob`) is read by
content only. Every failure is a :class:`~medmodal.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.data.readers.blob import Blob, Source
from medmodal.data.readers.budget import check_decode, load_npy
from medmodal.errors import ConfigError, DataError
from medmodal.registry import Registry

SEGMENT_RE = re.compile(r"^(\d*):(\d*)$")
WFDB_SUFFIXES = (".hea", ".dat")
# The record line of a WFDB header: "name[/n_segments] n_signals [fs ...]"
WFDB_RECORD_LINE = re.compile(r"^[\w.+-]+(/\d+)?[ \t]+\d+([ \t]|$)")
HEAD_BYTES = 1024  # what the sniffers see of a file or an upload
RECORD_NAMES = "wfdb"  # the format of a reference that is no file (``mitdb/100``)
# Bits per sample of the WFDB storage formats (for the truncated-file check).
WFDB_BITS: dict[str, float] = {
    "8": 8,
    "16": 16,
    "24": 24,
    "32": 32,
    "61": 16,
    "80": 8,
    "160": 16,
    "212": 12,
    "310": 32 / 3,
    "311": 32 / 3,
}
TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}
MAX_LEADS = 1024  # more columns than this is no signal (a CSV's header is checked first)
# Peak bytes per sample beyond the stored ones: float32 copies, then the processor's float64
# band-pass and resampling temporaries.
BYTES_PER_SAMPLE = 48
DEFAULT_CACHE_MB = float(os.environ.get("MEDMODAL_SIGNAL_CACHE_MB", 1024))

Leads = Sequence[str | int | Sequence[str | int]] | str | int | None


@dataclass(frozen=True)
class Record:
    """A decoded signal: ``signal`` (C, T) float32 (read-only), rate and lead names."""

    signal: np.ndarray
    fs: float
    names: list[str]
    path: str

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])


class ByteLRU:
    """A thread-safe LRU cache bounded by the total bytes of its values."""

    def __init__(self, max_mb: float = DEFAULT_CACHE_MB) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if nbytes > self.max_bytes:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self._bytes -= n

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


RECORD_CACHE = ByteLRU()


# -- references -------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_wfdb() -> Iterator[None]:
    """Silence wfdb's own pandas deprecation warnings (wfdb's noise, not the user's)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The inplace keyword", module="wfdb")
        yield


def import_wfdb() -> Any:
    """``import wfdb`` without its import-time pandas deprecation warnings."""
    with _quiet_wfdb():
        import wfdb

    return wfdb


def parse_ref(ref: str | Path) -> tuple[str, int | None, int | None]:
    """Split ``path#start:stop`` into (path, start, stop); no segment gives (path, None, None)."""
    text = str(ref)
    path, sep, tail = text.rpartition("#")
    if sep and (m := SEGMENT_RE.match(tail.strip())):
        start = int(m.group(1)) if m.group(1) else None
        stop = int(m.group(2)) if m.group(2) else None
        return path, start, stop
    return text, None, None


def window_bounds(start: int | None, stop: int | None, n: int, path: str) -> tuple[int, int]:
    """Resolve a segment against a record of ``n`` samples; DataError when out of bounds."""
    s = 0 if start is None else start
    e = n if stop is None else stop
    if not 0 <= s < e <= n:
        raise DataError(f"window {s}:{e} out of bounds for a record of {n} samples", path=path)
    return s, e


# -- public API -------------------------------------------------------------------------
def read_signal(
    ref: str | Path,
    leads: Leads = None,
    *,
    lead_fallback: bool = False,
    fs: float | None = None,
    lead_names: Sequence[str] | None = None,
    cache: bool = True,
) -> tuple[np.ndarray, float, list[str]]:
    """Read a signal (or a ``#start:stop`` window of it) as float32 (C, T), fs, lead names.

    ``leads``: names (case-insensitive) or indices, in output order; a missing one is a
    DataError listing the record's leads. With ``lead_fallback`` the list is a priority
    order and the first lead present is returned (one channel); a nested list
    (``[["MLII", "V5"], "V1"]``) gives a priority group per output channel.
    ``fs`` / ``lead_names`` describe ``.npy`` / ``.csv`` files (WFDB headers carry them).
    """
    path, start, stop = parse_ref(ref)
    rec = load_record(path, fs=fs, lead_names=lead_names, cache=cache)
    idx = select_leads(rec.names, leads, lead_fallback, rec.path)
    s, e = window_bounds(start, stop, rec.n_samples, rec.path)
    x = np.array(rec.signal[idx, s:e], dtype=np.float32)
    check_finite(x, [rec.names[i] for i in idx], rec.path)
    return x, rec.fs, [rec.names[i] for i in idx]


def load_record(
    path: str | Path | Blob,
    *,
    fs: float | None = None,
    lead_names: Sequence[str] | None = None,
    cache: bool = True,
) -> Record:
    """The whole record at ``path`` (no segment), from the LRU cache when possible; an upload
    (:class:`Blob`) is read by content as ``.npy`` or ``.csv`` and never cached."""
    if isinstance(path, Blob):  # what the client said of the upload wins
        fs, lead_names = path.fs or fs, path.leads or lead_names
        return SIGNAL_FORMATS.get(upload_format(path))(path, fs, lead_names)
    name, file = locate(Path(path))
    key = (*record_key(path), fs, tuple(lead_names or ()))
    if cache and (hit := RECORD_CACHE.get(key)) is not None:
        return hit
    rec = SIGNAL_FORMATS.get(name)(file, fs, lead_names)
    rec.signal.flags.writeable = False
    if cache:
        RECORD_CACHE.put(key, rec, rec.signal.nbytes)
    return rec


def record_key(path: str | Path) -> tuple[str, int, int]:
    """(resolved file, size, mtime) identifying a record's current contents, for caches;
    WFDB records by their header. DataError when the file is missing."""
    _, file = locate(Path(path))
    stat = file.stat()
    return os.path.abspath(file), stat.st_size, stat.st_mtime_ns


def select_leads(available: Sequence[str], leads: Leads, fallback: bool, path: str) -> list[int]:
    """Indices of the requested leads (see :func:`read_signal`)."""
    if leads is None:
        return list(range(len(available)))
    items = [leads] if isinstance(leads, (str, int)) else list(leads)
    if fallback and all(isinstance(g, (str, int)) for g in items):
        groups = [items]
    else:
        groups = [[g] if isinstance(g, (str, int)) else list(g) for g in items]
    lower = [n.strip().lower() for n in available]
    out = []
    for group in groups:
        idx = next((i for g in group if (i := _lead_index(g, lower)) is not None), None)
        if idx is None:
            want = " or ".join(str(g) for g in group)
            raise DataError(
                f"lead {want} not in the record; it has leads {list(available)}", path=path
            )
        out.append(idx)
    return out


def check_finite(x: np.ndarray, names: Sequence[str], path: str) -> None:
    """DataError when any sample is NaN or infinite (names the leads)."""
    bad = ~np.isfinite(x)
    if bad.any():
        leads = [names[i] for i in np.flatnonzero(bad.any(axis=1))]
        raise DataError(f"{int(bad.sum())} NaN/Inf samples in lead(s) {leads}", path=path)


def read_annotations(
    record_path: str | Path,
    extension: str = "atr",
    sampfrom: int = 0,
    sampto: int | None = None,
) -> Any:
    """A WFDB annotation file (``wfdb.Annotation``): ``.sample``, ``.symbol``, ``.aux_note``.

    ``record_path`` is the record name, or a path with a ``.hea``/``.dat``/``.<extension>``
    suffix. A missing, empty or corrupt file is a DataError naming it.
    """
    wfdb = import_wfdb()

    base = _strip_suffix(Path(str(record_path)), (*WFDB_SUFFIXES, f".{extension}"))
    file = base.with_name(f"{base.name}.{extension}")
    if not file.is_file():
        raise DataError("annotation file not found", path=file)
    if file.stat().st_size == 0:
        raise DataError("empty annotation file (0 bytes)", path=file)
    try:
        with _quiet_wfdb():
            ann = wfdb.rdann(str(base), extension, sampfrom=sampfrom, sampto=sampto)
    except Exception as exc:  # wfdb raises ValueError/IndexError/... on garbage
        raise DataError(f"corrupt annotation file: {_first_line(exc)}", path=file) from None
    samples = np.asarray(ann.sample)
    if len(samples) != len(ann.symbol) or (
        samples.size and (samples.min() < 0 or np.any(np.diff(samples) < 0))
    ):
        raise DataError("corrupt annotation file: sample positions are not increasing", path=file)
    return ann


# -- formats ----------------------------------------------------------------------------
Loader = Callable[[Source, float | None, Sequence[str] | None], Record]


@dataclass(frozen=True)
class SignalFormat:
    """What a signal format declares where it is registered (its registry capabilities)."""

    suffixes: tuple[str, ...]  # lower case, with the dot
    sniff: Callable[[bytes], bool]  # recognises the first HEAD_BYTES of a file or an upload
    locate: Callable[[Path], Path]  # the file a path's record is read from; DataError if missing
    upload_error: str | None = None  # why an upload of this content cannot be read (None: it can)


# ``fn(file_or_blob, fs, lead_names) -> Record``, the file as :func:`locate` found it.
SIGNAL_FORMATS: Registry[Record] = Registry("signal format")


def signal_format(name: str, fmt: SignalFormat, priority: int) -> Callable[[Loader], Loader]:
    """Register a loader; a higher ``priority`` sniffs first."""
    return SIGNAL_FORMATS.register(name, priority=priority, capabilities=fmt)


def locate(path: Path) -> tuple[str, Path]:
    """(format, file to read and stat): by a claimed suffix, else an existing file by its
    content, else a WFDB record name (located by its header)."""
    suffix = path.suffix.lower()
    names = SIGNAL_FORMATS.ordered()
    name = next((n for n in names if suffix in _format(n).suffixes), None)
    if name is None and path.is_file():
        head = _head(path)
        name = next((n for n in names if _format(n).sniff(head)), None)
    name = name or RECORD_NAMES
    return name, _format(name).locate(path)


def upload_format(blob: Blob) -> str:
    """The format of an upload, by its content only (a WFDB header with its signal files)."""
    head = blob.data[:HEAD_BYTES]
    for name in SIGNAL_FORMATS.ordered():
        fmt = _format(name)
        if fmt.sniff(head):
            if fmt.upload_error and not blob.files:
                raise DataError(fmt.upload_error, path=blob)
            return name
    raise DataError(
        "not a .npy array or CSV text by its content (nor a WFDB header)",
        path=blob,
    )


def _format(name: str) -> SignalFormat:
    return SIGNAL_FORMATS.capabilities(name)


def _head(path: Path, n: int = HEAD_BYTES) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _is_wfdb_header(head: bytes) -> bool:
    """Text whose first line that is not a comment is a WFDB record line."""
    if b"\x00" in head:
        return False
    lines = (x.strip() for x in head.decode("latin-1").splitlines())
    first = next((x for x in lines if x and not x.startswith("#")), "")
    return bool(WFDB_RECORD_LINE.match(first))


def _is_text(head: bytes) -> bool:
    return b"\x00" not in head


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError("signal file not found", path=path)
    return path


def _wfdb_header(path: Path) -> Path:
    hea = _strip_suffix(path, WFDB_SUFFIXES)
    hea = hea.with_name(hea.name + ".hea")
    if not hea.is_file():
        raise DataError("WFDB header (.hea) not found", path=hea)
    return hea


def _strip_suffix(path: Path, suffixes: Sequence[str]) -> Path:
    return path.with_suffix("") if path.suffix.lower() in suffixes else path


# Priorities: the .npy magic is exact (never text); a WFDB header is text too, so its record
# line is checked before CSV, which takes any text without NUL bytes (the last resort).
NPY = SignalFormat((".npy",), lambda head: head.startswith(b"\x93NUMPY"), _existing_file)
WFDB = SignalFormat(
    WFDB_SUFFIXES,
    _is_wfdb_header,
    _wfdb_header,
    upload_error="a WFDB header by its content, without its signal files: send the files it "
    "names in the same part, or upload the signal as .npy or .csv",
)
CSV = SignalFormat((".csv",), _is_text, _existing_file)


@signal_format("wfdb", WFDB, priority=20)
def _wfdb_record(hea: Source, fs: float | None, lead_names: Sequence[str] | None) -> Record:
    """WFDB record (header + signal files), physical units in mV; rate and leads from the header."""
    if isinstance(hea, Blob):  # a header upload with its signal files (``Blob.files``)
        from medmodal.data.readers.wfdb_upload import read_wfdb_upload

        x, rate, names = read_wfdb_upload(hea)
        return Record(x, rate, names, str(hea))
    return _load_wfdb(hea.with_suffix(""))


def _load_wfdb(base: Path) -> Record:
    wfdb = import_wfdb()

    hea = base.with_name(base.name + ".hea")
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:
        raise DataError(f"unreadable WFDB header: {_first_line(exc)}", path=hea) from None
    if isinstance(header, wfdb.Record):
        _check_dat_files(header, base)
    try:
        rec = wfdb.rdrecord(str(base), physical=True, return_res=32)
    except FileNotFoundError as exc:
        raise DataError("WFDB signal file not found", path=exc.filename or base) from None
    except Exception as exc:
        raise DataError(f"cannot decode WFDB record: {_first_line(exc)}", path=base) from None
    sig = rec.p_signal
    if sig is None or sig.ndim != 2 or sig.shape[1] == 0:
        raise DataError("WFDB record holds no signal", path=base)
    if header.sig_len and sig.shape[0] != header.sig_len:
        raise DataError(
            f"truncated WFDB record: decoded {sig.shape[0]} samples, header says {header.sig_len}",
            path=base,
        )
    scale = np.array([TO_MV.get(str(u).strip().lower(), 1.0) for u in (rec.units or [])] or 1.0)
    x = np.ascontiguousarray((sig * scale).T, dtype=np.float32)
    names = [str(n) for n in (rec.sig_name or range(x.shape[0]))]
    return Record(x, float(rec.fs), names, str(base))


def wfdb_signal_files(hea: Path) -> list[str]:
    """The signal file names a single-segment WFDB header lists, in order, without repeats
    (e.g. ``["02000_lr_1.dat", "02000_lr_2.dat"]`` for a FLAC record with two files). Reads
    only the header text (fast for thousands of records); a DataError names a bad header."""
    try:
        lines = [x.strip() for x in hea.read_text(errors="strict").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable WFDB header: {exc}", path=hea) from None
    lines = [x for x in lines if x and not x.startswith("#")]
    fields = lines[0].split() if lines else []
    if len(fields) < 2 or "/" in fields[1] or not fields[1].isdigit():
        what = (
            "a multi-segment record" if len(fields) > 1 and "/" in fields[1] else "no record line"
        )
        raise DataError(f"WFDB header: {what} (expected 'name n_signals ...')", path=hea)
    n_sig = int(fields[1])
    if len(lines) < 1 + n_sig:
        raise DataError(
            f"WFDB header lists {n_sig} signals but has {len(lines) - 1} lines", path=hea
        )
    return list(dict.fromkeys(line.split()[0] for line in lines[1 : 1 + n_sig]))


def _check_dat_files(header: Any, base: Path) -> None:
    """Every signal file exists and is long enough for the header's ``sig_len``."""
    for fname in dict.fromkeys(header.file_name or []):
        file = base.parent / fname
        if not file.is_file():
            raise DataError("WFDB signal file (.dat) not found", path=file)
        sigs = [i for i, f in enumerate(header.file_name) if f == fname]
        fmts = {str(header.fmt[i]) for i in sigs}
        if not header.sig_len or len(fmts) != 1 or (fmt := fmts.pop()) not in WFDB_BITS:
            continue
        per_frame = sum(int((header.samps_per_frame or [1] * len(sigs))[i] or 1) for i in sigs)
        offset = int((header.byte_offset or [0] * header.n_sig)[sigs[0]] or 0)
        need = offset + math.floor(header.sig_len * per_frame * WFDB_BITS[fmt] / 8)
        have = file.stat().st_size
        if have < need:
            raise DataError(
                f"truncated signal file: {have} bytes, the header's {header.sig_len} samples "
                f"need {need}",
                path=file,
            )


def _orient(arr: np.ndarray, path: Source) -> np.ndarray:
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"expected a (C, T) or (T, C) array, got shape {arr.shape}", path=path)
    return arr if arr.shape[0] <= arr.shape[1] else arr.T


def _need_fs(fs: float | None, path: Source) -> float:
    if fs is None or fs <= 0:
        raise ConfigError(f"{path}: .npy/.csv signals carry no sampling rate; set input_fs")
    return float(fs)


@signal_format("npy", NPY, priority=30)
def _load_npy(path: Source, fs: float | None, lead_names: Sequence[str] | None) -> Record:
    """A (C, T) or (T, C) numeric array (the longer axis is time); ``fs`` required. Its
    header is checked against the decode limits before the array is read."""
    rate = _need_fs(fs, path)
    try:
        with path.open() if isinstance(path, Blob) else open(path, "rb") as fh:
            arr = load_npy(fh, lambda shape, dtype: _check_samples(shape, dtype, path))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"unreadable .npy: {_first_line(exc)}", path=path) from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise DataError("the .npy file does not hold a numeric array", path=path)
    if np.iscomplexobj(arr):
        raise DataError("the .npy file holds complex numbers, not a signal", path=path)
    x = np.ascontiguousarray(_orient(arr, path), dtype=np.float32)
    return Record(x, rate, _lead_names(lead_names, x.shape[0], path), str(path))


def _check_samples(shape: tuple[int, ...], dtype: np.dtype, path: Source) -> None:
    if not 1 <= len(shape) <= 2:
        raise DataError(f"expected a (C, T) or (T, C) array, got shape {shape}", path=path)
    if len(shape) == 2 and min(shape) > MAX_LEADS:
        raise DataError(f"array of shape {shape}: more than {MAX_LEADS} leads", path=path)
    count = math.prod(shape)
    nbytes = count * (dtype.itemsize + BYTES_PER_SAMPLE)
    check_decode("samples", count, nbytes, path, f"{' x '.join(map(str, shape))} signal")


def _lead_names(given: Sequence[str] | None, n: int, path: Source) -> list[str]:
    names = [str(v) for v in given] if given else [str(i) for i in range(n)]
    if len(names) != n:
        raise DataError(f"{n} leads in the file, {len(names)} lead names given", path=path)
    return names


@signal_format("csv", CSV, priority=10)
def _load_csv(path: Source, fs: float | None, lead_names: Sequence[str] | None = None) -> Record:
    """One numeric column per lead, named by the header row; ``fs`` required. The header's
    column count and the number of values are checked before pandas parses the text."""
    import pandas as pd

    rate = _need_fs(fs, path)
    data = path.data if isinstance(path, Blob) else None
    head = data[: HEAD_BYTES * 64] if data is not None else _head(path, HEAD_BYTES * 64)
    columns = head.split(b"\n", 1)[0].count(b",") + 1
    if columns > MAX_LEADS:
        raise DataError(f"a signal .csv has at most {MAX_LEADS} columns; this has {columns}",
                        path=path)  # fmt: skip
    size = len(data) if data is not None else _size(path)
    count = size // 2 + 1  # each value takes a digit and a separator at least
    check_decode("samples", count, count * (8 + BYTES_PER_SAMPLE), path, f"{size:,}-byte CSV")
    try:
        df = pd.read_csv(path.open() if isinstance(path, Blob) else path)
    except Exception as exc:
        raise DataError(f"unreadable .csv: {_first_line(exc)}", path=path) from None
    bad = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad or df.empty:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"a signal .csv needs numeric columns only; non-numeric: [{shown}]", path=path
        )
    x = np.ascontiguousarray(df.to_numpy(dtype=np.float32).T)
    return Record(x, rate, [str(c) for c in df.columns], str(path))


def _size(path: Source) -> int:
    try:
        return Path(str(path)).stat().st_size
    except OSError:
        return 0


def _lead_index(want: str | int, lower: Sequence[str]) -> int | None:
    if isinstance(want, (int, np.integer)) and not isinstance(want, bool):
        return int(want) if 0 <= want < len(lower) else None
    key = str(want).strip().lower()
    return lower.index(key) if key in lower else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
