"""The Postgres pool pings only connections idle past PING_IF_IDLE_SECONDS: such a connection
whose server side died is replaced unseen; one used within the second is handed out as is
(its statement fails once, and the pool then drops it and every older connection)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import db
from tests.conftest import _pg_admin

pytestmark = pytest.mark.integration


@pytest.fixture()
def engine(postgres_url: str) -> Iterator[Engine]:
    made = db.make_engine(postgres_url)
    yield made
    made.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def kill(pid: int) -> None:
    with _pg_admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_an_idle_connection_killed_by_the_server_is_replaced_unseen(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = backend_pid(engine)
    kill(first)
    monkeypatch.setattr(db, "PING_IF_IDLE_SECONDS", 0.0)  # everything counts as idle
    assert backend_pid(engine) != first  # the ping failed; a new connection answered


def test_a_connection_used_just_now_is_not_pinged(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = backend_pid(engine)
    kill(first)
    monkeypatch.setattr(db, "PING_IF_IDLE_SECONDS", 3600.0)
    with pytest.raises(OperationalError) as failed:
        backend_pid(engine)
    assert failed.value.connection_invalidated
    assert backend_pid(engine) != first  # the pool let the dead connection go


def test_a_reader_session_leaves_no_transaction_open_on_postgres(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The polling routes' reads autocommit: no BEGIN before them, no ROLLBACK after."""
    from psycopg.pq import TransactionStatus

    monkeypatch.setattr(db, "get_engine", lambda: engine)
    with db.get_reader_sessionmaker()() as session:
        connection = session.connection()
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
        raw = connection.connection.dbapi_connection
        assert raw is not None and raw.info.transaction_status == TransactionStatus.IDLE
    with Session(engine) as session:  # other sessions still run in a transaction
        connection = session.connection()
        connection.execute(text("SELECT 1"))
        raw = connection.connection.dbapi_connection
        assert raw is not None and raw.info.transaction_status == TransactionStatus.INTRANS


def test_a_pinged_connection_serves_reader_and_ordinary_sessions(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ping's own transaction is ended: a reader session can then switch the connection
    to autocommit (psycopg refuses while a transaction is open), and nothing stays open."""
    from psycopg.pq import TransactionStatus

    monkeypatch.setattr(db, "get_engine", lambda: engine)
    monkeypatch.setattr(db, "PING_IF_IDLE_SECONDS", 0.0)  # every checkout pings
    for _ in range(3):
        backend_pid(engine)  # a connection in the pool, returned, pinged at the next use
        with db.get_reader_sessionmaker()() as session:
            connection = session.connection()
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
            raw = connection.connection.dbapi_connection
            assert raw is not None and raw.info.transaction_status == TransactionStatus.IDLE
