"""Request limits: body size, memory, concurrent decodes, time, parts.

* :class:`BodyLimit` (ASGI middleware): a Content-Length above ``max_bytes`` is a 413 at once, a
  body that streams past it is cut off with the same 413; every body is charged (twice: the body
  and its parsed parts) to a shared pool of ``bodies_mb``, and a request that does not fit is a
  503 with ``Retry-After`` before its body is read.
* :class:`DecodeSlots`: at most ``max_decodes`` requests decode (or explain) at once, each in a
  worker thread (never on the event loop) under its decode limits (:mod:`medmodal.data.readers.budget`:
  pixels, voxels, samples and ``request_mb`` of estimated peak memory, checked from headers
  before decoding); a request that waits longer than ``queue_wait`` for a slot is a 503 with
  ``Retry-After``. So decoding memory stays within ``max_decodes x request_mb`` and bodies
  within ``2 x bodies_mb`` (:attr:`Limits.memory_budget_mb`), whatever the load.
* :func:`read_parts` parses a multipart body held in memory into ``{part name: Part}`` (files are
  never spooled to disk); files sent under one name are kept together (a WFDB header and the
  signal files it names).

``timeout`` covers a whole predict request: reading the body, decoding, inference and the
explanation; the server also closes connections that send no complete request headers within
``header_timeout`` (:mod:`medmodal.serve.server`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from python_multipart.multipart import MultipartParser, parse_options_header

from medmodal.data.readers.budget import DecodeLimits, decode_limits

MB = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one request may take (see the module doc); the defaults are the CLI's."""

    max_bytes: int = 50 * MB
    timeout: float = 30.0
    max_parts: int = 32
    header_timeout: float = 10.0
    max_pixels: int = 36_000_000
    max_voxels: int = 512**3
    max_samples: int = 50_000_000
    request_mb: float = 512.0
    max_decodes: int = 2
    bodies_mb: float = 256.0
    queue_wait: float = 10.0

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            self.max_pixels, self.max_voxels, self.max_samples, int(self.request_mb * MB)
        )

    @property
    def memory_budget_mb(self) -> float:
        """Memory requests may hold beyond the loaded models: bodies and decodes."""
        return 2 * self.bodies_mb + self.max_decodes * self.request_mb


class TooLarge(Exception):
    """The body is larger than the limit."""


class Busy(Exception):
    """The server is at its memory or decode bound: 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BodyPool:
    """Bytes of request bodies held at once (thread-safe), bounded by ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.capacity and n > 0:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class BadRequest(Exception):
    """The request cannot be parsed; ``part`` names the part when one is at fault."""

    def __init__(self, message: str, part: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.part = part
        self.status = status


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (declared or streamed); 503 when the
    body does not fit in the pool of bodies held at once (charged twice: body and parts)."""

    def __init__(self, app: Any, max_bytes: int, pool: BodyPool | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.pool = pool or BodyPool(1 << 62)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(send, self.max_bytes)
            return
        charged = 2 * int(declared) if declared is not None and declared.isdigit() else 0
        if not self.pool.take(charged):
            await error(send, 503, "the server holds as many uploads as it may; retry", retry=2)
            return
        seen = 0
        sent = False

        async def limited() -> dict[str, Any]:
            nonlocal seen, charged
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge
            if 2 * seen > charged:  # a streamed body without (or beyond) a Content-Length
                if not self.pool.take(2 * seen - charged):
                    raise Busy("the server holds as many uploads as it may; retry")
                charged = 2 * seen
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
        except Busy as exc:
            if not sent:
                await error(send, 503, str(exc), retry=exc.retry_after)
        finally:
            self.pool.give(charged)


async def too_large(send: Any, max_bytes: int) -> None:
    await error(send, 413, f"request body is larger than the limit of {max_bytes / MB:g} MB")


async def error(send: Any, status: int, detail: str, retry: int | None = None) -> None:
    """A JSON error response that closes the connection (the body may be unread)."""
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    body = json.dumps({"detail": detail, "part": None}).encode()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DecodeSlots:
    """At most ``n`` jobs (decoding, explaining) at once, each in its own worker thread under
    the decode limits; a job that waits more than ``wait`` seconds for a slot raises Busy.
    Waiters sleep until a slot is given back (woken from the worker thread), never poll."""

    def __init__(self, n: int, wait: float, limits: DecodeLimits | None = None) -> None:
        self.n, self.wait, self.limits = n, wait, limits
        self.busy = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="medmodal-decode")

    def _take(self) -> bool:
        with self._lock:
            if self.busy >= self.n:
                return False
            self.busy += 1
            return True

    def _give(self) -> None:
        with self._lock:
            self.busy -= 1
            while self._waiters:  # wake the first waiter still waiting
                loop, fut = self._waiters.popleft()
                if not fut.done() and not loop.is_closed():
                    loop.call_soon_threadsafe(_wake, fut)
                    break

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while not self._take():
            left = deadline - loop.time()
            if left <= 0:
                with self._lock:
                    self.refused += 1
                raise Busy(f"{self.n} requests are decoding; retry", retry_after=2)
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiters.append((loop, fut))
            try:
                await asyncio.wait_for(asyncio.shield(fut), min(left, 1.0))
            except TimeoutError:
                pass
            finally:
                fut.cancel()  # a wake-up meant for it goes to the next waiter

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread once a slot is free (Busy after ``wait`` s)."""
        await self._acquire()

        def job() -> T:
            try:
                with decode_limits(self.limits):
                    return fn(*args)
            finally:
                self._give()

        future = self._pool.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():  # never started: its slot was not given back
                self._give()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass
class Part:
    """One multipart part: its bytes, the file name the client gave (None for a field), and
    further files sent under the same name (``extra``: a WFDB header's signal files)."""

    data: bytes
    filename: str | None = None
    extra: list[Part] = field(default_factory=list)


def read_parts(content_type: str | None, body: bytes, max_parts: int) -> dict[str, Part]:
    """``{name: Part}`` of a multipart/form-data body (in memory); BadRequest when malformed."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest("send multipart/form-data: one part per modality", status=415)
    parts: dict[str, Part] = {}
    state: dict[str, Any] = {"headers": {}, "field": b"", "chunks": [], "n": 0}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state["field"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]
        state["field"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["chunks"].append(data[start:end])

    def on_part_end() -> None:
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise BadRequest("a multipart part has no name")
        state["n"] += 1
        if state["n"] > max_parts:
            raise BadRequest(f"more than {max_parts} parts")
        fname = opts.get(b"filename")
        part = Part(b"".join(state["chunks"]), None if fname is None else _text(fname))
        if name not in parts:
            parts[name] = part
        elif part.filename is not None and parts[name].filename is not None:
            parts[name].extra.append(part)  # files of one record
        else:
            raise BadRequest(f"part {name!r} is sent twice", part=name)
        state.update(headers={}, field=b"", chunks=[])

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


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
