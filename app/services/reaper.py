"""The reaper: SQL is the source of truth, so jobs the broker lost are found there.

It re-enqueues ``queued`` jobs not enqueued for ``requeue_after_seconds`` and
``running`` jobs whose lease expired (their worker died), ends such a job ``cancelled`` when
cancellation was requested, and fails a job whose
worker was lost ``max_attempts`` times with reason ``worker_lost``. It also applies
the ``no_worker`` rule (``services/workers``): queued jobs on a queue no worker has
consumed for ``no_worker_after_seconds`` fail. Several reapers may run at once: a
duplicate message is a no-op claim, and every failure is a conditional UPDATE.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from app import export_repository as exports
from app import repository as repo
from app.clock import as_utc, utcnow
from app.config import Settings
from app.models import Job
from app.queue import enqueue_advance, enqueue_export
from app.services import retention
from app.services.jobs import enqueue_committed
from app.services.workers import fail_jobs_without_worker, live_queues
from app.statuses import FailureReason

log = logging.getLogger("trainyard.reaper")


def _lost_message(job: Job) -> str:
    return (f"the worker running this job was lost {job.attempt} time(s) "
            f"(max_attempts={job.max_attempts}); it may crash its worker (memory?)")


def _expired_needing_enqueue(job: Job, requeue_before: object) -> bool:
    if job.enqueued_at is None or job.lease_expires_at is None:
        return True
    enqueued = as_utc(job.enqueued_at)
    return enqueued < as_utc(job.lease_expires_at) or enqueued < requeue_before  # type: ignore[operator]


def advance_stalled_experiments(sessions: sessionmaker[Session],
                                settings: Settings | None = None) -> list[str]:
    """Running experiments with no active child: their advance message may be lost.

    The advance goes to the children's queue, or to the default queue when no live worker
    consumes theirs (children that failed ``no_worker``): it would wait there forever."""
    with sessions() as session:
        stalled = repo.experiments_to_advance(session)
        live = live_queues(session, settings) if settings is not None and stalled else None
        fallback = settings.default_queue if settings is not None else "cpu"
        queues = {}
        for experiment_id in stalled:
            kids = repo.children(session, experiment_id)
            queue = kids[0].queue if kids else "cpu"
            queues[experiment_id] = queue if live is None or queue in live else fallback
    for experiment_id, queue in queues.items():
        enqueue_advance(experiment_id, queue)
    return list(stalled)


def resend_stale_exports(sessions: sessionmaker[Session], settings: Settings) -> list[str]:
    """ONNX exports pending for ``requeue_after_seconds`` (the message was lost, or the worker
    died exporting) are sent again; a duplicate finds the export ended and does nothing."""
    now = utcnow()
    with sessions() as session:
        stale = exports.stale_pending(session, now - timedelta(
            seconds=settings.requeue_after_seconds))
        for job_id, _queue in stale:
            exports.touch_pending(session, job_id, now)
        session.commit()
    for job_id, queue in stale:
        enqueue_export(job_id, queue)
    return [job_id for job_id, _ in stale]


def _reap_expired(session: Session, now: datetime, requeue_before: datetime,
                  report: dict[str, list[str]]) -> list[Job]:
    """Running jobs whose lease expired: cancelled if asked to be (a claim would refuse
    them, so they would hold a slot forever), failed when out of attempts, else re-sent."""
    candidates = []
    for job in repo.expired_running(session, now):
        if job.cancel_requested:
            if repo.cancel_expired(session, job.id, now):
                report["cancelled"].append(job.id)
        elif job.attempt >= job.max_attempts:
            if repo.fail_unclaimable(session, job.id, now, reason=FailureReason.WORKER_LOST,
                                     message=_lost_message(job)):
                report["failed"].append(job.id)
        elif _expired_needing_enqueue(job, requeue_before):
            candidates.append(job)
    return candidates


def reap_once(sessions: sessionmaker[Session], settings: Settings, *,
              take_expired: bool = True) -> dict[str, list[str]]:
    """One pass; returns the ids it re-enqueued, failed and cancelled.

    ``take_expired=False`` leaves running jobs with expired leases alone: right after a
    database outage their live workers get a lease period to heartbeat or hand them back
    before a re-claim would use up one of their attempts."""
    now = utcnow()
    requeue_before = now - timedelta(seconds=settings.requeue_after_seconds)
    report: dict[str, list[str]] = {"enqueued": [], "failed": [], "cancelled": []}
    with sessions() as session:
        candidates = (_reap_expired(session, now, requeue_before, report)
                      if take_expired else [])
        for job in repo.stale_queued(session, requeue_before):
            if job.cancel_requested:
                repo.cancelled_while_queued(session, job.id, now)
            elif job.attempt >= job.max_attempts:
                repo.fail_unclaimable(session, job.id, now, reason=FailureReason.WORKER_LOST,
                                      message=_lost_message(job))
                report["failed"].append(job.id)
            else:
                candidates.append(job)
        session.commit()
        enqueue_committed(session, candidates)
        report["enqueued"] = [j.id for j in candidates]
    if take_expired:  # right after an outage no worker could beat: the registry is stale
        report["failed"] += fail_jobs_without_worker(sessions, settings)
    report["exports"] = resend_stale_exports(sessions, settings)
    report["advanced"] = advance_stalled_experiments(sessions, settings)
    collected = retention.collect_if_due(sessions, settings)
    report["deleted_jobs"], report["deleted_experiments"] = (collected["jobs"],
                                                             collected["experiments"])
    if report["enqueued"] or report["failed"] or report["cancelled"]:
        log.info("reaper: re-enqueued %s, failed %s, cancelled %s", report["enqueued"],
                 report["failed"], report["cancelled"])
    return report
