"""A local Orthanc PACS as a plain process (tests, benchmarks, trying medmodal against a PACS).

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide the binary and the DICOMweb plugin;
:func:`start_orthanc` writes a JSON config into a folder of its own (storage and index there too),
listens on 127.0.0.1 only (``RemoteAccessAllowed: false``), waits until ``/system`` answers and
returns a handle whose :meth:`LocalOrthanc.stop` ends the process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmodal.errors import ConfigError

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "apt-get install -y orthanc orthanc-dicomweb"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_binary() -> Path | None:
    """The Orthanc executable (on PATH, or Debian's /usr/sbin/Orthanc), else None."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    return Path(found) if found else None


def orthanc_missing() -> str | None:
    """Why a local Orthanc cannot start here (binary or DICOMweb plugin missing), else None."""
    if orthanc_binary() is None:
        return f"Orthanc is not installed ({INSTALL_HINT})"
    if not PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin {PLUGIN} is missing ({INSTALL_HINT})"
    return None


@dataclass
class LocalOrthanc:
    """A running Orthanc: its HTTP and DICOM ports, AE title, folder and process."""

    http_port: int
    dicom_port: int
    aet: str
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def rest(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        """One call of Orthanc's REST API (JSON in and out)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as res:
            text = res.read()
        return json.loads(text) if text else None

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Declare a DICOM node Orthanc may send to (``/modalities/<name>/store``)."""
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def orthanc_config(folder: Path, http_port: int, dicom_port: int, aet: str) -> dict[str, Any]:
    return {
        "Name": "medmodal-local",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "StableAge": 1,
    }


def start_orthanc(folder: str | Path, aet: str = "ORTHANC", timeout: float = 30.0) -> LocalOrthanc:
    """Start Orthanc with its config, storage and log in ``folder``; ConfigError if it cannot."""
    missing = orthanc_missing()
    if missing:
        raise ConfigError(missing)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder, http_port, dicom_port, aet), indent=1))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (the process writes it)
    env = {**os.environ, "LANG": "C"}
    proc = subprocess.Popen(
        [str(orthanc_binary()), str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    handle = LocalOrthanc(http_port, dicom_port, aet, folder, proc)
    _wait_ready(handle, timeout)
    return handle


def _wait_ready(handle: LocalOrthanc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            tail = (handle.folder / "orthanc.log").read_text(errors="replace")[-800:]
            raise ConfigError(f"Orthanc exited with code {handle.process.returncode}: {tail}")
        try:
            handle.rest("GET", "/system")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    handle.stop()
    raise ConfigError(f"Orthanc did not answer on {handle.url} within {timeout:g} s")
