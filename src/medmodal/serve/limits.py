"""Request limits: body size (413 beyond it, checked before and while reading), request time, parts.

:class:`BodyLimit` is a plain ASGI middleware: a Content-Length above the limit is refused at once,
and a body that streams past it is cut off with the same 413. :func:`read_parts` parses a multipart
body held in memory into ``{part name: Part}`` (files are never spooled to disk).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """``max_bytes`` per request body, ``timeout`` seconds per prediction, ``max_parts``."""

    max_bytes: int = 50 * MB
    timeout: float = 30.0
    max_parts: int = 32


class TooLarge(Exception):
    """The body is larger than the limit."""


class BadRequest(Exception):
    """The request cannot be parsed; ``part`` names the part when one is at fault."""

    def __init__(self, message: str, part: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.part = part
        self.status = status


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(send, self.max_bytes)
            return
        seen = 0
        sent = False

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge
            return message

        async def watch(message: dict[str, Any]) -> None:
            nonlocal sent
            sent = sent or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watch)
        except TooLarge:
            if not sent:
                await too_large(send, self.max_bytes)


async def too_large(send: Any, max_bytes: int) -> None:
    body = json.dumps(
        {"detail": f"request body is larger than the limit of {max_bytes / MB:g} MB"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Part:
    """One multipart part: its bytes, and the file name the client gave (None for a field)."""

    data: bytes
    filename: str | None = None


def read_parts(content_type: str | None, body: bytes, max_parts: int) -> dict[str, Part]:
    """``{name: Part}`` of a multipart/form-data body (in memory); BadRequest when malformed."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest("send multipart/form-data: one part per modality", status=415)
    parts: dict[str, Part] = {}
    state: dict[str, Any] = {"headers": {}, "field": b"", "buf": bytearray()}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state["field"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]
        state["field"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["buf"] += data[start:end]

    def on_part_end() -> None:
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise BadRequest("a multipart part has no name")
        if name in parts:
            raise BadRequest(f"part {name!r} is sent twice", part=name)
        if len(parts) >= max_parts:
            raise BadRequest(f"more than {max_parts} parts")
        fname = opts.get(b"filename")
        parts[name] = Part(bytes(state["buf"]), None if fname is None else fname.decode())
        state.update(headers={}, field=b"", buf=bytearray())

    callbacks = {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except BadRequest:
        raise
    except Exception as exc:  # python-multipart raises its own error types
        raise BadRequest(f"malformed multipart body: {exc}", status=400) from None
    return parts
