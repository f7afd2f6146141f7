"""The worker registry and the ``no_worker`` rule, in-process on SQLite (no broker).

Workers are rows written through the service, with timestamps in the past where a test
needs a worker that was seen long ago: the rule reads nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Experiment, Job, Worker
from app.services import reaper, workers
from app.services.jobs import new_job
from app.spec import JobSpec
from app.training import shapes
from tests.conftest import tiny_spec

AFTER = 60.0  # no_worker_after_seconds in these tests
LOST = 10.0


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, no_worker_after_seconds=AFTER, worker_lost_seconds=LOST)


def add_job(sessions: sessionmaker[Session], settings: Settings, *, queue: str,
            age: float, status: str = "queued") -> str:
    spec = JobSpec.model_validate(tiny_spec())
    job = new_job("t1", spec, shapes.synthetic_info(spec.data.source), settings,  # type: ignore[arg-type]
                  queue=queue)
    job.created_at = utcnow() - timedelta(seconds=age)
    job.status = status
    with sessions() as s:
        repo.ensure_tenant(s, "t1", utcnow())
        s.add(job)
        s.commit()
    return job.id


def add_worker(sessions: sessionmaker[Session], queues: list[str], *, seen_ago: float = 0.0,
               stopped: bool = False) -> str:
    worker_id = f"wk_{len(queues)}_{seen_ago}_{stopped}_{utcnow().timestamp()}"
    workers.register(sessions, worker_id=worker_id, node="w@host", queues=queues,
                     concurrency=1)
    if stopped:
        workers.mark_stopped(sessions, worker_id)
    seen = utcnow() - timedelta(seconds=seen_ago)
    with sessions() as s:
        s.execute(update(Worker).where(Worker.id == worker_id).values(last_seen_at=seen))
        s.commit()
    return worker_id


def job(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as s:
        row = repo.get_job_any_tenant(s, job_id)
        assert row is not None
        return row


def test_a_queue_no_worker_consumes_fails_its_old_jobs_only(
        sessions: sessionmaker[Session], settings: Settings) -> None:
    add_worker(sessions, ["cpu"])
    stuck = add_job(sessions, settings, queue="gpu", age=AFTER + 5)
    young = add_job(sessions, settings, queue="gpu", age=1)
    failed = workers.fail_jobs_without_worker(sessions, settings)
    assert failed == [stuck]
    row = job(sessions, stuck)
    assert (row.status, row.error_reason) == ("failed", "no_worker")
    assert "'gpu'" in (row.error_message or "")
    assert "trainyard worker --queues gpu" in (row.error_message or "")
    assert row.finished_at is not None
    assert job(sessions, young).status == "queued"


def test_a_backlog_on_a_live_queue_is_never_failed(sessions: sessionmaker[Session],
                                                   settings: Settings) -> None:
    add_worker(sessions, ["cpu", "gpu"], seen_ago=LOST / 2)  # live: beat within worker_lost
    old = [add_job(sessions, settings, queue="gpu", age=AFTER * 10) for _ in range(3)]
    assert workers.fail_jobs_without_worker(sessions, settings) == []
    assert {job(sessions, j).status for j in old} == {"queued"}


def test_the_window_counts_from_the_last_worker_seen(sessions: sessionmaker[Session],
                                                     settings: Settings) -> None:
    """A gpu worker died 30 s ago (lost, not live): an hour-old job waits out the window."""
    gone = add_worker(sessions, ["gpu"], seen_ago=AFTER / 2)
    stuck = add_job(sessions, settings, queue="gpu", age=3600)
    assert workers.fail_jobs_without_worker(sessions, settings) == []
    with sessions() as s:  # time passes: the worker was last seen before the window
        s.execute(update(Worker).where(Worker.id == gone)
                  .values(last_seen_at=utcnow() - timedelta(seconds=AFTER + 1)))
        s.commit()
    assert workers.fail_jobs_without_worker(sessions, settings) == [stuck]


def test_a_stopped_worker_is_not_live(sessions: sessionmaker[Session],
                                      settings: Settings) -> None:
    add_worker(sessions, ["gpu"], seen_ago=AFTER + 1, stopped=True)
    stuck = add_job(sessions, settings, queue="gpu", age=AFTER + 5)
    assert workers.fail_jobs_without_worker(sessions, settings) == [stuck]


def test_running_and_finished_jobs_are_left_alone(sessions: sessionmaker[Session],
                                                  settings: Settings) -> None:
    running = add_job(sessions, settings, queue="gpu", age=AFTER * 2, status="running")
    done = add_job(sessions, settings, queue="gpu", age=AFTER * 2, status="succeeded")
    assert workers.fail_jobs_without_worker(sessions, settings) == []
    assert (job(sessions, running).status, job(sessions, done).status) == ("running",
                                                                           "succeeded")


def test_zero_disables_the_rule(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    off = Settings(home=tmp_path, no_worker_after_seconds=0)
    stuck = add_job(sessions, off, queue="gpu", age=10 * 24 * 3600)
    assert workers.fail_jobs_without_worker(sessions, off) == []
    assert job(sessions, stuck).status == "queued"


def test_the_reaper_applies_the_rule(sessions: sessionmaker[Session], settings: Settings,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []  # the broker is not part of this test: record what would be sent
    monkeypatch.setattr("app.services.jobs.enqueue_job", lambda job_id, queue: sent.append(job_id))
    stuck = add_job(sessions, settings, queue="gpu", age=AFTER + 5)
    assert stuck in reaper.reap_once(sessions, settings)["failed"]
    assert job(sessions, stuck).error_reason == "no_worker"


def test_registry_states_and_heartbeat(sessions: sessionmaker[Session],
                                       settings: Settings) -> None:
    live = add_worker(sessions, ["cpu"])
    lost = add_worker(sessions, ["gpu"], seen_ago=LOST * 3)
    stopped = add_worker(sessions, ["gpu"], stopped=True)
    states = {w.id: w for w in workers.list_workers(sessions, settings)}
    assert {k: states[k].state for k in (live, lost, stopped)} == {
        live: "live", lost: "lost", stopped: "stopped"}
    assert states[live].queues == ("cpu",) and states[live].concurrency == 1
    workers.beat(sessions, worker_id=lost, node="w@host", queues=["gpu", "cpu"], concurrency=1)
    back = {w.id: w for w in workers.list_workers(sessions, settings)}[lost]
    assert back.state == "live" and back.queues == ("cpu", "gpu")
    with sessions() as s:  # a row deleted under a running worker: its next beat re-registers
        s.execute(delete(Worker).where(Worker.id == live))
        s.commit()
    workers.beat(sessions, worker_id=live, node="w@host", queues=["cpu"], concurrency=1)
    assert live in {w.id for w in workers.list_workers(sessions, settings)}


def test_a_stalled_experiment_is_advanced_where_a_worker_listens(
        sessions: sessionmaker[Session], settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its gpu children failed `no_worker`: an advance sent to 'gpu' would never run."""
    sent: list[tuple[str, str]] = []  # the broker is not part of this test
    monkeypatch.setattr("app.services.reaper.enqueue_advance",
                        lambda experiment_id, queue: sent.append((experiment_id, queue)))
    now = utcnow()
    with sessions() as s:
        repo.ensure_tenant(s, "t1", now)
        s.add(Experiment(id="exp_1", tenant_id="t1", name="e", kind="sweep", request={},
                         status="running", stage=1, created_at=now, updated_at=now))
        s.commit()
    child = add_job(sessions, settings, queue="gpu", age=AFTER + 5)
    with sessions() as s:
        s.execute(update(Job).where(Job.id == child).values(experiment_id="exp_1"))
        s.commit()
    add_worker(sessions, ["cpu"])
    assert workers.fail_jobs_without_worker(sessions, settings) == [child]
    assert reaper.advance_stalled_experiments(sessions, settings) == ["exp_1"]
    assert sent == [("exp_1", "cpu")]
    add_worker(sessions, ["gpu"])  # a gpu worker is back: its children's queue again
    reaper.advance_stalled_experiments(sessions, settings)
    assert sent[-1] == ("exp_1", "gpu")


def test_after_an_outage_the_registry_settles_before_the_rule_applies(
        sessions: sessionmaker[Session], settings: Settings) -> None:
    """During a long outage no worker can beat, so a live queue looks unconsumed when SQL
    returns: the API's pass and the reaper sit that out instead of failing its backlog."""
    add_worker(sessions, ["gpu"], seen_ago=AFTER * 20)  # alive, but its beats could not land
    backlog = add_job(sessions, settings, queue="gpu", age=AFTER * 20)

    def down() -> Session:
        raise OSError("connection refused")

    watch = workers.QueueWatch(down, settings)  # type: ignore[arg-type]
    assert watch.pass_once(now=1000.0) == []  # the outage, seen by the API
    watch.sessions = sessions  # SQL is back
    settle = workers.registry_settle_seconds(settings)
    assert watch.pass_once(now=1000.0 + settle - 1) == []
    assert reaper.reap_once(sessions, settings, take_expired=False)["failed"] == []
    assert job(sessions, backlog).status == "queued"
    # the worker really is gone: once the registry has settled, the rule applies again
    assert watch.pass_once(now=1000.0 + settle + 1) == [backlog]
