"""The prediction service: FastAPI app, tokens, de-identification, audit log, micro-batching.

* :mod:`.app` ``create_app``; :mod:`.server` ``serve`` (load checkpoints, run uvicorn);
* :mod:`.auth` hashed bearer tokens; :mod:`.deid` DICOM PS3.15 basic profile;
* :mod:`.audit_log` hash-chained JSON lines + ``verify``; :mod:`.batching` the micro-batcher;
* :mod:`.limits` body size, memory, decode slots, timeout, multipart in memory; :mod:`.card`
  model cards; :mod:`.parts` / :mod:`.records` request parts -> a row of inputs;
* :mod:`.inference` one served model (PyTorch or ONNX Runtime); :mod:`.metrics` Prometheus text;
* ``page/`` the static web page served at ``/``.

Nothing is imported here (FastAPI and uvicorn are optional).
"""

__all__ = [
    "app",
    "audit_log",
    "auth",
    "batching",
    "card",
    "deid",
    "explain",
    "inference",
    "limits",
    "metrics",
    "parts",
    "records",
    "schemas",
    "server",
]
