"""De-identification of DICOM uploads on arrival: the DICOM PS3.15 Basic Profile (Table E.1-1).

Every attribute of the table (``ps315_basic.tsv``, whose header says where it comes from) is
handled by its action: X removed, Z emptied, D given a dummy value, U given a new UID derived from
the old one and a per-process secret (so references inside one upload stay consistent). Combined
actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) take their first letter. Private attributes are removed (no
Retain Safe Private option), sequences are walked at any depth, any attribute of the Patient group
(0010) the table does not name is removed, and PatientIdentityRemoved / DeidentificationMethod
are set. The file meta group (0002) is rebuilt from the de-identified data set (class, new
instance UID, transfer syntax, this implementation): nothing of the sender's meta survives
(source AE titles, private information), and the 128-byte preamble is zeroed. Pixel data is untouched, so an image flagged
``BurnedInAnnotation = YES`` (text burned into the pixels) is refused unless the operator allows
such images (``medmodal serve --allow-burned-in``).
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
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

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
PATIENT_GROUP = 0x0010


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
    if tag >> 16 == PATIENT_GROUP:  # the Patient group: whatever the table does not name
        return "X"
    return None


def new_uid(old: str) -> str:
    """A UID derived from ``old`` and this process's secret: the same in, the same out."""
    digest = hashlib.sha256(_SALT + old.encode("ascii", "replace")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def deidentify_dataset(ds: Dataset) -> Dataset:
    """Apply the profile in place (nested sequences too), rebuild the file meta group, return
    ``ds``."""
    _walk(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    ds.file_meta = _file_meta(ds)
    ds.preamble = b"\0" * 128  # a preamble may carry another format's header (DICOM-TIFF)
    return ds


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """A new file meta group: nothing of the sender's (AE titles, private information)."""
    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or UID(new_uid("meta"))
    if old.get("TransferSyntaxUID"):
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def check_burned_in(ds: Dataset, part: str, allowed: bool) -> None:
    """DataError for an image flagged with burned-in annotation, unless the operator allows."""
    flag = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    if flag == "YES" and not allowed:
        raise DataError(
            "the image is flagged BurnedInAnnotation = YES: text burned into its pixels may "
            "identify the patient and is not removed by de-identification; refused (the "
            "operator can allow such images with `medmodal serve --allow-burned-in`)",
            modality=part,
        )


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


def deidentify_bytes(data: bytes, part: str, allow_burned_in: bool = False) -> bytes:
    """De-identified DICOM bytes (the pixels as they were); DataError naming the part."""
    try:
        with warnings.catch_warnings():  # pydicom's warnings may quote header values
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(data), force=False)
            check_burned_in(ds, part, allow_burned_in)
            deidentify_dataset(ds)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
    except DataError:
        raise
    except RecursionError:
        raise DataError(
            "cannot de-identify DICOM: sequences nested too deeply", modality=part
        ) from None
    except Exception as exc:  # pydicom raises many types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot de-identify DICOM: {reason[:200]}", modality=part) from None
    return out.getvalue()
