"""Response shapes shared by the routes: created resources, JSON bodies, ETags and 304."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import orjson
from fastapi import Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

JSON = "application/json"


def created(body: BaseModel, was_created: bool, location: str) -> JSONResponse:
    """201 for a new resource, 200 for an idempotent replay of it; Location either way."""
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if was_created else 200,
                        headers={"Location": location})


def rows_json(content: Any, etag: str | None = None) -> Response:
    """Plain dicts and lists (rows read as tuples) encoded by orjson; NaN and infinities
    become null, as pydantic writes them."""
    return Response(orjson.dumps(content), media_type=JSON,
                    headers={"ETag": etag} if etag else None)


def etag(*validator: Any) -> str:
    """A strong ETag: a digest of values that change whenever the representation does
    (their repr: enums, datetimes and None are told apart)."""
    return '"' + hashlib.blake2b(repr(validator).encode(), digest_size=12).hexdigest() + '"'


def not_modified(if_none_match: str | None, tag: str) -> Response | None:
    """304 with the ETag when If-None-Match names it (``*`` too, the resource exists); a
    weak tag matches as well (RFC 9110 weak comparison, which GET uses)."""
    if if_none_match is None:
        return None
    sent = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return Response(status_code=304, headers={"ETag": tag}) if tag in sent or "*" in sent else None


class Bodies:
    """Encoded bodies by (resource, ETag), least recently used out past ``max_bytes``.

    The ETag is a digest of everything the body is built from, so a hit is the body a fresh
    read would build: a poller that sends no If-None-Match then costs one read of the tag's
    columns, not the whole row and its encoding. A body over a sixteenth of the budget (a
    summary with many predictions) is not kept. Shared by the route's worker threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._bodies: OrderedDict[tuple[str, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...]) -> bytes | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def put(self, key: tuple[str, ...], body: bytes) -> None:
        if len(body) > self.max_bytes // 16:
            return
        with self._lock:
            if (old := self._bodies.pop(key, None)) is not None:
                self.size -= len(old)
            self._bodies[key] = body
            self.size += len(body)
            while self.size > self.max_bytes:
                _, dropped = self._bodies.popitem(last=False)
                self.size -= len(dropped)


def tagged_json(body: bytes, etag: str) -> Response:
    return Response(body, media_type=JSON, headers={"ETag": etag})
