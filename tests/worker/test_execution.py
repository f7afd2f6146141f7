"""Worker semantics in-process on SQLite: claim, fencing, corrupt checkpoints, the reaper."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Checkpoint, Job
from app.services import reaper
from app.services.jobs import new_job
from app.spec import JobSpec
from app.training import shapes
from app.training.blobs import sha256
from tests.conftest import tiny_spec
from worker.execution import execute, newest_good_checkpoint


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, lease_seconds=30)


def add_job(sessions: sessionmaker[Session], settings: Settings, **overrides: object) -> Job:
    spec = JobSpec.model_validate(tiny_spec())
    job = new_job("t1", spec, shapes.synthetic_info(spec.data.source), settings)  # type: ignore[arg-type]
    for key, value in overrides.items():
        setattr(job, key, value)
    with sessions() as s:
        repo.ensure_tenant(s, "t1", utcnow())
        s.add(job)
        s.commit()
    return job


def reload(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as s:
        job = repo.get_job_any_tenant(s, job_id)
        assert job is not None
        return job


def test_execute_trains_and_a_second_delivery_is_a_noop(sessions: sessionmaker[Session],
                                                        settings: Settings) -> None:
    job = add_job(sessions, settings)
    assert execute(job.id, sessions, settings) == "succeeded"
    done = reload(sessions, job.id)
    assert done.status == "succeeded" and done.attempt == 1 and done.epoch == 5
    assert done.summary is not None and done.summary["test"]["accuracy"] > 0.8
    assert execute(job.id, sessions, settings) == "not-claimed"
    assert reload(sessions, job.id).attempt == 1


def test_claim_is_exclusive_and_writes_are_fenced(sessions: sessionmaker[Session],
                                                  settings: Settings) -> None:
    job = add_job(sessions, settings)
    now = utcnow()
    with sessions() as s:
        assert repo.claim(s, job.id, "a", now, 30) is not None
        assert repo.claim(s, job.id, "b", now, 30) is None  # lease held
        s.commit()
    later = now + timedelta(seconds=31)
    with sessions() as s:  # the lease expired: another worker takes over as attempt 2
        assert repo.claim(s, job.id, "b", later, 30).attempt == 2  # type: ignore[union-attr]
        s.commit()
    with sessions() as s, pytest.raises(repo.LeaseLost):
        repo.record_epoch(s, job_id=job.id, attempt=1, epoch=1, rows=[], now=later, lease=30)


def test_corrupt_checkpoint_is_skipped_for_the_previous_good_one(
        sessions: sessionmaker[Session], settings: Settings) -> None:
    import numpy as np
    from safetensors.numpy import save

    job = add_job(sessions, settings)
    good = save({"w": np.zeros(3, dtype=np.float32)}, metadata={"trainyard.state": "{}"})
    newer = save({"w": np.ones(3, dtype=np.float32)}, metadata={"trainyard.state": "{}"})
    tampered = newer[:-1] + b"\x01"  # one flipped byte after its sha256 was recorded
    with sessions() as s:
        for epoch, blob, digest in ((1, good, sha256(good)), (2, tampered, sha256(newer))):
            s.add(Checkpoint(job_id=job.id, epoch=epoch, step=0, attempt=1, is_best=False,
                             sha256=digest, size_bytes=len(blob), blob=blob,
                             created_at=utcnow()))
        s.commit()
    assert newest_good_checkpoint(sessions, job.id) == good


def test_reaper_requeues_lost_jobs_and_fails_exhausted_ones(sessions: sessionmaker[Session],
                                                           settings: Settings,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr("app.services.jobs.enqueue_job", lambda job_id, queue: sent.append(job_id))
    past = utcnow() - timedelta(seconds=600)
    lost = add_job(sessions, settings, created_at=past)  # queued, never enqueued
    expired = add_job(sessions, settings, status="running", attempt=1, lease_expires_at=past)
    dead = add_job(sessions, settings, status="running", attempt=3, lease_expires_at=past)
    fresh = add_job(sessions, settings, enqueued_at=utcnow())
    report = reaper.reap_once(sessions, settings)
    assert set(report["enqueued"]) == {lost.id, expired.id} == set(sent)
    assert report["failed"] == [dead.id]
    failed = reload(sessions, dead.id)
    assert failed.status == "failed" and failed.error_reason == "worker_lost"
    assert reload(sessions, fresh.id).status == "queued" and fresh.id not in sent
    assert reaper.reap_once(sessions, settings)["enqueued"] == []  # just enqueued: not again


def test_wall_time_limit_checkpoints_then_fails_with_timeout(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, lease_seconds=30, heartbeat_seconds=0.05,
                        job_time_limit_seconds=0.3)
    job = add_job(sessions, settings)
    with sessions() as s:  # a job long enough to hit the limit
        row = repo.get_job_any_tenant(s, job.id)
        assert row is not None
        row.spec = JobSpec.model_validate(tiny_spec(training={"epochs": 400})).model_dump(
            mode="json")
        s.commit()
    assert execute(job.id, sessions, settings) == "failed:timeout"
    done = reload(sessions, job.id)
    assert done.status == "failed" and done.error_reason == "timeout"
    assert "0.3s" in (done.error_message or "") and done.epoch < 400
    assert newest_good_checkpoint(sessions, job.id) is not None


def test_pickle_offered_as_checkpoint_is_never_loaded(sessions: sessionmaker[Session],
                                                     settings: Settings) -> None:
    import pickle

    marker = Path("/tmp/trainyard-ckpt-pwned")
    marker.unlink(missing_ok=True)

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.write_text, ("pwned",))

    evil = pickle.dumps({"model": Boom()})
    job = add_job(sessions, settings)
    with sessions() as s:  # even with a matching sha256 it is not a safetensors file
        s.add(Checkpoint(job_id=job.id, epoch=3, step=0, attempt=1, is_best=True,
                         sha256=sha256(evil), size_bytes=len(evil), blob=evil,
                         created_at=utcnow()))
        s.commit()
    assert newest_good_checkpoint(sessions, job.id) is None
    assert execute(job.id, sessions, settings) == "succeeded"  # trained from scratch
    assert not marker.exists(), "a pickle payload ran"


def test_reaper_ends_a_cancelled_job_whose_worker_died(sessions: sessionmaker[Session],
                                                      settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim refuses a cancelled job, so only the reaper can end it (and free its slot)."""
    from app.models import Experiment

    sent: list[str] = []
    monkeypatch.setattr("app.services.jobs.enqueue_job", lambda job_id, queue: sent.append(job_id))
    monkeypatch.setattr("app.services.reaper.enqueue_advance",
                        lambda exp_id, queue: sent.append(exp_id))
    now, past = utcnow(), utcnow() - timedelta(seconds=600)
    with sessions() as s:
        repo.ensure_tenant(s, "t1", now)
        s.add(Experiment(id="e1", tenant_id="t1", name="e", kind="sweep", request={},
                         status="running", stage=1, created_at=now, updated_at=now))
        s.commit()
    job = add_job(sessions, settings, status="running", attempt=1, lease_expires_at=past,
                  cancel_requested=True, experiment_id="e1")
    live = add_job(sessions, settings, status="running", attempt=1, cancel_requested=True,
                   lease_expires_at=utcnow() + timedelta(seconds=60))
    assert execute(job.id, sessions, settings) == "not-claimed"  # what every re-send got
    report = reaper.reap_once(sessions, settings)
    assert report["cancelled"] == [job.id] and report["enqueued"] == []
    done = reload(sessions, job.id)
    assert done.status == "cancelled" and done.finished_at is not None
    assert done.lease_expires_at is None and done.attempt == 1
    assert reload(sessions, live.id).status == "running", "a live lease is its worker's to end"
    assert report["advanced"] == ["e1"] and sent == ["e1"]  # its experiment moves on
    with sessions() as s:
        assert repo.count_active_jobs(s, "t1") == 1  # the slot is free again


def test_after_an_outage_the_reaper_leaves_expired_leases_to_their_workers(
        sessions: sessionmaker[Session], settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr("app.services.jobs.enqueue_job", lambda job_id, queue: sent.append(job_id))
    past = utcnow() - timedelta(seconds=600)
    job = add_job(sessions, settings, status="running", attempt=1, lease_expires_at=past)
    assert reaper.reap_once(sessions, settings, take_expired=False)["enqueued"] == []
    assert reload(sessions, job.id).status == "running" and sent == []
    assert reaper.reap_once(sessions, settings)["enqueued"] == [job.id] == sent


def test_lease_is_kept_alive_through_phases_without_batch_boundaries(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """A final phase (sharpness) far longer than the lease: the keeper thread holds it, so a
    second worker cannot take the job over and the first copy's result is kept."""
    settings = Settings(home=tmp_path, lease_seconds=1.0, heartbeat_seconds=0.1)
    job = add_job(sessions, settings)
    slow_finish = tiny_spec(training={"epochs": 2, "batch_size": 32,
                                      "sharpness": {"power_iterations": 200,
                                                    "ascent_steps": 200}})
    set_spec(sessions, job.id, slow_finish)
    stolen: list[int] = []
    done_event = threading.Event()

    def contender() -> None:  # a second worker trying to claim all along (a redelivery)
        while not done_event.wait(0.05):
            with sessions() as s:
                taken = repo.claim(s, job.id, "w2", utcnow(), settings.lease_seconds)
                s.commit()
            if taken is not None:
                stolen.append(taken.attempt)

    thread = threading.Thread(target=contender)
    thread.start()
    try:
        outcome = execute(job.id, sessions, settings)
    finally:
        done_event.set()
        thread.join()
    assert stolen == [], "a second worker took the job over"
    assert outcome == "succeeded"
    done = reload(sessions, job.id)
    assert done.status == "succeeded" and done.attempt == 1
    assert done.summary is not None and "sharpness" in done.summary


def set_spec(sessions: sessionmaker[Session], job_id: str, spec: dict[str, object]) -> None:
    with sessions() as s:
        row = repo.get_job_any_tenant(s, job_id)
        assert row is not None
        row.spec = JobSpec.model_validate(spec).model_dump(mode="json")
        s.commit()


def test_a_stop_during_the_final_phase_hands_the_job_back(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while the final evaluation runs (no batch boundary to notice it): the job is
    handed back with its attempt, and the next attempt redoes only the end phase."""
    from worker.sinks import PREEMPT

    sent: list[str] = []
    monkeypatch.setattr("worker.execution.enqueue_job", lambda job_id, queue: sent.append(job_id))
    settings = Settings(home=tmp_path, lease_seconds=30, heartbeat_seconds=0.02)
    job = add_job(sessions, settings)
    set_spec(sessions, job.id, tiny_spec(training={"epochs": 2, "batch_size": 32, "sharpness": {
        "power_iterations": 100, "ascent_steps": 100}}))
    assert execute(job.id, sessions, settings) == "succeeded"
    first = reload(sessions, job.id).summary
    with sessions() as s:  # as if it had been stopped before its end was written
        s.execute(sa.update(Job).where(Job.id == job.id).values(
            status="queued", attempt=0, summary=None, finished_at=None))
        s.commit()
    PREEMPT.set()
    try:  # resumes from the final checkpoint: no batch boundary before the result
        assert execute(job.id, sessions, settings) == "preempted"
    finally:
        PREEMPT.clear()
    handed_back = reload(sessions, job.id)
    assert handed_back.status == "queued" and handed_back.attempt == 0, handed_back.status
    assert handed_back.summary is None and sent == [job.id]
    assert execute(job.id, sessions, settings) == "succeeded"
    again = reload(sessions, job.id)
    assert again.attempt == 1 and again.summary is not None and first is not None
    assert again.summary["test"] == first["test"]
    assert again.summary["sharpness"] == first["sharpness"]


def test_driver_text_never_reaches_the_error_message(sessions: sessionmaker[Session],
                                                    settings: Settings) -> None:
    from sqlalchemy.exc import IntegrityError

    from worker.retry import public_message

    job = add_job(sessions, settings)
    with sessions() as s, pytest.raises(IntegrityError) as caught:
        s.execute(sa.text("INSERT INTO jobs (id) VALUES (:id)"), {"id": job.id})
    assert "[SQL:" in str(caught.value)  # what the driver says ...
    shown = public_message(caught.value)  # ... and what a user sees
    assert shown.startswith("IntegrityError: ") and "SQL" not in shown
    assert "INSERT" not in shown and job.id not in shown
    assert public_message(ValueError("bad shape")) == "ValueError: bad shape"


def test_the_cores_data_refusal_fails_the_job_as_data(sessions: sessionmaker[Session],
                                                      settings: Settings) -> None:
    """A DataError raised deep in the core (resampling) is the tenant's data: reason data."""
    spec = tiny_spec(data__rows={"kind": "bootstrap", "seed": 0, "weights": [1.0, 2.0]})
    job = add_job(sessions, settings, spec=JobSpec.model_validate(spec).model_dump(mode="json"))
    assert execute(job.id, sessions, settings) == "failed:data"
    done = reload(sessions, job.id)
    assert done.status == "failed" and done.error_reason == "data"
    assert done.error_message is not None
    assert "data.rows.weights has 2 entries" in done.error_message


def test_a_value_error_that_is_not_about_data_is_an_error(sessions: sessionmaker[Session],
                                                          settings: Settings) -> None:
    """A stored spec that no longer parses is the service's bug, not the tenant's data:
    pydantic's ValidationError is a ValueError, and it must not pass for reason data."""
    job = add_job(sessions, settings, spec={**tiny_spec(), "training": {"epochs": -3}})
    assert execute(job.id, sessions, settings) == "failed:error"
    done = reload(sessions, job.id)
    assert done.status == "failed" and done.error_reason == "error"
    assert done.error_message is not None and done.error_message.startswith("ValidationError:")


def test_a_task_starting_after_shutdown_began_is_preempted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent sends SIGUSR2 once; a pool child that picks a task up after it must still
    see the stop (the flag is shared memory made before the fork)."""
    import signal

    from worker import celery_app
    from worker.lease import PREEMPT

    monkeypatch.setattr(celery_app, "_in_pool_child", True)
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        celery_app.arm_preemption()
        assert not PREEMPT.is_set()
        monkeypatch.setattr(celery_app._shutting_down, "value", 1)
        celery_app.arm_preemption()
        assert PREEMPT.is_set()
    finally:
        PREEMPT.clear()
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("failing_epoch", [4, 5])
def test_an_epoch_writes_error_fails_the_job_like_any_error_of_the_run(
        sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch,
        failing_epoch: int) -> None:
    """An error in an epoch's write (not an outage, not a lost lease), whether the epoch
    was written at its end or waited for a later write, ends the job failed: error, never
    left running for the reaper to retry."""
    record_epochs = repo.record_epochs

    def broken(session: Session, **kwargs: Any) -> None:
        if any(epoch.epoch == failing_epoch for epoch in kwargs["epochs"]):
            raise RuntimeError("a bug in the epoch's write")
        record_epochs(session, **kwargs)

    monkeypatch.setattr("worker.sinks.repo.record_epochs", broken)
    job = add_job(sessions, settings)
    assert execute(job.id, sessions, settings) == "failed:error"
    done = reload(sessions, job.id)
    assert done.status == "failed" and done.attempt == 1
