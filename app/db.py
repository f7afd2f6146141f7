"""Engine and sessions. SQLite (embedded) gets WAL and a busy timeout so the API
and a worker can write at once; Postgres gets a pool that pings a connection idle for
more than a second before handing it out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # Takes effect only while the file has no table, i.e. when the database is created:
    # deletes then hand freed pages back (``PRAGMA incremental_vacuum``, app/services/
    # deletion.py). An older database keeps its mode until a one-off ``VACUUM``.
    cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=10,
                           connect_args={"connect_timeout": 5})
    event.listen(engine, "checkout", _ping_if_idle)
    event.listen(engine, "checkin", _note_use)
    return engine


# A pooled connection idle longer than this is pinged before use (a restarted server left
# it dead); one handed back within it is not. SQLAlchemy's pool_pre_ping pings on every
# checkout: a round trip and ~0.3 ms of the API's CPU per request (bench/README.md 3b),
# for connections a busy API had used milliseconds before. A connection that died in that
# second fails its statement as with no ping at all (a 503, or the worker's retry), and the
# pool then drops every connection older than the failure.
PING_IF_IDLE_SECONDS = 1.0


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    returned = record.info.get("returned_at")  # none yet: a connection made just now
    if returned is None or time.monotonic() - returned <= PING_IF_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_conn.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        # the ping opened a transaction: end it, or a reader session could not switch the
        # connection to autocommit (psycopg refuses while INTRANS)
        dbapi_conn.rollback()
    except Exception as error:  # the pool reconnects (up to three times) on this error
        raise exc.DisconnectionError() from error


def _note_use(_dbapi_conn: Any, record: Any) -> None:
    record.info["returned_at"] = time.monotonic()


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def get_reader_sessionmaker() -> sessionmaker[Session]:
    """Sessions for reads only: on Postgres every statement autocommits, so a read costs no
    BEGIN and no ROLLBACK round trip (two of a polling request's four). Statements are not
    in one snapshot; a route reading twice must be correct with the later one newer. SQLite
    has no round trips to save, and switching its mode costs a PRAGMA each way."""
    return _readers(get_engine())


@lru_cache(maxsize=4)  # per engine (tests make several); an engine has one
def _readers(engine: Engine) -> sessionmaker[Session]:
    bind = (engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql" else engine)
    return sessionmaker(bind=bind, expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
