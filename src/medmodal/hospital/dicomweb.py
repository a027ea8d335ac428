"""A PACS over DICOMweb (``dicomweb-client``): QIDO-RS to find studies, WADO-RS to fetch their
instances as stored (compressed transfer syntaxes included), STOW-RS to store results.

Failures are a :class:`PacsError` naming the server and what was asked, never a traceback.
Search results carry study-level technical fields only (no patient name, id or birth date).
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset

from medmodal.errors import MedmodalError

# QIDO-RS study attributes shown to a user picking a study (tag -> keyword); nothing identifying
# the patient beyond what the clinician typed (the accession number).
STUDY_FIELDS = {
    "0020000D": "StudyInstanceUID",
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00080050": "AccessionNumber",
    "00080061": "ModalitiesInStudy",
    "00081030": "StudyDescription",
    "00201206": "NumberOfStudyRelatedSeries",
    "00201208": "NumberOfStudyRelatedInstances",
}
DATE = re.compile(r"^\d{8}(-\d{8})?$|^\d{8}-$|^-\d{8}$")
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
ANY_SYNTAX = (("application/dicom", "*"),)  # as stored: no transcoding by the server


class PacsError(MedmodalError):
    """A PACS could not be reached, or refused or failed a request."""


def check_uid(value: str, what: str = "study UID") -> str:
    if not value or len(value) > 64 or not UID.match(value):
        raise PacsError(f"{what} {value!r} is not a DICOM UID (digits and dots, at most 64)")
    return value


class Pacs:
    """One DICOMweb service, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        if not url.startswith(("http://", "https://")):
            raise PacsError(f"DICOMweb URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        session = requests.Session()  # no connection retries: an unreachable PACS fails at once
        session.request = _with_timeout(session.request, timeout)  # type: ignore[method-assign]
        self.client = DICOMwebClient(url=self.url, session=session)
        # its default retries every exception 5 times with exponential back-off (30 s for a
        # refused connection); a clinician or a router should hear at once
        self.client.set_http_retry_params(retry=False)

    def search(
        self, accession: str | None = None, date: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Studies matching an accession number and / or a study date (``YYYYMMDD`` or a
        ``YYYYMMDD-YYYYMMDD`` range), newest first, at most ``limit``."""
        filters: dict[str, Any] = {}
        if accession:
            filters["AccessionNumber"] = accession
        if date:
            if not DATE.match(date):
                raise PacsError(f"study date {date!r}: use YYYYMMDD or YYYYMMDD-YYYYMMDD")
            filters["StudyDate"] = date
        fields = [k for k in STUDY_FIELDS.values() if k != "StudyInstanceUID"]
        found = self._call(
            "search studies",
            self.client.search_for_studies,
            search_filters=filters,
            fields=fields,
            limit=limit,
        )
        studies = [_study_summary(item) for item in found]
        return sorted(studies, key=lambda s: (s["StudyDate"], s["StudyTime"]), reverse=True)

    def fetch_study(self, study_uid: str) -> list[Dataset]:
        """Every instance of a study, as stored (WADO-RS)."""
        check_uid(study_uid)
        got = self._call(
            f"fetch study {study_uid}",
            self.client.retrieve_study,
            study_instance_uid=study_uid,
            media_types=ANY_SYNTAX,
        )
        if not got:
            raise PacsError(f"{self.url}: study {study_uid} has no instances")
        return list(got)

    def store(self, datasets: list[Dataset]) -> None:
        """STOW-RS; a PacsError when the server reports a failed instance."""
        answer = self._call("store", self.client.store_instances, datasets=datasets)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise PacsError(f"{self.url} refused {len(failed)} instance(s) (failure {reason})")

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return fn(**kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            if status == 404:
                raise PacsError(f"{self.url}: {what}: not found (404)") from None
            raise PacsError(f"{self.url}: {what}: HTTP {status}") from None
        except requests.ConnectionError:
            raise PacsError(f"{self.url}: {what}: cannot connect (is the PACS running?)") from None
        except requests.RequestException as exc:
            raise PacsError(f"{self.url}: {what}: {type(exc).__name__}") from None


def _with_timeout(request: Any, timeout: float) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        return request(*args, **kwargs)

    return call


def _study_summary(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, keyword in STUDY_FIELDS.items():
        values = (item.get(tag) or {}).get("Value") or []
        if keyword == "ModalitiesInStudy":
            out[keyword] = [str(v) for v in values]
        elif keyword.startswith("NumberOf"):
            out[keyword] = int(values[0]) if values else None
        else:
            out[keyword] = str(values[0]) if values else ""
    return out
