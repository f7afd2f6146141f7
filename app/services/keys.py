"""API keys: stored as SHA-256 hashes, compared by hash lookup plus a constant-time check."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.orm import Session

from app import repository as repo
from app.clock import utcnow
from app.errors import Unauthorized

KEY_PREFIX = "ty_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, *, tenant_id: str) -> tuple[str, str]:
    """A new key for the tenant: (key id, the key itself, shown once)."""
    now = utcnow()
    repo.ensure_tenant(session, tenant_id, now)
    key_id = f"key_{secrets.token_hex(6)}"
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    repo.add_key(session, key_id=key_id, tenant_id=tenant_id, key_hash=hash_key(key), now=now)
    return key_id, key


def authenticate(session: Session, authorization: str | None) -> str:
    """The tenant owning a bearer key; Unauthorized for a missing, wrong or revoked key."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("send 'Authorization: Bearer <key>' (create one with "
                           "`trainyard keys create TENANT`)")
    presented = authorization[7:].strip()
    digest = hash_key(presented)
    key = repo.active_key(session, digest)
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        raise Unauthorized("the API key is not valid or has been revoked")
    return key.tenant_id
