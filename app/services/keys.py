"""API keys: stored as SHA-256 hashes, compared by hash lookup plus a constant-time check."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from sqlalchemy.orm import Session

from app import repository as repo
from app.clock import utcnow
from app.config import get_settings
from app.errors import Unauthorized

KEY_PREFIX = "ty_"
CACHE_MAX_KEYS = 10_000  # a bound on memory; a full cache drops its oldest entry


class KeyCache:
    """Valid keys seen in the last ``ttl`` seconds (hash -> tenant, expiry), so a poller
    does not cost a SQL lookup per request. Only accepted keys are cached (a wrong key
    always goes to SQL). The bound: a key revoked at time T is refused from T + ttl on,
    in every API process (each has its own cache, filled before T)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> str | None:
        entry = self._entries.get(digest)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def put(self, digest: str, tenant_id: str, ttl: float, *, read_at: float) -> None:
        """Trust the key until ``read_at + ttl``: counted from before the SQL read, so a
        revocation committed while the lookup ran is still honoured within ``ttl``."""
        if ttl <= 0:
            return
        with self._lock:
            self._entries.pop(digest, None)
            if len(self._entries) >= CACHE_MAX_KEYS:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                if len(self._entries) >= CACHE_MAX_KEYS:
                    del self._entries[next(iter(self._entries))]
            self._entries[digest] = (tenant_id, read_at + ttl)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


cache = KeyCache()


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


def _digest(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("send 'Authorization: Bearer <key>' (create one with "
                           "`trainyard keys create TENANT`)")
    return hash_key(authorization[7:].strip())


def cached_tenant(authorization: str | None) -> str | None:
    """The tenant of a key accepted within TRAINYARD_KEY_CACHE_SECONDS; None: ask SQL.
    Touches no database, so the API can call it on its event loop."""
    try:
        return cache.get(_digest(authorization))
    except Unauthorized:
        return None


def authenticate(session: Session, authorization: str | None) -> str:
    """The tenant owning a bearer key; Unauthorized for a missing, wrong or revoked key."""
    digest = _digest(authorization)
    tenant = cache.get(digest)
    if tenant is not None:
        return tenant
    read_at = time.monotonic()
    key = repo.active_key(session, digest)
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        raise Unauthorized("the API key is not valid or has been revoked")
    cache.put(digest, key.tenant_id, get_settings().key_cache_seconds, read_at=read_at)
    return key.tenant_id
