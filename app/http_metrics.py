"""HTTP series for Prometheus: each request counted and timed by its route template."""

from __future__ import annotations

import re
import time
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.routing import compile_path

from app.observability import HTTP_REQUESTS, HTTP_SECONDS


def route_template(app: Any, scope: dict[str, Any]) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path, so a
    label has as many values as the API has routes. A request the router never reached
    (refused by the gate) is matched against the documented paths; a path the API does not
    serve is ``unmatched``."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    path = scope["path"]
    return next((template for pattern, template in _templates(app) if pattern.match(path)),
                "unmatched")


@lru_cache(maxsize=8)
def _templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """Every documented path, in the router's order (the OpenAPI document is cached)."""
    return [(compile_path(template)[0], template) for template in app.openapi()["paths"]]


# Any token is a valid method on the wire; a label takes only these (the rest are "other").
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
        method = scope["method"] if scope["method"] in METHODS else "other"
        status = 500  # unless a response starts: an escaping error is answered 500 outside

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _latency(method, route_template(api, scope)).observe(
                    time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            _requests(method, route_template(api, scope), status).inc()


# prometheus_client's labels() validates and locks on every call; each label set is bounded
# (methods x routes x statuses), so its child is looked up once.
@lru_cache(maxsize=4096)
def _latency(method: str, route: str) -> Histogram:
    return HTTP_SECONDS.labels(method, route)


@lru_cache(maxsize=4096)
def _requests(method: str, route: str, status: int) -> Counter:
    return HTTP_REQUESTS.labels(method, route, str(status))
