"""Coalesced epoch writes (``metrics_flush_seconds``): epochs that end less than the interval
after the last write wait and go in the next one, yet the job's event stream, its metric rows
and its ending are what one write per epoch gives, whatever ends the run (success, cancel,
divergence, a failing write). On migrated databases: the events come from 0006's triggers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Checkpoint, Metric
from app.services.jobs import new_job
from app.spec import JobSpec
from app.training import shapes
from app.training.loop import Trainer, TrainingDiverged
from tests.conftest import migrated_sessions, tiny_spec
from tests.integration.test_events_writers import job_events
from worker.execution import execute
from worker.sinks import SqlSink

TIMING = {"epoch_seconds", "samples_per_second"}  # re-measured: values differ run to run
EPOCHS = 6


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    """A migrated database per dialect (Postgres writes an epoch in one pipelined
    statement, SQLite in two: the streams must be the same)."""
    yield from migrated_sessions(request.param, tmp_path_factory, "trainyard_epochs")


def settings(tmp_path: Path, flush_seconds: float) -> Settings:
    return Settings(home=tmp_path, metrics_flush_seconds=flush_seconds)


def add_job(sessions: sessionmaker[Session], settings: Settings) -> str:
    spec = JobSpec.model_validate(tiny_spec(training={"epochs": EPOCHS, "batch_size": 32}))
    job = new_job("t1", spec, shapes.synthetic_info(spec.data.source), settings)  # type: ignore[arg-type]
    job.id = f"job_{secrets.token_hex(8)}"
    with sessions() as s:
        repo.ensure_tenant(s, "t1", utcnow())
        s.add(job)
        s.commit()
    return job.id


def comparable(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, {**data, "value": None} if data.get("name") in TIMING else data)
            for kind, data in events]


def metric_epochs(sessions: sessionmaker[Session], job_id: str) -> set[int]:
    with sessions() as s:
        return set(s.scalars(select(Metric.epoch).where(Metric.job_id == job_id)))


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of epochs each transaction of the sink stored."""
    sizes: list[int] = []
    write_epochs = SqlSink._write_epochs

    def counted(self: SqlSink, then: Any) -> None:
        sizes.append(len(self._waiting))
        write_epochs(self, then)

    monkeypatch.setattr(SqlSink, "_write_epochs", counted)
    return sizes


def test_waiting_epochs_give_the_event_stream_of_one_write_each(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = count_writes(monkeypatch)
    each = settings(tmp_path, 0)
    first = add_job(sessions, each)
    assert execute(first, sessions, each) == "succeeded"
    assert sizes == [1] * EPOCHS
    sizes.clear()
    waiting = settings(tmp_path, 60)
    second = add_job(sessions, waiting)
    assert execute(second, sessions, waiting) == "succeeded"
    # the first epoch is written at once (live from the start); the rest wait for the
    # last one, whose checkpoint is due
    assert sizes == [1, EPOCHS - 1]
    with sessions() as s:
        one_each, coalesced = job_events(s, first), job_events(s, second)
    kinds = [kind for kind, _ in coalesced]
    assert kinds.count("progress") == EPOCHS and kinds.count("metric") > 2 * EPOCHS
    assert comparable(coalesced) == comparable(one_each)


def test_a_cancelled_run_stores_the_epochs_that_waited(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ended: list[int] = []
    epoch_end = SqlSink.epoch_end

    def counting(self: SqlSink, report: Any) -> None:
        ended.append(report.epoch)
        epoch_end(self, report)

    monkeypatch.setattr(SqlSink, "epoch_end", counting)
    # what the keeper's cancel flag makes should_stop answer, after three epochs
    monkeypatch.setattr(SqlSink, "should_stop",
                        lambda self: "cancelled" if len(ended) >= 3 else None)
    config = settings(tmp_path, 60)
    job_id = add_job(sessions, config)
    assert execute(job_id, sessions, config) == "cancelled"
    assert metric_epochs(sessions, job_id) == {1, 2, 3}
    with sessions() as s:
        progress = [data["epoch"] for kind, data in job_events(s, job_id) if kind == "progress"]
    assert progress == [1, 2, 3]


def test_a_diverged_run_keeps_the_curve_up_to_its_failure(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    train_epoch = Trainer.train_epoch

    def diverging(self: Trainer) -> str | None:
        if self.epoch == 4:
            raise TrainingDiverged("the loss became NaN at epoch 5")
        return train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", diverging)
    config = settings(tmp_path, 60)
    job_id = add_job(sessions, config)
    assert execute(job_id, sessions, config) == "failed:diverged"
    assert metric_epochs(sessions, job_id) == {1, 2, 3, 4}
    with sessions() as s:
        job = repo.get_job_any_tenant(s, job_id)
        assert job is not None and job.status == "failed" and job.epoch == 4


def test_a_write_that_fails_fails_the_job_and_the_retry_does_not_hide_it(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The failing write held waiting epochs; the failure path's own flush finds none (they
    are not tried twice) and the job ends failed: error, never left running."""
    record_epochs = repo.record_epochs

    def broken(session: Session, **kwargs: Any) -> None:
        if any(epoch.epoch == 3 for epoch in kwargs["epochs"]):
            raise RuntimeError("a bug in the epoch's write")
        record_epochs(session, **kwargs)

    monkeypatch.setattr("worker.sinks.repo.record_epochs", broken)
    config = settings(tmp_path, 60)
    job_id = add_job(sessions, config)
    assert execute(job_id, sessions, config) == "failed:error"
    assert metric_epochs(sessions, job_id) == {1}  # epochs 2..6 went in the failed write


def test_a_fenced_out_write_of_several_epochs_stores_nothing(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Another attempt holds the job: the whole write is refused (LeaseLost) and rolled
    back, whichever way the dialect writes it."""
    job_id = add_job(sessions, settings(tmp_path, 0))
    with sessions() as s:
        assert repo.claim(s, job_id, "w", utcnow(), 60) is not None
        s.commit()
    epochs = [repo.EpochRows(e, [{"job_id": job_id, "epoch": e, "split": "train",
                                  "name": "loss", "value": 1.0 / e, "attempt": 2}])
              for e in (1, 2, 3)]
    with sessions() as s, pytest.raises(repo.LeaseLost):
        repo.record_epochs(s, job_id=job_id, attempt=2, epochs=epochs, now=utcnow(), lease=60)
    assert metric_epochs(sessions, job_id) == set()
    with sessions() as s:  # the holder's own write goes through
        repo.record_epochs(s, job_id=job_id, attempt=1, epochs=epochs, now=utcnow(), lease=60)
        s.commit()
    assert metric_epochs(sessions, job_id) == {1, 2, 3}


@pytest.mark.parametrize(("reason", "ended"), [("preempted", "preempted"),
                                               ("timeout", "failed:timeout")])
def test_a_stop_mid_epoch_stores_its_checkpoint_after_the_waiting_epochs(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reason: str, ended: str) -> None:
    """SIGTERM or the time limit mid-epoch: the epochs that waited, then the mid-epoch
    checkpoint (nothing waits by then on one path, two on another: both must store)."""
    epochs_ended: list[int] = []
    asked_in_four: list[int] = []
    epoch_end = SqlSink.epoch_end

    def counting(self: SqlSink, report: Any) -> None:
        epochs_ended.append(report.epoch)
        epoch_end(self, report)

    def stop_at_epoch_four_step_two(self: SqlSink) -> str | None:
        if len(epochs_ended) == 3:
            asked_in_four.append(1)
        return reason if len(asked_in_four) == 2 else None

    monkeypatch.setattr(SqlSink, "epoch_end", counting)
    monkeypatch.setattr(SqlSink, "should_stop", stop_at_epoch_four_step_two)
    config = settings(tmp_path, 60)
    job_id = add_job(sessions, config)
    assert execute(job_id, sessions, config) == ended
    assert metric_epochs(sessions, job_id) == {1, 2, 3}
    with sessions() as s:
        steps = s.execute(select(Checkpoint.epoch, Checkpoint.step)
                          .where(Checkpoint.job_id == job_id)).all()
    assert [tuple(row) for row in steps] == [(3, 1)]


def test_a_sweep_trial_writes_every_epoch_before_its_rule_reads_the_curve(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """The early-termination rule reads the trial's own curve from SQL: no epoch waits."""
    from app.training.sink import EpochReport
    from worker.lease import LeaseKeeper

    config = settings(tmp_path, 60)
    job_id = add_job(sessions, config)
    with sessions() as s:
        assert repo.claim(s, job_id, "w", utcnow(), 60) is not None
        s.commit()
    keeper = LeaseKeeper(sessions, config, job_id=job_id, attempt=1)
    sink = SqlSink(keeper, config, pruner=object())  # type: ignore[arg-type]
    for epoch in (1, 2, 3):
        sink.epoch_end(EpochReport(epoch, {"train": {"loss": 1.0 / epoch}}, None, False))
        assert metric_epochs(sessions, job_id) == set(range(1, epoch + 1))
