"""FastAPI dependencies as typed aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Settings, get_settings
from app.db import get_reader_sessionmaker, get_sessionmaker
from app.services import keys

bearer = HTTPBearer(auto_error=False, description="An API key from `trainyard keys create`.")


async def get_session() -> AsyncIterator[Session]:
    """Async so that opening costs no thread hop (a Session connects on first use); the
    close, which hands the connection back to the pool (a rollback: I/O), runs in one."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

T = TypeVar("T")


async def read_in_one_hop(read: Callable[[Session], T]) -> T:
    """``read`` with its own reader session (autocommit: see ``get_reader_sessionmaker``),
    opened, used and closed in one worker thread. It must not write.

    For the polling routes: a thread hop costs 0.1-0.3 ms of CPU, and ``SessionDep`` under a
    sync route takes two (the route, then the close that hands the connection back), about
    half of such a request's CPU (bench/README.md 3b)."""
    def run() -> T:
        with get_reader_sessionmaker()() as session:
            return read(session)

    return await run_in_threadpool(run)


def _lookup(authorization: str | None) -> str:
    with get_sessionmaker()() as session:
        return keys.authenticate(session, authorization)


async def current_tenant(request: Request, _cred: Annotated[HTTPAuthorizationCredentials | None,
                                                            Depends(bearer)]) -> str:
    """The key's tenant. ``app.main.Gate`` has checked it before the body was read; the
    dependency stays so OpenAPI shows the security scheme (and an app without Gate is safe).
    Async: reading what Gate stored needs no thread."""
    checked = request.scope.get("trainyard.tenant")
    if isinstance(checked, str):
        return checked
    return await run_in_threadpool(_lookup, request.headers.get("authorization"))


TenantDep = Annotated[str, Depends(current_tenant)]
