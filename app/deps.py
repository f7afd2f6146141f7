"""FastAPI dependencies as typed aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.services import keys

bearer = HTTPBearer(auto_error=False, description="An API key from `trainyard keys create`.")


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def current_tenant(request: Request, session: SessionDep,
                   _cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The key's tenant. ``app.main.Gate`` has checked it before the body was read; the
    dependency stays so OpenAPI shows the security scheme (and an app without Gate is safe)."""
    checked = request.scope.get("trainyard.tenant")
    if isinstance(checked, str):
        return checked
    tenant = keys.authenticate(session, request.headers.get("authorization"))
    session.rollback()  # end the read transaction; handlers start their own
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
