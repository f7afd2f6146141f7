"""Database writes that survive a database blink: retry with exponential backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("trainyard.worker")
T = TypeVar("T")


def with_retry(sessions: sessionmaker[Session], work: Callable[[Session], T], *,
               give_up_after: float = 300.0) -> T:
    """Run ``work`` in one transaction; on a connection error, back off and run it again.

    Safe because every worker write is idempotent (upserts, fenced UPDATEs).
    """
    delay, deadline = 0.2, time.monotonic() + give_up_after
    while True:
        try:
            with sessions() as session:
                result = work(session)
                session.commit()
                return result
        except DBAPIError as exc:
            transient = isinstance(exc, OperationalError) or exc.connection_invalidated
            if not transient or time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
