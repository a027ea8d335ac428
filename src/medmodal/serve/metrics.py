"""Prometheus text metrics without a client library: request counts and a latency histogram.

:class:`Metrics` is also a plain ASGI middleware; requests are labelled by the route template
(``/v1/models/{name}/predict``), never by anything a client sent.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from typing import Any

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUTES = ("/healthz", "/metrics", "/v1/models", "/openapi.json", "/")


def route_of(path: str) -> str:
    """The route template of a path (unknown paths are one label)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{name}/predict" if path.endswith("/predict") else "/v1/models/{name}"
    if path.startswith("/page/"):
        return "/page/{file}"
    return "other"


class Metrics:
    """Counts by (method, route, status) and a latency histogram by route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.labels: dict[str, str] = {}  # info metrics: name -> value, exposed as a label

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.counts[(method, route, status)] += 1
            self.hist[route][bisect.bisect_left(BUCKETS, seconds)] += 1
            self.sums[route] += seconds

    def text(self) -> str:
        """The exposition format (version 0.0.4)."""
        lines = [
            "# HELP medmodal_requests_total HTTP requests by method, route and status.",
            "# TYPE medmodal_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self.counts.items()):
                labels = f'method="{method}",route="{route}",status="{status}"'
                lines.append(f"medmodal_requests_total{{{labels}}} {n}")
            lines += [
                "# HELP medmodal_request_seconds Request latency in seconds.",
                "# TYPE medmodal_request_seconds histogram",
            ]
            for route, counts in sorted(self.hist.items()):
                total = 0
                for le, c in zip((*BUCKETS, "+Inf"), counts, strict=True):
                    total += c
                    lines.append(
                        f'medmodal_request_seconds_bucket{{route="{route}",le="{le}"}} {total}'
                    )
                lines.append(
                    f'medmodal_request_seconds_sum{{route="{route}"}} {self.sums[route]:.6f}'
                )
                lines.append(f'medmodal_request_seconds_count{{route="{route}"}} {total}')
            for name, value in sorted(self.gauges.items()):
                lines += [f"# TYPE {name} gauge", f"{name} {value:g}"]
            for name, text in sorted(self.labels.items()):
                lines += [f"# TYPE {name} gauge", f'{name}{{value="{text}"}} 1']
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request into a :class:`Metrics`."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = route_of(scope.get("path", ""))
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
