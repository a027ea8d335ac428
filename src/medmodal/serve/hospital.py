"""The service in a hospital: FHIR out and in, and studies from the configured PACS.

* ``Accept: application/fhir+json`` on ``/v1/models/{name}/predict``: the same prediction as a FHIR
  R4 Bundle (DiagnosticReport, Observations, RiskAssessment, Device); errors as an
  ``OperationOutcome`` with the same status (:class:`FhirNegotiation`, ASGI, around the route).
* ``POST /v1/models/{name}/fhir``: a FHIR Bundle mapped onto the model's inputs by the mapping
  declared for it (``medmodal serve --fhir-mapping NAME=map.yaml``) -> the FHIR report.
* ``GET /v1/pacs``, ``GET /v1/pacs/studies?accession=&date=`` (QIDO-RS) and
  ``POST /v1/models/{name}/pacs/{study}`` (WADO-RS fetch, de-identify, predict, SR stored back by
  STOW-RS unless ``store_sr=false``, audit entries under the token's name) for the page.
``app.state.pacs`` (a :class:`medmodal.hospital.dicomweb.Pacs` or None) and
``app.state.fhir_mappings`` ({model: mapping}) are set by :func:`medmodal.serve.server.build_app`.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from medmodal.errors import MedmodalError
from medmodal.serve.audit_log import AuditLog
from medmodal.serve.inference import ModelEntry

FHIR_JSON = "application/fhir+json"
PREDICT_PATH = re.compile(r"^/v1/models/([^/]+)/predict$")


def add_hospital_routes(
    app: FastAPI, models: dict[str, ModelEntry], audit: AuditLog | None, auth: Any
) -> None:
    """Mount the PACS and FHIR routes and the FHIR content negotiation on ``app``."""
    app.state.pacs = getattr(app.state, "pacs", None)
    app.state.fhir_mappings = getattr(app.state, "fhir_mappings", {})
    _add_pacs_routes(app, models, audit, auth)
    _add_fhir_route(app, models, audit, auth)
    app.add_middleware(FhirNegotiation, models=models)  # type: ignore[arg-type]

    @app.get("/hospital/pacs.js", include_in_schema=False)
    async def pacs_js() -> Response:
        page = resources.files("medmodal.serve").joinpath("page", "pacs.js")
        return Response(page.read_text("utf-8"), media_type="text/javascript")


def _pacs(request: Request) -> Any:
    pacs = request.app.state.pacs
    if pacs is None:
        raise HTTPException(404, "no PACS configured: start `medmodal serve` with --dicomweb URL")
    return pacs


def _add_pacs_routes(
    app: FastAPI, models: dict[str, ModelEntry], audit: AuditLog | None, auth: Any
) -> None:
    @app.get("/v1/pacs", tags=["pacs"])
    async def pacs_info(request: Request, _: str = Depends(auth)) -> dict[str, Any]:
        """Whether a PACS is configured (the page shows its study search only then)."""
        pacs = request.app.state.pacs
        return {"configured": pacs is not None, "url": None if pacs is None else pacs.url}

    @app.get("/v1/pacs/studies", tags=["pacs"])
    async def search(
        request: Request,
        accession: str | None = None,
        date: str | None = None,
        limit: int = 50,
        _: str = Depends(auth),
    ) -> dict[str, Any]:
        """QIDO-RS: studies by accession number and / or date (YYYYMMDD or a range)."""
        pacs = _pacs(request)
        if not accession and not date:
            raise HTTPException(422, "give an accession number or a study date")
        studies = await run_in_threadpool(_pacs_call, pacs.search, accession, date, min(limit, 200))
        return {"studies": studies}

    @app.post("/v1/models/{name}/pacs/{study}", tags=["pacs"])
    async def predict_study(
        name: str,
        study: str,
        request: Request,
        store_sr: bool = True,
        explain: bool = False,
        token: str = Depends(auth),
    ) -> JSONResponse:
        """Fetch the study (WADO-RS), predict each image, store the SR back (STOW-RS); with
        ``explain``, each heat map too, as a Secondary Capture."""
        from medmodal.hospital.pipeline import run_dicomweb_study

        pacs = _pacs(request)
        entry = _entry(models, name)
        outcome = await run_in_threadpool(
            _pacs_call,
            run_dicomweb_study,
            entry,
            pacs,
            study,
            store_sr=store_sr,
            audit=audit,
            caller=token,
            explain=explain,
        )
        return JSONResponse({"study": study, **outcome.summary()})


def _pacs_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A PACS failure is a 502 naming it; a study that cannot be used is a 422."""
    from medmodal.hospital.dicomweb import PacsError

    try:
        return fn(*args, **kwargs)
    except PacsError as exc:
        status = 404 if "not found" in str(exc) else 502
        raise HTTPException(status, str(exc)) from None
    except MedmodalError as exc:
        raise HTTPException(422, str(exc)) from None


def _entry(models: dict[str, ModelEntry], name: str) -> ModelEntry:
    if name not in models:
        raise HTTPException(404, f"no model {name!r}; served: {', '.join(models)}")
    return models[name]


def _add_fhir_route(
    app: FastAPI, models: dict[str, ModelEntry], audit: AuditLog | None, auth: Any
) -> None:
    @app.post("/v1/models/{name}/fhir", tags=["models"])
    async def predict_bundle(name: str, request: Request, token: str = Depends(auth)) -> Response:
        """A FHIR Bundle (Patient, Observations, DocumentReference, Media) -> a FHIR report."""
        from medmodal.hospital.fhir import report_bundle
        from medmodal.hospital.fhir_input import bundle_parts

        entry = _entry(models, name)
        mapping = request.app.state.fhir_mappings.get(name)
        if mapping is None:
            raise HTTPException(
                404, f"no FHIR mapping declared for {name!r} (serve --fhir-mapping {name}=map.yaml)"
            )
        try:
            bundle = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(422, f"body is not JSON: {exc}") from None
        if not isinstance(bundle, dict):
            raise HTTPException(422, "body must be a FHIR Bundle (a JSON object)")
        try:
            parts = bundle_parts(bundle, mapping)
        except MedmodalError as exc:
            raise HTTPException(422, str(exc)) from None
        prepared = await run_in_threadpool(entry.prepare, parts)
        out = await entry.predict(prepared)
        if audit is not None:
            summary = {"prediction": out["prediction"], "probabilities": out["probabilities"]}
            audit.append(token=token, model=name, inputs=prepared.digests, output=summary)
        patient = next(
            (
                e.get("fullUrl")
                for e in bundle.get("entry", [])
                if (e.get("resource") or {}).get("resourceType") == "Patient"
            ),
            None,
        )
        report = report_bundle(out, entry.card, subject={"reference": patient} if patient else None)
        return Response(json.dumps(report), media_type=FHIR_JSON)


class FhirNegotiation:
    """ASGI: a predict request that accepts ``application/fhir+json`` (and not plain JSON first)
    gets its JSON result as a FHIR Bundle, its error as an OperationOutcome."""

    def __init__(self, app: Any, models: dict[str, ModelEntry]) -> None:
        self.app, self.models = app, models

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = PREDICT_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or not wants_fhir(scope):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        status = int(start.get("status", 500))
        body = self._convert(match.group(1), status, b"".join(chunks))
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-type", b"content-length")
        ]
        headers += [
            (b"content-type", FHIR_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _convert(self, name: str, status: int, raw: bytes) -> bytes:
        from medmodal.hospital.fhir import report_bundle

        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = {"detail": raw.decode("utf-8", "replace")[:500]}
        if status == 200 and name in self.models:
            return json.dumps(report_bundle(payload, self.models[name].card)).encode()
        detail = payload.get("detail") if isinstance(payload, dict) else None
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "security"
                    if status == 401
                    else "invalid"
                    if status < 500
                    else "exception",
                    "diagnostics": detail if isinstance(detail, str) else json.dumps(detail),
                }
            ],
        }
        return json.dumps(outcome).encode()


def wants_fhir(scope: Any) -> bool:
    """True when the Accept header lists application/fhir+json before any plain JSON."""
    accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1").lower()
    kinds = [part.split(";")[0].strip() for part in accept.split(",")]
    if FHIR_JSON not in kinds:
        return False
    return "application/json" not in kinds or kinds.index(FHIR_JSON) < kinds.index(
        "application/json"
    )


def configure_hospital(
    app: Any, models: dict[str, ModelEntry], dicomweb: str | None, fhir_mappings: list[str]
) -> None:
    """``serve --dicomweb URL --fhir-mapping NAME=map.yaml``: the PACS and the FHIR mappings."""
    from medmodal.errors import ConfigError
    from medmodal.hospital.dicomweb import Pacs
    from medmodal.hospital.fhir_input import read_mapping

    app.state.pacs = Pacs(dicomweb) if dicomweb else None
    mappings = {}
    for spec in fhir_mappings:
        name, sep, path = spec.partition("=")
        if not sep and len(models) == 1:
            name, path = next(iter(models)), spec
        if name not in models:
            raise ConfigError(
                f"--fhir-mapping {spec!r}: use NAME=map.yaml with NAME one of {', '.join(models)}"
            )
        mappings[name] = read_mapping(Path(path), models[name].predictor)
    app.state.fhir_mappings = mappings
