"""GET /v1/catalog: every option, generated from the spec models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.catalog import catalog
from app.deps import TenantDep

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/catalog")
def get_catalog(_tenant: TenantDep) -> dict[str, Any]:
    """Every data source, model, loss, optimizer, schedule and regularization option with
    its parameters, types, defaults, ranges and a one-line description."""
    return catalog()
