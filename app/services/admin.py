"""The operator's commands (`trainyard migrate`, `keys`, `reap`) as services that own their
transaction: the CLI calls these and never opens a session or calls the repository."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from app import lifecycle_repository
from app import repository as repo
from app.clock import utcnow
from app.config import get_settings
from app.db import get_sessionmaker, session_scope
from app.services import keys, retention
from app.services.reaper import reap_once
from app.services.usage import Usage, usage

# alembic.ini and migrations/ sit beside the packages in the source tree (hence the editable
# install in the Dockerfile), not inside site-packages
SOURCE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class KeyInfo:
    """One API key as an operator sees it: never its hash."""

    id: str
    tenant_id: str
    created_at: datetime
    revoked: bool


def upgrade_schema() -> str:
    """Migrate the database to head; returns where it is, without credentials."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(SOURCE_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(SOURCE_ROOT / "migrations"))
    config.attributes["configure_logger"] = False  # keep the caller's logging (format, levels)
    command.upgrade(config, "head")
    return get_settings().resolved_database_url.split("@")[-1]


def create_key(tenant_id: str) -> tuple[str, str]:
    """A new key for the tenant (created if new): (key id, the key itself, shown once)."""
    with session_scope() as session:
        return keys.create(session, tenant_id=tenant_id)


def list_keys() -> list[KeyInfo]:
    with session_scope() as session:
        return [KeyInfo(k.id, k.tenant_id, k.created_at, k.revoked_at is not None)
                for k in repo.list_keys(session)]


def revoke_key(key_id: str) -> bool:
    """False when no active key has this id (unknown or already revoked)."""
    with session_scope() as session:
        return repo.revoke_key(session, key_id, utcnow())


def reap() -> dict[str, list[str]]:
    """One reaper pass, as the API's background reaper runs it."""
    return reap_once(get_sessionmaker(), get_settings())


def collect_garbage() -> dict[str, int]:
    """Retention batches until one finds nothing due (``trainyard gc``); the counts."""
    settings, total = get_settings(), {"jobs": 0, "experiments": 0}
    while True:
        batch = retention.collect_once(get_sessionmaker(), settings)
        total["jobs"] += len(batch["jobs"])
        total["experiments"] += len(batch["experiments"])
        if not batch["jobs"] and not batch["experiments"]:
            return total


def set_quota(tenant_id: str, *, storage_bytes: int | None, datasets: int | None) -> None:
    """A tenant's own quotas (``trainyard tenants quota``); None puts the default back."""
    with session_scope() as session:
        repo.ensure_tenant(session, tenant_id, utcnow())
        lifecycle_repository.set_quota_overrides(session, tenant_id, storage_bytes, datasets)


def tenant_usage(tenant_id: str) -> Usage:
    """What GET /v1/usage shows the tenant, for the operator."""
    with session_scope() as session:
        return usage(session, tenant_id, get_settings().limits)
