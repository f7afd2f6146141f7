"""The lease keeper's deferred writes: an epoch's metric rows are stored on a writer thread
while the next epoch trains, yet every write still lands in the order it was asked for,
and a deferred write's error reaches the training thread at its next write."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.config import Settings
from worker.lease import LeaseKeeper


def _keeper(sessions: sessionmaker[Session], tmp_path: Path) -> LeaseKeeper:
    # a heartbeat period longer than the test: only the writes under test touch SQL
    settings = Settings(home=tmp_path, heartbeat_seconds=300)
    return LeaseKeeper(sessions, settings, job_id="job_x", attempt=1)


def _create_log(session: Session) -> None:
    session.execute(text("CREATE TABLE IF NOT EXISTS log (n INTEGER)"))


def _append(n: int) -> Callable[[Session], object]:
    return lambda session: session.execute(text("INSERT INTO log VALUES (:n)"), {"n": n})


def _logged(session: Session) -> list[int]:
    return [row[0] for row in session.execute(text("SELECT n FROM log ORDER BY rowid"))]


def test_a_deferred_write_runs_off_the_calling_thread_while_it_goes_on(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    release, started = threading.Event(), threading.Event()
    writers: list[str] = []

    def slow(session: Session) -> None:
        writers.append(threading.current_thread().name)
        started.set()
        assert release.wait(10)
        _append(1)(session)

    with _keeper(sessions, tmp_path) as keeper:
        keeper.write(_create_log)
        keeper.write_later(slow)
        assert started.wait(10)  # the write is under way and has not finished...
        with sessions() as s:
            assert _logged(s) == []  # ...and the caller got here all the same
        release.set()
        assert keeper.write(_logged) == [1]  # a write waits for the deferred one first
    assert writers and writers[0] != threading.current_thread().name


def test_writes_land_in_the_order_they_were_asked_for(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    stored: list[int] = []
    with _keeper(sessions, tmp_path) as keeper:
        keeper.write(_create_log)
        for n in range(20):
            keeper.write_later(_append(n), then=functools.partial(stored.append, n))
        keeper.write(_append(20))
        assert keeper.write(_logged) == list(range(21))
    assert stored == list(range(20))  # each ``then`` after its write, in order


def test_a_deferred_writes_error_reaches_the_next_write(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    def fenced_out(session: Session) -> None:
        raise repo.LeaseLost("job_x")

    with _keeper(sessions, tmp_path) as keeper:
        keeper.write_later(fenced_out)
        with pytest.raises(repo.LeaseLost):
            keeper.write(_create_log)  # the job's end must not be written after a lost epoch


def test_leaving_the_claim_waits_for_the_deferred_write(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with _keeper(sessions, tmp_path) as keeper:
        keeper.write(_create_log)
        keeper.write_later(_append(7))
    with sessions() as s:
        assert _logged(s) == [7]
