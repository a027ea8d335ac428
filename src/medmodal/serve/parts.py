"""Multipart parts -> a row of raw inputs the Predictor's processors read, and a digest per part.

One part per modality, named as the model's schema names it: record fields as a JSON object
(:mod:`.records`), a note as UTF-8 text, any other modality as a file (DICOM de-identified on
arrival, before anything else sees it). A signal part may be a ``.npy`` / CSV file, or a WFDB
header sent together with the signal files it names (several files under the part's name); a
``.npy`` signal's lead names come from a ``<part>.leads`` field (``MLII,V5``), else from the
checkpoint's lead order when the file has as many leads as the model reads, and its rate from
a ``<part>.fs`` field, else the checkpoint's.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from medmodal.data.readers.blob import Blob
from medmodal.data.readers.budget import npy_header
from medmodal.errors import DataError
from medmodal.predictor import Predictor
from medmodal.serve.deid import deidentify_bytes, is_dicom
from medmodal.serve.limits import BadRequest, Part
from medmodal.serve.records import parse_record

SIGNAL_OPTIONS = ("leads", "fs")  # ``<signal part>.<option>`` fields


def parse_parts(
    predictor: Predictor, parts: dict[str, Part], allow_burned_in: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """A row of raw inputs (Blobs, record fields) and the SHA-256 of each part as processed."""
    mods = predictor.schema.modalities
    options = _signal_options(predictor, parts)
    inputs = {k: v for k, v in parts.items() if k in mods}
    if not inputs:
        raise BadRequest(f"no input: send at least one part of {', '.join(mods)}")
    row: dict[str, Any] = {}
    digests = {}
    for name, part in inputs.items():
        spec = mods[name]
        if part.extra and spec.type != "signal":
            raise BadRequest(f"part {name!r} is sent {1 + len(part.extra)} times", part=name)
        if spec.type == "tabular":
            row.update(parse_record(name, part.data, spec.input_columns()))
            digests[name] = hashlib.sha256(part.data).hexdigest()
            continue
        assert spec.column is not None
        if spec.type == "signal":
            blob = _signal_blob(predictor, name, part, options.get(name, {}))
        else:
            blob = Blob(_content(spec.type, name, part.data, allow_burned_in), name)
        row[spec.column] = blob
        digests[name] = _digest(blob)
    return row, digests


def _content(kind: str, name: str, data: bytes, allow_burned_in: bool) -> bytes:
    if kind == "text":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"part {name!r}: the note is not UTF-8 text (byte {exc.start}); send it as UTF-8",
                part=name,
            ) from None
    if is_dicom(data):
        try:  # before anything else sees it
            return deidentify_bytes(data, name, allow_burned_in=allow_burned_in)
        except DataError as exc:
            raise BadRequest(f"part {name!r}: {exc.reason}", part=name) from None
    return data


def _digest(blob: Blob) -> str:
    h = hashlib.sha256(blob.data)
    for fname, data in sorted((blob.files or {}).items()):
        h.update(fname.encode("utf-8", "replace") + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _signal_options(predictor: Predictor, parts: dict[str, Part]) -> dict[str, dict[str, Any]]:
    """``{signal part: {"leads": (...), "fs": x}}`` from ``<part>.leads`` / ``<part>.fs``;
    any other part that is not an input of the model is a BadRequest naming it."""
    mods = predictor.schema.modalities
    out: dict[str, dict[str, Any]] = {}
    for key, part in parts.items():
        if key in mods:
            continue
        base, _, option = key.rpartition(".")
        if base in mods and mods[base].type == "signal" and option in SIGNAL_OPTIONS:
            out.setdefault(base, {})[option] = _option(key, option, part.data)
            continue
        extra = [f"{m}.{o}" for m, s in mods.items() if s.type == "signal" for o in SIGNAL_OPTIONS]
        raise BadRequest(
            f"part {key[:80]!r} is not an input of this model; it takes: "
            f"{', '.join([*mods, *extra])}",
            part=key[:80],
        )
    return out


def _option(key: str, option: str, data: bytes) -> Any:
    text = data.decode("utf-8", "replace").strip()
    if option == "fs":
        try:
            fs = float(text)
        except ValueError:
            fs = float("nan")
        if not 0 < fs < 1e6:
            raise BadRequest(f"part {key!r}: a sampling rate in Hz, not {text[:40]!r}", part=key)
        return fs
    try:
        names = json.loads(text) if text.startswith("[") else text.split(",")
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not names or len(names) > 1024:
        raise BadRequest(f'part {key!r}: lead names, e.g. \'MLII,V5\' or ["I", "II"]', part=key)
    return tuple(str(n).strip()[:40] for n in names)


def _signal_blob(predictor: Predictor, name: str, part: Part, opts: dict[str, Any]) -> Blob:
    """The signal upload: a WFDB header with its files, or a .npy / CSV with lead names."""
    files = None
    head = part
    if part.extra:
        every = [part, *part.extra]
        headers = [p for p in every if (p.filename or "").lower().endswith(".hea")]
        if len(headers) != 1:
            raise BadRequest(
                f"part {name!r}: {len(every)} files sent; a record sent as several files is a "
                "WFDB header (.hea) and the signal files it names",
                part=name,
            )
        head = headers[0]
        files = {p.filename or "": p.data for p in every if p is not head}
    leads = opts.get("leads")
    if leads is None and files is None and part.data.startswith(b"\x93NUMPY"):
        leads = _checkpoint_leads(predictor, name, part.data)
    return Blob(head.data, name, files=files, leads=leads, fs=opts.get("fs"))


def _checkpoint_leads(predictor: Predictor, name: str, data: bytes) -> tuple[str, ...] | None:
    """The lead names of an unnamed .npy: the checkpoint's own, when the file has as many
    leads as the model reads (one for a fallback list such as MLII-or-V5)."""
    proc = predictor.processors[name]
    wanted = getattr(proc, "leads", None)
    if wanted is None or getattr(proc, "lead_names", None):
        return None  # every lead is read by index, or the schema names them
    try:
        shape, _ = npy_header(io.BytesIO(data))
    except Exception:  # the reader says what is wrong with the file
        return None
    n = 1 if len(shape) < 2 else min(shape)
    groups = [wanted] if isinstance(wanted, str | int) else list(wanted)
    flat = all(isinstance(g, str | int) for g in groups)
    order = [groups[0]] if getattr(proc, "lead_fallback", False) and flat else groups
    names = [g if isinstance(g, str | int) else g[0] for g in order]
    if n != len(names):
        shown = " / ".join(
            str(g) if isinstance(g, str | int) else " or ".join(map(str, g)) for g in order
        )
        raise BadRequest(
            f"part {name!r}: the .npy has {n} lead(s) and this model reads {shown}; name the "
            f"file's leads in order with a part '{name}.leads' (e.g. "
            f"'{','.join(str(g if isinstance(g, str | int) else g[0]) for g in order)}')",
            part=name,
        )
    return tuple(str(v) for v in names)
