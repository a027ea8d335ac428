"""De-identification of DICOM uploads on arrival: the DICOM PS3.15 Basic Profile (Table E.1-1).

Every attribute of the table (``ps315_basic.tsv``) is handled by its action: X removed, Z emptied,
D given a dummy value, U given a new UID derived from the old one and a per-process secret (so
references inside one upload stay consistent). Combined actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*)
take their first letter. Private attributes are removed (no Retain Safe Private option), sequences
are walked, and PatientIdentityRemoved / DeidentificationMethod are set. Pixel data is untouched.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import warnings
from functools import lru_cache
from importlib import resources

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from medmodal.errors import DataError

METHOD = "DICOM PS3.15 Basic Profile (medmodal serve)"
_SALT = secrets.token_bytes(16)
DUMMY = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "PN": "ANONYMOUS",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
}
NUMERIC = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}


def is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM"


@lru_cache(maxsize=1)
def profile() -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """(tag -> action, ((value, mask, action), ...) for repeating groups) from the table."""
    text = resources.files("medmodal.serve").joinpath("ps315_basic.tsv").read_text("utf-8")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        tag, action, mask, _name = line.split("\t")
        if mask == "-":
            exact[int(tag, 16)] = action[0]
        else:
            masked.append((int(tag, 16), int(mask, 16), action[0]))
    return exact, tuple(masked)


def action_of(tag: int) -> str | None:
    exact, masked = profile()
    if tag in exact:
        return exact[tag]
    for value, mask, action in masked:
        if tag & mask == value:
            return action
    return None


def new_uid(old: str) -> str:
    """A UID derived from ``old`` and this process's secret: the same in, the same out."""
    digest = hashlib.sha256(_SALT + old.encode("ascii", "replace")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def deidentify_dataset(ds: Dataset) -> Dataset:
    """Apply the profile in place (nested sequences too) and return ``ds``."""
    _walk(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _walk(ds: Dataset) -> None:
    for elem in list(ds):
        if elem.tag.is_private:
            del ds[elem.tag]
            continue
        action = action_of(int(elem.tag))
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            _empty(elem)
        elif action == "D":
            _dummy(elem)
        elif action == "U":
            _uid(elem)
        elif elem.VR == "SQ":
            for item in elem.value:
                _walk(item)


def _empty(elem: DataElement) -> None:
    elem.value = Sequence([]) if elem.VR == "SQ" else None


def _dummy(elem: DataElement) -> None:
    if elem.VR == "SQ":
        elem.value = Sequence([])
    elif elem.VR == "UI":
        _uid(elem)
    elif elem.VR in NUMERIC:
        elem.value = 0
    elif elem.VR in DUMMY:
        elem.value = DUMMY[elem.VR]
    elif elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        elem.value = b""
    else:
        elem.value = "ANONYMIZED"


def _uid(elem: DataElement) -> None:
    if elem.VR == "SQ":
        for item in elem.value:
            _walk(item)
        return
    if elem.VR != "UI" or elem.value in (None, ""):
        _empty(elem)
        return
    values = elem.value if elem.VM > 1 else [elem.value]
    fresh = [UID(new_uid(str(v))) for v in values]
    elem.value = fresh if elem.VM > 1 else fresh[0]


def deidentify_bytes(data: bytes, part: str) -> bytes:
    """De-identified DICOM bytes (the pixels as they were); DataError naming the part."""
    try:
        with warnings.catch_warnings():  # pydicom's warnings may quote header values
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(data), force=False)
            deidentify_dataset(ds)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
    except DataError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot de-identify DICOM: {reason}", modality=part) from None
    return out.getvalue()
