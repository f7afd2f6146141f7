"""Idempotent creation, the same for jobs, experiments and datasets: an ``Idempotency-Key``
is a unique (tenant, key) column, and the request's hash is stored with the row it made."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict


class Replayable(Protocol):
    @property
    def request_hash(self) -> str | None: ...


R = TypeVar("R", bound=Replayable)


def request_hash(fields: Any, content: bytes = b"") -> str:
    """What makes two requests the same: their JSON fields (key order aside) and, for an
    upload, the file's bytes."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    digest.update(b"\0")
    digest.update(content)
    return digest.hexdigest()


def _replay(existing: R | None, key: str, digest: str) -> R | None:
    """The row a key already created, or 409 if it was created from a different request."""
    if existing is not None and existing.request_hash != digest:
        raise Conflict(f"Idempotency-Key '{key}' was used with a different body")
    return existing


def create_once(session: Session, *, key: str | None, digest: str,
                find: Callable[[str], R | None],
                insert: Callable[[str | None], R]) -> tuple[R, bool]:
    """Replay the row ``key`` made, or ``insert(key)`` (which adds the rows to the session)
    and COMMIT. Returns (row, created).

    Two requests with the same new key race to the unique index: the loser's COMMIT fails,
    and it replays the winner's row instead."""
    key = key or None  # an empty header is no key
    if key and (existing := _replay(find(key), key, digest)):
        return existing, False
    row = insert(key)
    try:
        session.commit()
        return row, True
    except IntegrityError:
        session.rollback()
        winner = _replay(find(key), key, digest) if key else None
        if winner is None:  # not a key race: some other constraint failed
            raise
        return winner, False
