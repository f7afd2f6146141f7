"""Liveness and readiness (SQL and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db import get_engine
from app.queue import broker_reachable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def sql_reachable() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/readyz", responses={503: {"description": "SQL or broker unreachable"}})
def readyz() -> JSONResponse:
    checks = {"sql": sql_reachable(), "broker": broker_reachable()}
    ok = all(checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable",
                         "checks": {k: "ok" if v else "down" for k, v in checks.items()}},
                        status_code=200 if ok else 503)
