"""Retention: finished jobs and experiments left unchanged for ``TRAINYARD_RETENTION_DAYS``
are deleted, in bounded batches, by a reaper pass at most every
``TRAINYARD_RETENTION_INTERVAL_SECONDS`` (and by ``trainyard gc``, at once).

"Unchanged" is ``updated_at``: the finish, or a later PATCH of tags or note. A job or an
experiment with ``keep: true`` is never collected, nor is an experiment's child on its own
(it goes with its experiment). Deletion is ``app/services/deletion.py``'s, so what a user's
DELETE removes, retention removes, and the space is handed back the same way."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app import lifecycle_repository as store
from app.clock import utcnow
from app.config import Settings

log = logging.getLogger("trainyard.retention")


class Schedule:
    """When a reaper pass last collected, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last: float | None = None

    def due(self, interval: float) -> bool:
        now = self.clock()
        if self.last is not None and now - self.last < interval:
            return False
        self.last = now
        return True


SCHEDULE = Schedule()


def collect_if_due(sessions: sessionmaker[Session], settings: Settings,
                   schedule: Schedule = SCHEDULE) -> dict[str, list[str]]:
    """The reaper's call: ``collect_once`` when retention is on and its interval passed."""
    if settings.retention_days is None or not schedule.due(
            settings.retention_interval_seconds):
        return {"jobs": [], "experiments": []}
    return collect_once(sessions, settings)


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
