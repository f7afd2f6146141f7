"""Every writer of a job's or an experiment's state records the change as an event in its own
transaction (migration 0006's triggers), on SQLite and on Postgres: submit, claim, epoch,
hand-back, cancel (queued, running, expired), finish, the reaper's failures, the no_worker
rule's bulk UPDATE, an experiment's stages and its cancel. Sequences are contiguous per
subject, a rolled-back write leaves neither an event nor a gap, and a metric rewritten with
the same value (a resumed epoch) adds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.db import make_engine
from app.models import Experiment, ExperimentEvent, Job, JobEvent
from app.statuses import ExperimentStatus, FailureReason, JobStatus
from tests.conftest import ROOT, migrated_sessions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    """One migrated database per dialect for the module (the tests use distinct ids)."""
    yield from migrated_sessions(request.param, tmp_path_factory, "trainyard_events")


def new_job(job_id: str, experiment_id: str | None = None) -> Job:
    now = utcnow()
    return Job(id=job_id, tenant_id="t", experiment_id=experiment_id, name="n", spec={},
               task="classification", queue="cpu", status=JobStatus.QUEUED, attempt=0,
               max_attempts=3, cancel_requested=False, epoch=0, total_epochs=3,
               created_at=now - timedelta(hours=1), updated_at=now)


def job_events(session: Session, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, data) in sequence order, checking the sequence is 1..n and ends at the head."""
    rows = session.execute(select(JobEvent.seq, JobEvent.kind, JobEvent.data)
                           .where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert session.get(Job, job_id, populate_existing=True).event_seq == len(rows)  # type: ignore[union-attr]
    return [(r.kind, r.data) for r in rows]


def statuses(session: Session, job_id: str) -> list[tuple[str, bool] | str]:
    return [(d["status"], d["cancel_requested"]) if k == "status" else k
            for k, d in job_events(session, job_id)]


def commit(sessions: sessionmaker[Session], write: Any) -> Any:
    with sessions() as session:
        out = write(session)
        session.commit()
        return out


def test_a_jobs_life_is_recorded_write_by_write(sessions: sessionmaker[Session]) -> None:
    commit(sessions, lambda s: repo.ensure_tenant(s, "t", utcnow()))
    commit(sessions, lambda s: repo.add_job(s, new_job("j1")))
    commit(sessions, lambda s: repo.claim(s, "j1", "w", utcnow(), 60))
    commit(sessions, lambda s: repo.heartbeat(s, "j1", 1, utcnow(), 60))  # no event
    rows = [{"job_id": "j1", "epoch": 1, "split": "train", "name": n, "value": v, "attempt": 1}
            for n, v in (("loss", 0.5), ("accuracy", 0.75))]
    record: dict[str, Any] = {"job_id": "j1", "attempt": 1, "epoch": 1, "rows": rows, "lease": 60}
    commit(sessions, lambda s: repo.record_epoch(s, now=utcnow(), **record))
    commit(sessions, lambda s: repo.record_epoch(s, now=utcnow(), **record))  # same: nothing
    commit(sessions, lambda s: repo.release(s, job_id="j1", attempt=1, now=utcnow()))
    commit(sessions, lambda s: repo.claim(s, "j1", "w", utcnow(), 60))
    changed = [{**rows[0], "value": 0.25}]  # a re-measured value is an event again
    commit(sessions, lambda s: repo.record_epoch(s, now=utcnow(), **{**record, "rows": changed}))
    commit(sessions, lambda s: repo.cancel(s, s.get(Job, "j1"), utcnow()))  # running: flagged
    commit(sessions, lambda s: repo.finish(s, job_id="j1", attempt=1, now=utcnow(),
                                           status=JobStatus.CANCELLED))
    with sessions() as session:
        assert statuses(session, "j1") == [
            ("queued", False), ("running", False), "progress", "metric", "metric",
            ("queued", False), ("running", False), "metric", ("running", True),
            ("cancelled", True)]
        events = job_events(session, "j1")
        assert events[2][1] == {"epoch": 1, "total_epochs": 3}
        assert events[3][1] == {"epoch": 1, "split": "train", "name": "loss", "value": 0.5}
        assert events[7][1]["value"] == 0.25
        assert events[5][1]["attempt"] == 0 and events[6][1]["attempt"] == 1


def test_the_reaper_and_the_api_record_their_endings(sessions: sessionmaker[Session]) -> None:
    commit(sessions, lambda s: repo.ensure_tenant(s, "t", utcnow()))
    for job_id in ("lost", "queued", "expired", "stranded"):
        commit(sessions, lambda s, j=job_id: repo.add_job(s, new_job(j)))
    commit(sessions, lambda s: repo.fail_unclaimable(s, "lost", utcnow(), message="gone",
                                                     reason=FailureReason.WORKER_LOST))
    commit(sessions, lambda s: repo.cancel(s, s.get(Job, "queued"), utcnow()))
    commit(sessions, lambda s: repo.claim(s, "expired", "w", utcnow(), 0.001))
    commit(sessions, lambda s: repo.cancel(s, s.get(Job, "expired"), utcnow()))
    later = utcnow() + timedelta(seconds=5)
    commit(sessions, lambda s: repo.cancel_expired(s, "expired", later))
    failed = commit(sessions, lambda s: repo.fail_queued_in_queue(
        s, "cpu", created_before=utcnow(), now=utcnow(), reason=FailureReason.NO_WORKER,
        message="no worker"))
    assert failed == ["stranded"]
    with sessions() as session:
        assert job_events(session, "lost")[-1][1] == {
            "status": "failed", "attempt": 0, "cancel_requested": False,
            "reason": "worker_lost", "message": "gone"}
        assert statuses(session, "queued") == [("queued", False), ("cancelled", True)]
        assert statuses(session, "expired")[-2:] == [("running", True), ("cancelled", True)]
        assert job_events(session, "stranded")[-1][1]["reason"] == "no_worker"


def test_an_experiment_records_its_children_stages_and_cancel(
        sessions: sessionmaker[Session]) -> None:
    commit(sessions, lambda s: repo.ensure_tenant(s, "t", utcnow()))
    now = utcnow()

    def create(session: Session) -> None:
        repo.add_experiment(session, Experiment(
            id="x", tenant_id="t", name="n", kind="cross_validation", request={},
            status=ExperimentStatus.RUNNING, stage=0, created_at=now, updated_at=now))
        session.flush()
        for child in ("c1", "c2"):
            repo.add_job(session, new_job(child, "x"))

    commit(sessions, create)
    commit(sessions, lambda s: repo.claim(s, "c1", "w", utcnow(), 60))
    commit(sessions, lambda s: repo.bump_stage(s, "x", 0, utcnow()))
    commit(sessions, lambda s: repo.add_job(s, new_job("c3", "x")))  # a later stage's child
    commit(sessions, lambda s: repo.cancel_experiment(s, s.get(Experiment, "x"), utcnow()))
    with sessions() as session:
        rows = session.execute(select(ExperimentEvent.seq, ExperimentEvent.kind,
                                      ExperimentEvent.data)
                               .where(ExperimentEvent.experiment_id == "x")
                               .order_by(ExperimentEvent.seq)).all()
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]
        assert [(r.kind, r.data.get("job_id") or r.data.get("status") or r.data["stage"])
                for r in rows] == [("status", "running"), ("child", "c1"), ("child", "c2"),
                                   ("progress", 1), ("child", "c3"), ("status", "cancelled")]
        assert statuses(session, "c1")[-1] == ("running", True)  # stops at its next batch
        assert statuses(session, "c2") == [("queued", False), ("cancelled", True)]


def test_a_rolled_back_write_leaves_no_event_and_no_gap(sessions: sessionmaker[Session]) -> None:
    commit(sessions, lambda s: repo.ensure_tenant(s, "t", utcnow()))
    commit(sessions, lambda s: repo.add_job(s, new_job("j")))
    with sessions() as session:
        repo.claim(session, "j", "w", utcnow(), 60)
        session.rollback()
    commit(sessions, lambda s: repo.claim(s, "j", "w", utcnow(), 60))
    with sessions() as session:
        assert statuses(session, "j") == [("queued", False), ("running", False)]


SQLITE_TRIGGERS = {"jobs_events_insert", "jobs_child_event", "jobs_progress_event",
                   "jobs_status_event", "metrics_event_insert", "metrics_event_update",
                   "experiments_events_insert", "experiments_progress_event",
                   "experiments_status_event"}


def test_later_sqlite_migrations_keep_the_event_triggers(tmp_path: Path) -> None:
    """SQLite drops a table's triggers with the table: a later migration that rebuilds
    jobs, metrics or experiments (Alembic's batch "move and copy") must recreate them.
    Checked at head and after stepping every later revision down and up again."""
    url = f"sqlite+pysqlite:///{tmp_path / 'steps.db'}"
    env = {**os.environ, "TRAINYARD_DATABASE_URL": url}

    def alembic(*args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr

    def triggers() -> set[str]:
        engine = make_engine(url)
        with engine.connect() as conn:
            names = {str(n) for n in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars()}
        engine.dispose()
        return names

    alembic("upgrade", "head")
    assert triggers() >= SQLITE_TRIGGERS
    alembic("downgrade", "0006")
    alembic("upgrade", "head")
    assert triggers() >= SQLITE_TRIGGERS
