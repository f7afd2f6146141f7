"""Database writes that survive a database blink: retry with exponential backoff.

A connection error is retried for ``TRAINYARD_DB_RETRY_SECONDS``; past that the write
raises ``DatabaseUnavailable``, which the worker treats as an infrastructure fault (the job
is handed back, not failed). Its message never carries the driver's text (host, address,
SQL): that goes to the log only.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

log = logging.getLogger("trainyard.worker")
T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """SQL stayed unreachable for the whole retry window."""


# When any process of this worker last failed to reach SQL (time.time()). Created at import,
# in the worker's main process before the pool forks, so the children share it: a child
# that has just started may not have seen the outage its parent's reaper saw.
_last_failure = multiprocessing.Value("d", 0.0, lock=False)


def note_db_failure() -> None:
    _last_failure.value = time.time()


def db_failed_within(seconds: float) -> bool:
    """Whether this worker saw SQL unreachable in the last ``seconds``: leases that expired
    meanwhile belong to workers that could not heartbeat, not to dead ones."""
    return time.time() - _last_failure.value < seconds


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection, as opposed to a bad statement."""
    return isinstance(exc, DBAPIError) and (isinstance(exc, OperationalError)
                                            or exc.connection_invalidated)


def with_retry(sessions: sessionmaker[Session], work: Callable[[Session], T], *,
               give_up_after: float | None = None) -> T:
    """Run ``work`` in one transaction; on a connection error, back off and run it again.

    Safe because every worker write is idempotent (upserts, fenced UPDATEs).
    """
    window = get_settings().db_retry_seconds if give_up_after is None else give_up_after
    delay, deadline = 0.2, time.monotonic() + window
    while True:
        try:
            with sessions() as session:
                result = work(session)
                session.commit()
                return result
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            note_db_failure()
            if time.monotonic() + delay > deadline:
                log.error("database unreachable for %.0fs; giving up: %s", window, exc)
                raise DatabaseUnavailable(
                    f"the database was unreachable for {window:g}s") from exc
            log.warning("database unavailable (%s); retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def public_message(exc: BaseException) -> str:
    """What a user may see: never a driver's text (host, address, SQL); the log has it."""
    if type(exc).__module__.split(".")[0] in ("sqlalchemy", "psycopg", "psycopg2", "sqlite3"):
        return f"{type(exc).__name__}: a database error on the worker (details in its log)"
    return f"{type(exc).__name__}: {exc}"
