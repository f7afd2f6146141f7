"""Retention: finished jobs and experiments left unchanged for ``TRAINYARD_RETENTION_DAYS``
are deleted, in bounded batches, by every reaper pass (and by ``trainyard gc``).

"Unchanged" is ``updated_at``: the finish, or a later PATCH of tags or note. A job or an
experiment with ``keep: true`` is never collected, nor is an experiment's child on its own
(it goes with its experiment). Deletion is ``app/services/deletion.py``'s, so what a user's
DELETE removes, retention removes, and the space is handed back the same way."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.config import Settings
from app.models import Experiment, Job
from app.services.deletion import reclaim_space
from app.statuses import ACTIVE, TERMINAL, ExperimentStatus

log = logging.getLogger("trainyard.retention")


def collect_once(sessions: sessionmaker[Session], settings: Settings) -> dict[str, list[str]]:
    """One bounded batch of each; empty lists when retention is off or nothing is due."""
    report: dict[str, list[str]] = {"jobs": [], "experiments": []}
    if settings.retention_days is None:
        return report
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    with sessions() as session:
        report["jobs"] = _collect_jobs(session, cutoff, settings.retention_batch)
        report["experiments"] = _collect_experiments(session, cutoff, settings.retention_batch)
        if report["jobs"] or report["experiments"]:
            reclaim_space(session)
            log.info("retention: deleted %d jobs and %d experiments unchanged for %g days",
                     len(report["jobs"]), len(report["experiments"]), settings.retention_days,
                     extra={"deleted_jobs": report["jobs"],
                            "deleted_experiments": report["experiments"]})
    return report


def _collect_jobs(session: Session, cutoff: object, batch: int) -> list[str]:
    # (status, updated_at) is indexed (ix_jobs_status_updated)
    due = (Job.status.in_(TERMINAL), Job.updated_at < cutoff, Job.keep.is_(False),
           Job.experiment_id.is_(None))
    ids = list(session.scalars(select(Job.id).where(*due).limit(batch)))
    if ids:
        session.execute(delete(Job).where(Job.id.in_(ids), *due))  # re-checked as it deletes
        session.commit()
    return ids


def _collect_experiments(session: Session, cutoff: object, batch: int) -> list[str]:
    active_child = exists().where(Job.experiment_id == Experiment.id, Job.status.in_(ACTIVE))
    due = (Experiment.status != ExperimentStatus.RUNNING, Experiment.updated_at < cutoff,
           Experiment.keep.is_(False), ~active_child)
    ids = list(session.scalars(select(Experiment.id).where(*due).limit(batch)))
    if ids:
        session.execute(delete(Experiment).where(Experiment.id.in_(ids), *due))
        session.commit()
    return ids
