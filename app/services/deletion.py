"""Deleting a tenant's jobs, experiments and datasets: rows, metrics, events, checkpoints
and blobs go in one transaction (the foreign keys cascade from the row deleted).

What is still in use is refused with 409 and the reason, never deleted under a worker:
a queued or running job (cancel it first), a running experiment or one whose children have
not all stopped, an experiment's child on its own (delete the experiment), a job whose
checkpoint a queued or running job warm-starts from (``model.init_from``), and a dataset a
queued or running job, or a running experiment, reads. Each delete re-checks its condition
in the DELETE statement itself, so a change between the check and the delete cannot slip
through. Another tenant's id answers 404, as a missing one does.

Space: on Postgres the deleted rows' space (blobs live in TOAST) is reused by later writes
once autovacuum has passed, and is returned to the operating system only by ``VACUUM
FULL``. On the embedded SQLite database (created with ``auto_vacuum=INCREMENTAL``) the freed
pages are handed back to the file system right after each delete."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app import lifecycle_repository as store
from app import repository as repo
from app.errors import Conflict
from app.services import dataset_refs
from app.services import experiments as experiment_service
from app.services import jobs as job_service
from app.services.rows import found
from app.statuses import ACTIVE, ExperimentStatus

SHOWN_IDS = 10  # a 409 names at most this many of the jobs in the way


def delete_job(session: Session, tenant_id: str, job_id: str) -> None:
    job = job_service.get(session, tenant_id, job_id)
    if job.experiment_id is not None:
        raise Conflict(f"job '{job_id}' is a child of experiment '{job.experiment_id}': "
                       "delete the experiment")
    if job.status in ACTIVE:
        raise Conflict(f"job '{job_id}' is {job.status}: cancel it (POST "
                       f"/v1/jobs/{job_id}/cancel) and delete it once it has stopped")
    starters = warm_starters(session, tenant_id, job_id)
    if starters:
        raise Conflict(f"job '{job_id}' is the model.init_from of {len(starters)} queued or "
                       f"running jobs or experiments: {_names(starters)}; its checkpoint is "
                       "kept until they end")
    _commit_one(session, store.delete_finished_job(session, job_id),
                f"job '{job_id}' changed while it was being deleted; retry")


def delete_experiment(session: Session, tenant_id: str, experiment_id: str) -> None:
    exp = found(repo.get_experiment(session, tenant_id, experiment_id), "experiment",
                experiment_id)
    if exp.status == ExperimentStatus.RUNNING:
        raise Conflict(f"experiment '{experiment_id}' is running: cancel it (POST "
                       f"/v1/experiments/{experiment_id}/cancel) and delete it once its "
                       "children have stopped")
    active = store.active_children(session, experiment_id)
    if active:
        raise Conflict(f"experiment '{experiment_id}' still has {len(active)} children "
                       f"stopping: {_names(active)}; delete it once they have stopped")
    _commit_one(session, store.delete_ended_experiment(session, experiment_id),
                f"experiment '{experiment_id}' changed while it was being deleted; retry")


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> None:
    found(repo.get_dataset(session, tenant_id, dataset_id), "dataset", dataset_id)
    readers = dataset_readers(session, tenant_id, dataset_id)
    if readers:
        raise Conflict(f"dataset '{dataset_id}' is read by {len(readers)} queued or running "
                       f"jobs or experiments: {_names(readers)}; delete it once they end")
    store.delete_dataset(session, tenant_id, dataset_id)
    session.commit()
    store.vacuum_freed_pages(session)


def dataset_readers(session: Session, tenant_id: str, dataset_id: str) -> list[str]:
    """The tenant's queued or running jobs and running experiments that read the dataset.
    Both sets are small: a tenant's active jobs are capped by ``max_concurrent_jobs``."""
    readers = [job_id for job_id, spec in store.active_job_specs(session, tenant_id)
               if dataset_refs.source_dataset(spec) == dataset_id]
    for exp_id, request in store.running_experiment_requests(session, tenant_id):
        exp = experiment_service.parse(request)
        if any(ref == dataset_id for _, ref in dataset_refs.references(exp)):
            readers.append(exp_id)
    return readers


def warm_starters(session: Session, tenant_id: str, job_id: str) -> list[str]:
    """The tenant's queued or running jobs and running experiments whose model starts
    from ``job_id``'s checkpoint (a finished one has its own weights by then)."""
    starters = [active for active, spec in store.active_job_specs(session, tenant_id)
                if _init_from(spec) == job_id]
    return starters + [exp_id for exp_id, request
                       in store.running_experiment_requests(session, tenant_id)
                       if _init_from(request.get("base") or {}) == job_id]


def _init_from(spec: dict[str, Any]) -> str | None:
    init = (spec.get("model") or {}).get("init_from")
    return init.get("job") if isinstance(init, dict) else None


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def _commit_one(session: Session, deleted: bool, raced: str) -> None:
    if not deleted:
        session.rollback()
        raise Conflict(raced)
    session.commit()
    store.vacuum_freed_pages(session)
