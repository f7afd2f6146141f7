"""A tenant's storage and its quotas: what GET /v1/usage shows and what uploads and
submissions are checked against.

Storage is the bytes of the tenant's datasets, checkpoints and model exports, summed in SQL
(each row carries its size). A check locks the tenant's row first (as the concurrency cap
does), so concurrent uploads are counted one after another and cannot pass the quota
together. A job is refused while the tenant is at or over its storage quota (its
checkpoints would add more); a running job is never stopped for it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app import lifecycle_repository as store
from app import repository as repo
from app.clock import utcnow
from app.config import Limits
from app.errors import QuotaExceeded


class StorageBytes(BaseModel):
    datasets: int
    checkpoints: int
    model_exports: int
    total: int


class Quota(BaseModel):
    storage_bytes: int = Field(description="Datasets, checkpoints and model exports together.")
    datasets: int


class Usage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "storage_bytes": {"datasets": 52311, "checkpoints": 1048576, "model_exports": 412301,
                          "total": 1513188},
        "datasets": 1, "quota": {"storage_bytes": 10737418240, "datasets": 500}}]})

    storage_bytes: StorageBytes
    datasets: int = Field(description="How many datasets the tenant holds.")
    quota: Quota


def quota(session: Session, tenant_id: str, limits: Limits) -> Quota:
    storage, datasets = store.quota_overrides(session, tenant_id)
    return Quota(storage_bytes=limits.quota_storage_bytes if storage is None else storage,
                 datasets=limits.quota_datasets if datasets is None else datasets)


def usage(session: Session, tenant_id: str, limits: Limits) -> Usage:
    data_bytes, data_count, ckpt, exports = store.storage_used(session, tenant_id)
    return Usage(storage_bytes=StorageBytes(datasets=data_bytes, checkpoints=ckpt,
                                            model_exports=exports,
                                            total=data_bytes + ckpt + exports),
                 datasets=data_count, quota=quota(session, tenant_id, limits))


def check_dataset(session: Session, tenant_id: str, size_bytes: int, limits: Limits, *,
                  lock: bool = True) -> None:
    """Room for one more dataset of ``size_bytes``, or 403 naming usage and quota. With
    ``lock``, holds the tenant's lock until the caller's COMMIT; without, a cheap early
    refusal before an upload is parsed (its transaction ended, no lock held meanwhile)."""
    if lock:
        repo.lock_tenant(session, tenant_id, utcnow())
    now = usage(session, tenant_id, limits)
    if not lock:
        session.rollback()
    if now.datasets + 1 > now.quota.datasets:
        _refuse(session, f"the tenant holds {now.datasets} datasets, its quota "
                         f"({now.quota.datasets}); delete some first")
    if now.storage_bytes.total + size_bytes > now.quota.storage_bytes:
        _refuse(session, f"storing {size_bytes:,} more bytes would take the tenant's storage "
                         f"from {now.storage_bytes.total:,} past its quota of "
                         f"{now.quota.storage_bytes:,} bytes; delete datasets or jobs first")


def check_storage(session: Session, tenant_id: str, limits: Limits) -> None:
    """A new job needs the tenant under its storage quota (its checkpoints add to it)."""
    now = usage(session, tenant_id, limits)
    if now.storage_bytes.total >= now.quota.storage_bytes:
        _refuse(session, f"the tenant's storage, {now.storage_bytes.total:,} bytes, is at its "
                         f"quota of {now.quota.storage_bytes:,} bytes; delete datasets or jobs "
                         "before submitting more")


def _refuse(session: Session, message: str) -> None:
    session.rollback()  # release the tenant's lock now
    raise QuotaExceeded(message)
