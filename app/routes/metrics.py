"""``GET /metrics``: Prometheus text exposition, for operators only.

Mounted only when ``TRAINYARD_METRICS_TOKEN`` is set, and then answered only to
``Authorization: Bearer <that token>``; tenants' API keys do not open it. Without the
setting the path does not exist (404), so the public router shows no infrastructure."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Header
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.config import get_settings
from app.db import get_sessionmaker
from app.errors import Unauthorized
from app.services.operations import exposition

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(authorization: str | None = Header(default=None)) -> Response:
    """A plain ``def``: the scrape reads SQL in a worker thread, never on the event loop."""
    settings = get_settings()
    token = settings.metrics_token
    expected = f"Bearer {token.get_secret_value()}" if token is not None else None
    if expected is None or not secrets.compare_digest((authorization or "").encode(),
                                                      expected.encode()):
        raise Unauthorized("GET /metrics needs Authorization: Bearer <TRAINYARD_METRICS_TOKEN>",
                           headers={"WWW-Authenticate": "Bearer"})
    return Response(exposition(get_sessionmaker(), settings), media_type=CONTENT_TYPE_LATEST)
