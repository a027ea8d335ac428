"""The FastAPI application: predict, model cards, health, metrics, the page; nothing else.

:func:`create_app` wires the served models, the token store, the audit log and the limits.
Every route but ``/healthz`` and the static page needs a bearer token. Bad input is a 4xx whose
``detail`` names the part; uploads stay in memory; the audit log gets digests, never content.
A predict request runs under one timeout (reading its body, decoding, inference, explanation:
408 while the client still sends, else 503); decoding and explaining run in worker threads,
a bounded number at once (:class:`~medmodal.serve.limits.DecodeSlots`), never on the event loop.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medmodal import __version__
from medmodal.serve.audit_log import AuditLog
from medmodal.serve.auth import TokenStore
from medmodal.serve.explain import explain_one
from medmodal.serve.hospital import add_hospital_routes
from medmodal.serve.inference import ModelEntry
from medmodal.serve.limits import (
    MB,
    BadRequest,
    BodyLimit,
    BodyPool,
    Busy,
    DecodeSlots,
    Limits,
    read_parts,
)
from medmodal.serve.metrics import Metrics, MetricsMiddleware
from medmodal.serve.schemas import ERRORS, Card, ModelList, Prediction, multipart_body

PAGE_TYPES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


def create_app(
    models: dict[str, ModelEntry],
    tokens: TokenStore,
    audit: AuditLog | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The service over ``models`` (name -> loaded entry)."""
    limits = limits or Limits()
    metrics = Metrics()
    app = FastAPI(
        title="medmodal serve",
        version=__version__,
        description="Predictions with their uncertainty, explanation and model card.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.models, app.state.metrics, app.state.audit = models, metrics, audit
    app.state.limits = limits
    app.state.slots = DecodeSlots(limits.max_decodes, limits.queue_wait, limits.decode_limits())
    app.state.bodies = BodyPool(int(limits.bodies_mb * MB))
    auth = _auth_dependency(tokens)
    _add_handlers(app)
    _add_info_routes(app, models, metrics, auth)
    _add_predict_route(app, models, audit, limits, auth)
    add_hospital_routes(app, models, audit, auth)  # FHIR out/in, studies from the PACS
    _add_page_routes(app)
    app.add_middleware(
        BodyLimit,  # type: ignore[arg-type]
        max_bytes=limits.max_bytes,
        pool=app.state.bodies,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # type: ignore[arg-type]
    return app


def _auth_dependency(tokens: TokenStore) -> Any:
    scheme = HTTPBearer(auto_error=False, description="a token from `medmodal token create`")

    def require(creds: HTTPAuthorizationCredentials | None = Depends(scheme)) -> str:
        name = tokens.name_of(creds.credentials if creds else None)
        if name is None:
            detail = "missing bearer token" if creds is None else "wrong bearer token"
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
        return name

    return require


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "part": exc.part}, status_code=exc.status)

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"detail": str(exc), "part": None}, status_code=503, headers=headers)


def _add_info_routes(
    app: FastAPI, models: dict[str, ModelEntry], metrics: Metrics, auth: Any
) -> None:
    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness: no token needed, no model detail."""
        return {"status": "ok", "models": len(models)}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"], responses=ERRORS)
    async def prometheus(_: str = Depends(auth)) -> PlainTextResponse:
        """Prometheus text: request counts by route and status, a latency histogram."""
        for name, entry in models.items():
            metrics.gauges[f'medmodal_batches_total{{model="{name}"}}'] = entry.batcher.batches
            metrics.gauges[f'medmodal_batched_items_total{{model="{name}"}}'] = entry.batcher.items
        slots, bodies = app.state.slots, app.state.bodies
        metrics.gauges["medmodal_decodes_running"] = slots.busy
        metrics.gauges["medmodal_decodes_refused_total"] = slots.refused
        metrics.gauges["medmodal_upload_bytes_held"] = bodies.used
        metrics.gauges["medmodal_upload_bytes_held_peak"] = bodies.peak
        if app.state.audit is not None:  # the chain's head outside the log: truncation shows
            metrics.gauges["medmodal_audit_lines"] = app.state.audit.seq
            metrics.labels["medmodal_audit_head"] = app.state.audit.head
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=ModelList, tags=["models"], responses=ERRORS)
    async def list_models(_: str = Depends(auth)) -> JSONResponse:
        """Every served model's card."""
        return JSONResponse({"models": [e.card for e in models.values()]})

    @app.get("/v1/models/{name}", response_model=Card, tags=["models"], responses=ERRORS)
    async def card(name: str, _: str = Depends(auth)) -> JSONResponse:
        """One model's card: data and its hash, intended use, metrics with CIs, limits, versions."""
        return JSONResponse(_entry(models, name).card)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_: str = Depends(auth)) -> JSONResponse:
        return JSONResponse(_schema(app, list(models)))


def _schema(app: FastAPI, names: list[str]) -> dict[str, Any]:
    """The OpenAPI schema, with ``name`` listing the served models and links from the model
    list to the operations on one model (what a stateful client, or schemathesis, follows)."""
    schema = app.openapi()
    for ops in schema["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["name"] == "name" and param["in"] == "path":
                    param["schema"] = {"type": "string", "enum": names, "title": "Name"}
    paths = schema["paths"]
    listing = paths.get("/v1/models", {}).get("get", {}).get("responses", {}).get("200")
    if listing is not None:
        name = {"name": "$response.body#/models/0/name"}
        listing["links"] = {
            f"{method}_{path.rsplit('/', 1)[-1].strip('{}')}": {
                "operationId": op["operationId"],
                "parameters": name,
            }
            for path, ops in paths.items()
            if path.startswith("/v1/models/{name}")
            for method, op in ops.items()
        }
    return schema


def _entry(models: dict[str, ModelEntry], name: str) -> ModelEntry:
    if name not in models:
        raise HTTPException(404, f"no model {name!r}; served: {', '.join(models)}")
    return models[name]


def _add_predict_route(
    app: FastAPI, models: dict[str, ModelEntry], audit: AuditLog | None, limits: Limits, auth: Any
) -> None:
    @app.post(
        "/v1/models/{name}/predict",
        response_model=Prediction,
        tags=["models"],
        responses=ERRORS,
        openapi_extra=multipart_body(models),
    )
    async def predict(
        name: str, request: Request, explain: bool = False, token: str = Depends(auth)
    ) -> JSONResponse:
        """Multipart, one part per modality (any subset); record fields as a JSON object."""
        entry = _entry(models, name)
        phase = ["reading the request body"]
        try:
            async with asyncio.timeout(limits.timeout):  # one clock for the whole request
                return await _predict(app, entry, request, explain, token, phase)
        except TimeoutError:
            status = 408 if phase[0] == "reading the request body" else 503
            raise HTTPException(
                status,
                f"the request took longer than {limits.timeout:g} s ({phase[0]})",
                headers={"Connection": "close"},
            ) from None


async def _predict(
    app: FastAPI, entry: ModelEntry, request: Request, explain: bool, token: str, phase: list[str]
) -> JSONResponse:
    limits, slots, audit = app.state.limits, app.state.slots, app.state.audit
    body = await request.body()
    parts = read_parts(request.headers.get("content-type"), body, limits.max_parts)
    del body
    phase[0] = "decoding the inputs"
    prepared = await slots.run(entry.prepare, parts)
    del parts
    phase[0] = "running the model"
    out = await entry.predict(prepared)
    result = _result(entry, prepared, out)
    if explain:
        phase[0] = "explaining the prediction"
        result["explanation"] = await slots.run(explain_one, entry.predictor, prepared, _p(out))
    if audit is not None:
        summary = {"prediction": out["prediction"], "probabilities": out["probabilities"]}
        result["audit"] = audit.append(
            token=token, model=entry.name, inputs=prepared.digests, output=summary
        )
    result["input_digests"] = prepared.digests
    return JSONResponse(result)


def _p(out: dict[str, Any]) -> list[float]:
    probs = out["calibrated_probabilities"] or out["probabilities"]
    return list(probs.values())[-1:] if len(probs) == 2 else list(probs.values())


def _result(entry: ModelEntry, prepared: Any, out: dict[str, Any]) -> dict[str, Any]:
    lm = entry.predictor.label_map
    present = prepared.sample["present"]
    return {
        "model": entry.name,
        "runtime": entry.runtime,
        "task": lm.task,
        "classes": lm.classes,
        "positive_class": lm.classes[1] if lm.task == "binary" else None,
        "threshold": entry.predictor.eval_spec.threshold,
        **out,
        "calibration": "temperature"
        if out["calibrated_probabilities"] is not None
        else "none in this checkpoint",
        "conformal": "fitted" if out["prediction_set"] is not None else "none in this checkpoint",
        "modalities": {
            "used": [m for m, p in present.items() if p],
            "missing": [m for m, p in present.items() if not p],
            "empty": list(prepared.empty),
        },
        "explanation": {"available": False, "reason": "not requested (add ?explain=true)"},
    }


def _add_page_routes(app: FastAPI) -> None:
    page = resources.files("medmodal.serve").joinpath("page")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page.joinpath("index.html").read_text("utf-8"))

    @app.get("/page/{file}", include_in_schema=False)
    async def static(file: str) -> Response:
        if file not in PAGE_TYPES:
            raise HTTPException(404, "no such page file")
        return Response(page.joinpath(file).read_text("utf-8"), media_type=PAGE_TYPES[file])
