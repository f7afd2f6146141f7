"""Run one job: claim its lease, resume from its newest good checkpoint, train, record the end.

The Celery task is a thin wrapper around ``execute``, so this runs (and is
tested) in any process.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import export_repository as exports
from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Job
from app.observability import observe_job_attempt
from app.queue import enqueue_export, enqueue_job
from app.services import warm_start
from app.spec import JobSpec
from app.statuses import FailureReason, JobStatus
from app.training.blobs import CorruptBlob, read_metadata, verify
from app.training.data import DataError
from app.training.experiments.roles import FinalRole, MemberRole, RoundRole, parse_role
from app.training.loop import TrainingDiverged
from app.training.results import Outcome
from app.training.runner import run_spec
from worker import registry
from worker.advance import request_advance
from worker.datasets import dataset_loader
from worker.lease import LeaseKeeper
from worker.metered_sink import MeteredSink
from worker.pruning import trial_pruner
from worker.retry import (
    DatabaseUnavailable,
    db_failed_within,
    is_transient,
    note_db_failure,
    public_message,
    with_retry,
)
from worker.sinks import SqlSink

log = logging.getLogger("trainyard.worker")


def worker_identity() -> str:
    """``<opaque worker id>:<pid>``, the lease owner tenants see: no host name."""
    return f"{registry.worker_id()}:{os.getpid()}"


def newest_good_checkpoint(sessions: sessionmaker[Session], job_id: str) -> bytes | None:
    """The newest checkpoint whose sha256 verifies; corrupt ones are skipped, never loaded."""
    with sessions() as session:
        for ckpt in repo.checkpoints_newest_first(session, job_id):
            try:
                verify(ckpt.blob, ckpt.sha256)
                read_metadata(ckpt.blob)
                return ckpt.blob
            except CorruptBlob:
                log.error("job %s: checkpoint epoch %s step %s is corrupt; skipping it",
                          job_id, ckpt.epoch, ckpt.step)
    return None


# Outcomes after which this job's experiment has nothing new to look at.
NOT_ENDED = ("not-claimed", "lease-lost", "preempted", "database-unavailable")


def execute(job_id: str, sessions: sessionmaker[Session], settings: Settings) -> str:
    """Run the job if this call wins its lease; returns what happened (for logs and tests).

    Never raises for a lost lease or a database outage: those are not the job's fault.
    When an experiment's child ends, its experiment is asked to advance."""
    started = time.monotonic()
    outcome = _execute(job_id, sessions, settings)
    observe_job_attempt(outcome, time.monotonic() - started)
    if outcome not in NOT_ENDED:
        try:
            request_advance(sessions, job_id)
        except Exception as exc:  # the reaper advances stalled experiments
            log.warning("job %s: could not ask its experiment to advance (%s)", job_id,
                        type(exc).__name__)
    return outcome


def _execute(job_id: str, sessions: sessionmaker[Session], settings: Settings) -> str:
    owner = worker_identity()
    window = settings.db_retry_seconds
    # Right after an outage an expired lease is its live owner's to hand back (the reaper
    # re-sends the job after the grace if the owner is really gone).
    take_expired = not db_failed_within(settings.lease_seconds)
    try:
        job = with_retry(sessions, lambda s: repo.claim(
            s, job_id, owner, utcnow(), settings.lease_seconds, take_expired=take_expired),
            give_up_after=window)
        if job is None:
            with_retry(sessions, lambda s: repo.cancelled_while_queued(s, job_id, utcnow()),
                       give_up_after=window)
            return "not-claimed"
    except DatabaseUnavailable:  # nothing claimed: the reaper re-enqueues it later
        return "database-unavailable"
    log.info("job %s: attempt %d on %s", job_id, job.attempt, owner)
    queue = job.queue
    keeper = LeaseKeeper(sessions, settings, job_id=job_id, attempt=job.attempt,
                         on_release=lambda: _requeue(job_id, queue))
    try:
        with keeper:
            return _train_and_record(job, sessions, settings, keeper, owner)
    except repo.LeaseLost:
        if keeper.released:
            return "preempted"
        log.warning("job %s: lease lost (attempt %d); stopping this copy", job_id, job.attempt)
        return "lease-lost"
    except DatabaseUnavailable:
        return _hand_back_after_outage(sessions, settings, job_id, job.attempt, queue)


def _train_and_record(job: Job, sessions: sessionmaker[Session], settings: Settings,
                      keeper: LeaseKeeper, owner: str) -> str:
    """LeaseLost and DatabaseUnavailable propagate; every other ending is written."""
    sink: SqlSink | None = None
    try:
        sink = MeteredSink(keeper, settings, pruner=trial_pruner(sessions, job))
        with sessions() as session:
            init_blob = warm_start.source_blob(session, job)
        outcome = run_spec(JobSpec.model_validate(job.spec), sink,
                           resume=newest_good_checkpoint(sessions, job.id),
                           uploaded=dataset_loader(sessions, job.tenant_id), task=job.task,  # type: ignore[arg-type]
                           init_blob=init_blob, cpu_threads=settings.torch_threads or None)
        sink.flush()  # the epochs that wait; a write's error is the run's, whatever ended it
    except (repo.LeaseLost, DatabaseUnavailable):
        raise
    except TrainingDiverged as exc:
        return _fail(keeper, FailureReason.DIVERGED, str(exc), sink)
    except DataError as exc:  # the core's deliberate refusal; other ValueErrors are bugs
        return _fail(keeper, FailureReason.DATA, str(exc), sink)
    except Exception as exc:
        if is_transient(exc):  # a read outside with_retry (checkpoint, dataset)
            raise DatabaseUnavailable("the database is unreachable") from exc
        log.exception("job %s failed", job.id)
        return _fail(keeper, FailureReason.ERROR, public_message(exc), sink)
    export = exported_on_success(job)
    ended = _record(keeper, settings, sink, outcome, owner, export=export)
    if ended == JobStatus.SUCCEEDED and export:
        _request_export(job.id, job.queue)
    return ended


def exported_on_success(job: Job) -> bool:
    """Standalone jobs, and the models an experiment exposes (a sweep's retrained best,
    bagging and boosting members), are exported to ONNX when they succeed; other children
    on request (POST /v1/jobs/{id}/model/export)."""
    role = parse_role(job.role) if job.role else None
    return role is None or isinstance(role, FinalRole | MemberRole | RoundRole)


def _request_export(job_id: str, queue: str) -> None:
    try:
        enqueue_export(job_id, queue)
    except Exception as exc:  # the reaper re-sends exports left pending
        log.warning("job %s: export not enqueued (%s)", job_id, type(exc).__name__)


def _succeed(session: Session, job_id: str, attempt: int, summary: dict[str, Any],
             export: bool) -> None:
    now = utcnow()
    repo.finish(session, job_id=job_id, attempt=attempt, status=JobStatus.SUCCEEDED, now=now,
                summary=summary)
    if export:  # one transaction: whoever sees the job succeeded sees its model pending
        exports.mark_pending(session, job_id, now)


def _fail(keeper: LeaseKeeper, reason: FailureReason, message: str,
          sink: SqlSink | None = None) -> str:
    if sink is not None:  # the curve up to the failure (a diverged loss, say) stays visible
        _flush_after_failure(sink)
    keeper.write(lambda s: repo.finish(s, job_id=keeper.job_id, attempt=keeper.attempt,
                                       status=JobStatus.FAILED, now=utcnow(), reason=reason,
                                       message=message))
    log.info("job %s: failed (%s) %s", keeper.job_id, reason, message)
    return f"failed:{reason}"


def _flush_after_failure(sink: SqlSink) -> None:
    """Store the epochs that wait before a failed job's end; a write that fails again
    (the bug that failed the run, say) loses them, never the failure itself."""
    try:
        sink.flush()
    except (repo.LeaseLost, DatabaseUnavailable):
        raise
    except Exception as exc:
        log.warning("job %s: the last epochs' rows were not stored (%s)", sink.job_id,
                    type(exc).__name__)


def _record(keeper: LeaseKeeper, settings: Settings, sink: SqlSink, outcome: Outcome,
            owner: str, *, export: bool = False) -> str:
    job_id, attempt = keeper.job_id, keeper.attempt
    if outcome.summary is not None:  # completed
        summary = outcome.summary.model_copy(update={"worker": owner,
                                                     "attempt": attempt}).to_json()
        keeper.write(lambda s: _succeed(s, job_id, attempt, summary, export))
        log.info("job %s: succeeded", job_id)
        return JobStatus.SUCCEEDED
    if outcome.reason == "cancelled":  # the core's stop reason
        keeper.write(lambda s: repo.finish(s, job_id=job_id, attempt=attempt,
                                           status=JobStatus.CANCELLED, now=utcnow()))
        return JobStatus.CANCELLED
    _save_stop_checkpoint(sink, outcome)
    if outcome.reason == "timeout":
        limit = settings.job_time_limit_seconds
        return _fail(keeper, FailureReason.TIMEOUT, f"the job ran past its wall-time limit "
                     f"of {limit:g}s; its checkpoint was saved")
    keeper.write(lambda s: repo.release(s, job_id=job_id, attempt=attempt, now=utcnow()))
    keeper.on_release()
    log.info("job %s: preempted; checkpoint saved and handed back", job_id)
    return "preempted"


def _requeue(job_id: str, queue: str) -> None:
    try:
        enqueue_job(job_id, queue)
    except Exception as exc:  # the broker is down: the reaper re-enqueues queued jobs
        log.warning("job %s: handed back but not re-enqueued (%s)", job_id, type(exc).__name__)


def _hand_back_after_outage(sessions: sessionmaker[Session], settings: Settings, job_id: str,
                            attempt: int, queue: str) -> str:
    """SQL was unreachable past the retry window: this copy stops, and the job is handed
    back (attempt returned) as soon as SQL answers again.

    Until then the job stays ``running`` under an expired lease. For a lease period after
    an outage, reapers and claims of the workers that saw it leave such jobs alone, so this
    release, tried every heartbeat, wins over a re-claim that would use up an attempt. It
    ends when SQL answers or the process exits (a stopping worker is killed after
    worker_stop_seconds)."""
    log.warning("job %s: the database stayed unreachable; stopping this copy and handing "
                "the job back when it returns", job_id)
    while True:
        try:
            with sessions() as session:
                repo.release(session, job_id=job_id, attempt=attempt, now=utcnow())
                session.commit()
        except repo.LeaseLost:
            return "lease-lost"  # the reaper got there first, or the job was ended
        except Exception as exc:
            if not is_transient(exc):
                log.exception("job %s: hand-back after the outage failed", job_id)
                return "database-unavailable"
            note_db_failure()
            time.sleep(settings.heartbeat_seconds)
            continue
        _requeue(job_id, queue)
        log.info("job %s: the database is back; handed back", job_id)
        return "preempted"


def _save_stop_checkpoint(sink: SqlSink, outcome: Outcome) -> None:
    if outcome.checkpoint is not None:
        sink.save_checkpoint(outcome.checkpoint, outcome.epoch, outcome.step)
