"""Load checkpoints and run the service under uvicorn.

The HTTP protocol is uvicorn's own with one guard (:func:`guarded_protocol`): a connection that
has not sent complete request headers within ``header_timeout`` seconds of opening, or of its
last response, is closed (a client that connects and sends nothing, or a header a byte at a
time, holds nothing for long). A stalled body is the app's: its one request timeout (408).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from medmodal.errors import ConfigError
from medmodal.serve.audit_log import AuditLog
from medmodal.serve.auth import TokenStore
from medmodal.serve.inference import ModelEntry
from medmodal.serve.limits import MB, Limits


def model_names(checkpoints: list[str]) -> dict[str, Path]:
    """``NAME=path`` or a path (named by the run directory, else the file stem)."""
    out: dict[str, Path] = {}
    for spec in checkpoints:
        name, sep, path = spec.partition("=")
        if not sep:
            p = Path(spec)
            name, path = (p.parent.name if p.stem in ("best", "last") else p.stem), spec
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"model name {name!r}: use letters, digits, '-', '_' or '.'")
        if name in out:
            raise ConfigError(f"two models named {name!r}; name them with NAME=path")
        out[name] = Path(path)
    return out


# pytorch-bf16: the Predictor under bf16 autocast with channels-last encoders (`predict --amp`)
RUNTIMES = ("pytorch", "pytorch-bf16", "onnx")


def load_models(
    checkpoints: list[str], runtime: str = "pytorch", max_batch: int = 64, max_wait_ms: float = 2.0
) -> dict[str, ModelEntry]:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    return {
        name: ModelEntry(name, path, runtime, max_batch=max_batch, max_wait=max_wait_ms / 1000)
        for name, path in model_names(checkpoints).items()
    }


def guarded_protocol(header_timeout: float) -> type:
    """uvicorn's HTTP protocol, closing connections that send no request headers in time."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Guarded(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            armed = self.cycle  # no new request by the deadline: the same (or no) cycle

            def expire() -> None:
                if self.cycle is armed and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(header_timeout, expire)

    return Guarded


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How the service runs its checkpoints (``medmodal serve``'s options; see the CLI help)."""

    audit_log: str | Path | None = "audit.jsonl"
    runtime: str = "pytorch"
    max_upload_mb: float = 50
    timeout: float = 30
    max_batch: int = 64
    max_wait_ms: float = 2.0
    limits: Limits | None = None  # else the defaults with max_upload_mb and timeout
    allow_burned_in: bool = False
    dicomweb: str | None = None  # a PACS the page may pick studies from (serve/hospital.py)
    fhir_mappings: tuple[str, ...] = ()  # NAME=map.yaml for POST /v1/models/NAME/fhir


def build_app(
    checkpoints: list[str],
    tokens: str | Path,
    *,
    settings: ServeSettings | None = None,
    **fields: Any,
) -> Any:
    """The app over ``checkpoints``, run as ``settings`` says (or its ``fields`` as keywords:
    an unknown one is a ConfigError naming the allowed ones)."""
    from medmodal.serve.app import create_app

    s = _settings(settings, fields)
    store = TokenStore.load(tokens)
    audit = AuditLog(s.audit_log) if s.audit_log else None  # a damaged log stops here, by name
    models = load_models(checkpoints, s.runtime, s.max_batch, s.max_wait_ms)
    for entry in models.values():
        entry.allow_burned_in = s.allow_burned_in
    limits = dataclasses.replace(
        s.limits or Limits(), max_bytes=int(s.max_upload_mb * MB), timeout=s.timeout
    )
    app = create_app(models, store, audit, limits)
    if s.dicomweb or s.fhir_mappings:
        from medmodal.serve.hospital import configure_hospital

        configure_hospital(app, models, s.dicomweb, list(s.fhir_mappings))
    return app


def _settings(settings: ServeSettings | None, fields: dict[str, Any]) -> ServeSettings:
    allowed = [f.name for f in dataclasses.fields(ServeSettings)]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ConfigError(f"serve: unknown option(s) {unknown}; allowed: {', '.join(allowed)}")
    if "fhir_mappings" in fields:
        fields = {**fields, "fhir_mappings": tuple(fields["fhir_mappings"] or ())}
    return dataclasses.replace(settings or ServeSettings(), **fields)


def serve(
    checkpoints: list[str],
    tokens: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = 1,
    **options: Any,
) -> None:
    """Run the service until interrupted (one process; torch on ``threads`` threads)."""
    import logging

    import uvicorn

    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its warnings may quote header values
    torch.set_num_threads(threads)
    app = build_app(checkpoints, tokens, **options)
    limits = app.state.limits
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=guarded_protocol(limits.header_timeout),
        timeout_keep_alive=5,
    )
