"""Task bodies: thin, like a web view; the logic is in ``worker.execution``."""

from __future__ import annotations

from app.config import get_settings
from app.db import get_sessionmaker
from app.queue import ADVANCE_EXPERIMENT, EXPORT_MODEL, RUN_JOB
from worker.celery_app import celery


@celery.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Only the id travels; the row is re-read and claimed with a lease."""
    from worker.execution import execute  # torch loads in the pool child, not the parent

    return execute(job_id, get_sessionmaker(), get_settings())


@celery.task(name=ADVANCE_EXPERIMENT, acks_late=True, ignore_result=True)
def advance_experiment(experiment_id: str) -> str:
    """Next stage or result of an experiment whose children have ended (idempotent)."""
    from worker.orchestrate import advance_experiment as advance

    return advance(experiment_id, get_sessionmaker(), get_settings())


@celery.task(name=EXPORT_MODEL, acks_late=True, ignore_result=True)
def export_model(job_id: str) -> str:
    """ONNX export of a succeeded job (idempotent: only a pending export is worked on)."""
    from worker.export import export_model as export

    return export(job_id, get_sessionmaker(), get_settings())
