"""Advance an experiment when its current children have ended: start the next stage
(boosting rounds, a sweep's final retrain) or store the aggregate result.

Runs on a worker (it may load data to score ensembles). Any number of copies may run at
once: the experiment's ``stage`` is bumped with a conditional UPDATE, so exactly one wins.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Experiment, Job
from app.services import experiments as exp_service
from app.services import jobs as job_service
from app.statuses import ACTIVE, ExperimentStatus, JobStatus
from app.training.experiments.aggregate import Step, advance
from app.training.experiments.plan import Child
from app.training.experiments.roles import parse_role
from app.training.experiments.targets import load_targets
from app.training.results import Summary
from app.validation import SpecRejected
from worker.datasets import dataset_loader
from worker.retry import DatabaseUnavailable, is_transient, public_message, with_retry

log = logging.getLogger("trainyard.experiments")


def _children(session: Session, exp: Experiment) -> list[Child]:
    rows = repo.children(session, exp.id)
    curves = exp.kind in ("optimizer_comparison", "batch_size")  # batch_size: the fit reached
    return [Child(role=parse_role(j.role or {}), spec=j.spec, status=j.status,
                  summary=Summary.model_validate(j.summary) if j.summary else None,
                  error=j.error_message, job_id=j.id,
                  curves=repo.epoch_curves(session, j.id) if curves else {}) for j in rows]


def final_status(result: dict[str, Any], children: list[Child]) -> ExperimentStatus:
    if not any(c.status == JobStatus.SUCCEEDED for c in children):
        return ExperimentStatus.FAILED
    return ExperimentStatus.PARTIAL if result.get("failures") else ExperimentStatus.SUCCEEDED


def advance_experiment(experiment_id: str, sessions: sessionmaker[Session],
                       settings: Settings) -> str:
    with sessions() as session:
        exp = repo.get_experiment_any_tenant(session, experiment_id)
        if exp is None or exp.status != ExperimentStatus.RUNNING:
            return "not-running"
        stage, tenant, stored = exp.stage, exp.tenant_id, exp.request
        try:
            kids = _children(session, exp)
        except ValueError as exc:  # a stored role or summary no design can read
            log.exception("experiment %s: unreadable child", experiment_id)
            return _fail(sessions, experiment_id, stage, f"a child is unreadable: {exc}")
        if any(c.status in ACTIVE for c in kids):
            return "waiting"
    task = repo_job_task(sessions, kids)
    try:  # a request stored under older rules may no longer parse: that ends it too
        step = advance(exp_service.parse(stored), kids, lambda spec: load_targets(
            spec, dataset_loader(sessions, tenant), task))  # type: ignore[arg-type]
    except Exception as exc:  # a result that cannot be computed must not stall forever
        if isinstance(exc, DatabaseUnavailable) or is_transient(exc):
            raise  # the database, not the design (scoring reads the data): advanced again
        log.exception("experiment %s: aggregation failed", experiment_id)
        return _fail(sessions, experiment_id, stage, public_message(exc))
    try:
        if not step.children:
            return _finish(sessions, experiment_id, stage, step, kids)
        return _start_stage(sessions, settings, experiment_id, tenant, stage, step)
    except DatabaseUnavailable:
        raise  # the database, not the design: the reaper advances it again later
    except Exception as exc:  # anything else would be re-advanced forever
        if is_transient(exc):
            raise
        what = (f"stage {stage + 1} could not start" if step.children
                else "the result could not be stored")
        log.exception("experiment %s: %s", experiment_id, what)
        return _fail(sessions, experiment_id, stage, f"{what}: {describe(exc)}")


def describe(exc: Exception) -> str:
    """A refused child's message already names its fields; anything else gets its type."""
    return str(exc) if isinstance(exc, SpecRejected) else public_message(exc)


def repo_job_task(sessions: sessionmaker[Session], kids: list[Child]) -> str | None:
    """The data's task as the children's rows recorded it (needed for uploaded data)."""
    if not kids:
        return None
    with sessions() as session:
        job = repo.get_job_any_tenant(session, kids[0].job_id)
        return job.task if job is not None else None


def _start_stage(sessions: sessionmaker[Session], settings: Settings, experiment_id: str,
                 tenant: str, stage: int, step: Step) -> str:
    def write(session: Session) -> list[Job]:
        if not repo.bump_stage(session, experiment_id, stage, utcnow()):
            return []
        jobs = exp_service.child_jobs(session, tenant, experiment_id, step.children or [],
                                      settings)
        for job in jobs:
            repo.add_job(session, job)
        return jobs

    jobs = with_retry(sessions, write)
    if jobs:
        with sessions() as session:
            job_service.enqueue_committed(session, jobs)
    log.info("experiment %s: stage %d started %d children", experiment_id, stage + 1, len(jobs))
    return f"stage-{stage + 1}" if jobs else "lost-race"


def _finish(sessions: sessionmaker[Session], experiment_id: str, stage: int, step: Step,
            kids: list[Child]) -> str:
    result = step.result or {}
    status = final_status(result, kids)
    won = with_retry(sessions, lambda s: repo.finish_experiment(
        s, experiment_id, stage=stage, status=status, result=result, now=utcnow()))
    log.info("experiment %s: %s", experiment_id, status if won else "finished elsewhere")
    return status if won else "lost-race"


def _fail(sessions: sessionmaker[Session], experiment_id: str, stage: int, message: str) -> str:
    with_retry(sessions, lambda s: repo.finish_experiment(
        s, experiment_id, stage=stage, status=ExperimentStatus.FAILED, result=None,
        now=utcnow(), message=message))
    return ExperimentStatus.FAILED
