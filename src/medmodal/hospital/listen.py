"""DIMSE routing: a Storage SCP a PACS sends studies to (C-STORE), predicting when a study is
complete and sending the DICOM SR back by C-STORE.

A study counts as complete when no instance of it arrived for ``quiet`` seconds (the usual rule of
DICOM routers: DIMSE has no "end of study"). Only the allow-listed calling AE titles may connect.
Each study goes through :func:`medmodal.hospital.pipeline.run_study` for every served model (one
SR per model), with the service's audit entries (caller ``dimse:<calling AE title>``). A failing
study is reported in :attr:`Listener.errors` and the log; the listener keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medmodal.errors import ConfigError, MedmodalError
from medmodal.hospital.pipeline import StudyOutcome, run_study
from medmodal.serve.audit_log import AuditLog
from medmodal.serve.inference import ModelEntry

log = logging.getLogger("medmodal.listen")


@dataclass(frozen=True)
class Destination:
    """Where SRs go: ``AET@host:port``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        aet, sep, rest = text.partition("@")
        host, _, port = rest.rpartition(":")
        if not sep or not aet or not host or not port.isdigit() or len(aet) > 16:
            raise ConfigError(
                f"destination {text!r}: use AET@host:port, e.g. ORTHANC@127.0.0.1:4242"
            )
        return cls(aet, host, int(port))


@dataclass
class Pending:
    """Instances of one study received so far."""

    datasets: list[Dataset] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0
    caller: str = ""


def check_aet(aet: str, what: str = "AE title") -> str:
    if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet or aet != aet.strip():
        raise ConfigError(f"{what} {aet!r}: 1 to 16 ASCII characters, no backslash")
    return aet


class Listener:
    """The Storage SCP and its quiet-time worker; :meth:`stop` ends both."""

    def __init__(
        self,
        entries: dict[str, ModelEntry],
        allow: list[str],
        destination: Destination | None,
        quiet: float = 5.0,
        audit: AuditLog | None = None,
    ) -> None:
        if not allow:
            raise ConfigError("give the calling AE titles allowed to send (--allow PACS_AET)")
        self.entries, self.allow = entries, [check_aet(a, "calling AE title") for a in allow]
        self.destination, self.quiet, self.audit = destination, quiet, audit
        self.pending: dict[str, Pending] = {}
        self.outcomes: deque[StudyOutcome] = deque(maxlen=1000)
        self.errors: deque[str] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self.aet = ""

    # -- receiving ------------------------------------------------------------------------------
    def on_store(self, event: Any) -> int:
        """C-STORE handler: keep the instance in memory under its study; 0x0000 = success."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.StudyInstanceUID)
        except Exception:  # a dataset that cannot be decoded or has no study UID
            return 0xC210
        now = time.monotonic()
        with self._lock:
            study = self.pending.setdefault(uid, Pending(first=now))
            study.datasets.append(ds)
            study.last = now
            study.caller = str(event.assoc.requestor.ae_title)
        return 0x0000

    def start(self, aet: str, port: int, host: str = "127.0.0.1") -> Listener:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.aet = check_aet(aet)
        ae = AE(ae_title=self.aet)
        ae.require_calling_aet = self.allow
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            (host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )
        self._worker = threading.Thread(target=self._loop, name="medmodal-listen", daemon=True)
        self._worker.start()
        return self

    # -- processing -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(min(0.2, self.quiet / 4 or 0.05)):
            for uid, study in self._complete():
                self.process(uid, study)

    def _complete(self) -> list[tuple[str, Pending]]:
        now = time.monotonic()
        with self._lock:
            done = [u for u, s in self.pending.items() if now - s.last >= self.quiet]
            return [(u, self.pending.pop(u)) for u in done]

    def process(self, uid: str, study: Pending) -> None:
        """Every model on one complete study; the SR to the destination."""
        send = self.send if self.destination is not None else None
        for entry in self.entries.values():
            try:
                out = run_study(
                    entry,
                    study.datasets,
                    store=send,
                    audit=self.audit,
                    caller=f"dimse:{study.caller}",
                    fetch_seconds=study.last - study.first,
                )
                self.outcomes.append(out)
            except MedmodalError as exc:
                self._error(f"{entry.name}: study of {len(study.datasets)} instance(s): {exc}")
            except Exception as exc:  # the listener must outlive one bad study
                self._error(f"{entry.name}: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        log.error(text)
        self.errors.append(text)

    def send(self, datasets: list[Dataset]) -> None:
        """C-STORE ``datasets`` to the destination; MedmodalError when refused."""
        from pynetdicom import AE

        assert self.destination is not None
        d = self.destination
        ae = AE(ae_title=self.aet or "MEDMODAL")
        for uid in {str(ds.SOPClassUID) for ds in datasets}:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(d.host, d.port, ae_title=d.aet)
        if not assoc.is_established:
            raise MedmodalError(f"{d.aet}@{d.host}:{d.port} refused the association")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code != 0x0000:
                    raise MedmodalError(f"{d.aet} answered C-STORE with status {code!r}")
        finally:
            assoc.release()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=30)
        if self._server is not None:
            self._server.shutdown()
