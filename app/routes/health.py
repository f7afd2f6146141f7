"""Liveness and readiness (SQL and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.services import health

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "SQL or broker unreachable"}})
def readyz() -> JSONResponse:
    checks = health.readiness()
    ok = all(checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable",
                         "checks": {k: "ok" if v else "down" for k, v in checks.items()}},
                        status_code=200 if ok else 503)
