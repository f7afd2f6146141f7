"""HTTP series for Prometheus: each request counted and timed by its route template."""

from __future__ import annotations

import time
from typing import Any

from starlette.routing import Match

from app.observability import HTTP_REQUESTS, HTTP_SECONDS


def route_template(app: Any, scope: dict[str, Any]) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path, so a
    label has as many values as the API has routes. A request the router never reached
    (refused by the gate) is matched here; a path no route serves is ``unmatched``."""
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in app.router.routes:
            match = candidate.matches(scope)[0]
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:  # the path, another method
                partial = candidate
        route = route or partial
    return str(getattr(route, "path", "unmatched"))


class HttpMetrics:
    """ASGI middleware: counts each HTTP request by method, route template and status, and
    times it to its response headers (a streamed response, such as server-sent events, is
    not timed by how long it streams)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, api = time.perf_counter(), scope["app"]
        status = 500  # unless a response starts: an escaping error is answered 500 outside

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                HTTP_SECONDS.labels(scope["method"], route_template(api, scope)).observe(
                    time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            HTTP_REQUESTS.labels(scope["method"], route_template(api, scope), str(status)).inc()
