"""Worker semantics in-process on SQLite: claim, fencing, corrupt checkpoints, the reaper."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.db import make_engine
from app.models import Base, Checkpoint, Job
from app.services import reaper
from app.services.jobs import new_job
from app.spec import JobSpec
from app.training import shapes
from app.training.blobs import sha256
from tests.conftest import tiny_spec
from worker.execution import execute, newest_good_checkpoint


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite+pysqlite:///{tmp_path / 'w.db'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


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
