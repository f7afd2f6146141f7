"""Logging for every Trainyard process: text (the default) or one JSON object per line.

``TRAINYARD_LOG_FORMAT=json`` writes each record as JSON (python-json-logger) with
``timestamp``, ``level``, ``logger`` and ``message``, plus ``request_id``, ``tenant``,
``job_id`` and ``experiment_id`` when the record was made while they were known: inside an
HTTP request (``RequestId`` below; the tenant and the path's ids are read from the request
as routing and authentication find them) or inside a worker's task (``bind``).

Light on purpose: the standard library only at import, so the CLI's server commands can
configure logging before they load anything else.
"""

from __future__ import annotations

import logging
import logging.config
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REQUEST_ID_HEADER = b"x-request-id"
# A client's own id is kept when it looks like one (uuids, ULIDs, trace ids); anything else
# (empty, too long, spaces, quotes, control characters) is replaced, so what reaches a log
# line or a response header is always a short token.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
TENANT_SCOPE_KEY = "trainyard.tenant"  # where app.main's Gate stores the request's tenant
PATH_IDS = ("job_id", "experiment_id")
# Libraries whose INFO lines are noise to a person running Trainyard: alembic announces each
# plugin it loads (`trainyard migrate` prints the schema version itself), httpx each request
# of `trainyard run --demo`'s watch.
QUIET = ("alembic", "httpx", "httpcore")

_request: ContextVar[Mapping[str, Any] | None] = ContextVar("trainyard_request", default=None)
_bound: ContextVar[Mapping[str, str] | None] = ContextVar("trainyard_log_fields", default=None)


def context_fields() -> dict[str, str]:
    """The ids known where the caller runs: the current request's, then bound ones."""
    fields: dict[str, str] = {}
    scope = _request.get()
    if scope is not None:
        fields["request_id"] = scope["trainyard.request_id"]
        if (tenant := scope.get(TENANT_SCOPE_KEY)) is not None:
            fields["tenant"] = str(tenant)
        params = scope.get("path_params") or {}
        fields.update({name: str(params[name]) for name in PATH_IDS if name in params})
    fields.update(_bound.get() or {})
    return fields


def bind_fields(**fields: str) -> Token[Mapping[str, str] | None]:
    """Attach ids (``job_id=...``) to every record made after this in this context, until
    ``unbind(token)``; ``bind`` is the block form."""
    return _bound.set({**(_bound.get() or {}), **fields})


def unbind(token: Token[Mapping[str, str] | None]) -> None:
    _bound.reset(token)


@contextmanager
def bind(**fields: str) -> Iterator[None]:
    token = bind_fields(**fields)
    try:
        yield
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    """Copies the known ids onto each record (the JSON formatter writes them as fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context_fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter  # only where JSON is asked for

        return JsonFormatter(["levelname", "name", "message"], timestamp=True,
                             rename_fields={"levelname": "level", "name": "logger"})
    return logging.Formatter(TEXT_FORMAT, "%H:%M:%S")


def handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Our handler: ``fmt`` (text or json) to ``stream`` (stderr), ids attached."""
    out = logging.StreamHandler(stream)
    out.setFormatter(formatter(fmt))
    out.addFilter(ContextFilter())
    return out


def logging_config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for our handler on the root logger (uvicorn takes
    the same dict, so each of its spawned server processes applies it too)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"trainyard": {"()": "app.logs.handler", "fmt": fmt}},
        "root": {"handlers": ["trainyard"], "level": level},
        "loggers": {name: {"level": "WARNING"} for name in QUIET},
    }


def configure(fmt: str, level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(fmt, level))
    logging.captureWarnings(True)  # a library's warning is a record too (JSON in JSON mode)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new one."""
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            if SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestId:
    """ASGI middleware: every HTTP request gets an id (the client's sane ``X-Request-ID`` or
    a new one), echoed in the response's ``X-Request-ID`` and carried by every log record
    made while the request is served."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        scope["trainyard.request_id"] = request_id
        _request.set(scope)  # a task per request: the id never leaks into another request

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != REQUEST_ID_HEADER]
                message["headers"] = [*headers, (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)
