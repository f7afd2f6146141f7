"""Retention: finished jobs and experiments left unchanged for ``TRAINYARD_RETENTION_DAYS``
are deleted, in bounded batches, by every reaper pass (and by ``trainyard gc``).

"Unchanged" is ``updated_at``: the finish, or a later PATCH of tags or note. A job or an
experiment with ``keep: true`` is never collected, nor is an experiment's child on its own
(it goes with its experiment). Deletion is ``app/services/deletion.py``'s, so what a user's
DELETE removes, retention removes, and the space is handed back the same way."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app import lifecycle_repository as store
from app.clock import utcnow
from app.config import Settings

log = logging.getLogger("trainyard.retention")


def collect_once(sessions: sessionmaker[Session], settings: Settings) -> dict[str, list[str]]:
    """One bounded batch of each; empty lists when retention is off or nothing is due."""
    report: dict[str, list[str]] = {"jobs": [], "experiments": []}
    if settings.retention_days is None:
        return report
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    with sessions() as session:
        report["jobs"] = store.collect_jobs(session, cutoff, settings.retention_batch)
        report["experiments"] = store.collect_experiments(session, cutoff,
                                                          settings.retention_batch)
        session.commit()
        if report["jobs"] or report["experiments"]:
            store.vacuum_freed_pages(session)
            log.info("retention: deleted %d jobs and %d experiments unchanged for %g days",
                     len(report["jobs"]), len(report["experiments"]), settings.retention_days,
                     extra={"deleted_jobs": report["jobs"],
                            "deleted_experiments": report["experiments"]})
    return report
