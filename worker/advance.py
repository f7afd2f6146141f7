"""Asking for an experiment to advance after one of its children ended. Its own module so
the job runner (worker/execution.py) need not import the orchestrator that does the advance
(worker/orchestrate.py), which itself imports the runner's neighbours."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.queue import enqueue_advance

log = logging.getLogger("trainyard.experiments")


def request_advance(sessions: sessionmaker[Session], job_id: str) -> None:
    """After a child ends: ask some worker to advance its experiment."""
    with sessions() as session:
        job = repo.get_job_any_tenant(session, job_id)
        if job is None or job.experiment_id is None:
            return
        experiment_id, queue = job.experiment_id, job.queue
    try:
        enqueue_advance(experiment_id, queue)
    except Exception as exc:  # the reaper advances experiments whose message was lost
        log.warning("could not enqueue advance of %s: %s", experiment_id, exc)
