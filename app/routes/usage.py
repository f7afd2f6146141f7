"""/v1/usage: the tenant's storage and quotas."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import SessionDep, SettingsDep, TenantDep
from app.services import usage as service
from app.services.usage import Usage

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", response_model=Usage)
def get_usage(session: SessionDep, settings: SettingsDep, tenant: TenantDep) -> Usage:
    """Bytes stored (datasets, checkpoints, model exports) and datasets held, beside the
    quotas that uploads and submissions are checked against."""
    return service.usage(session, tenant, settings.limits)
