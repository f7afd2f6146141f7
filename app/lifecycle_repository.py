"""The SQL of a run's lifecycle: tags, compare's points, deletes, retention, storage usage
and quotas. A repository module beside ``app/repository.py`` (as ``event_store`` and
``export_repository`` are): services decide, these functions only read and write."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from app.models import (
    Checkpoint,
    Dataset,
    Experiment,
    ExperimentTag,
    Job,
    JobTag,
    Metric,
    ModelExport,
    Tenant,
)
from app.statuses import ACTIVE, TERMINAL, ExperimentStatus

# ------------------------------------------------------------------ tags


def replace_job_tags(session: Session, job: Job, tags: Sequence[str]) -> None:
    session.execute(delete(JobTag).where(JobTag.job_id == job.id))
    session.add_all(JobTag(job_id=job.id, tag=tag, tenant_id=job.tenant_id) for tag in tags)


def replace_experiment_tags(session: Session, exp: Experiment, tags: Sequence[str]) -> None:
    session.execute(delete(ExperimentTag).where(ExperimentTag.experiment_id == exp.id))
    session.add_all(ExperimentTag(experiment_id=exp.id, tag=tag, tenant_id=exp.tenant_id)
                    for tag in tags)


# ------------------------------------------------------------------ compare


def metric_points(session: Session, job_ids: Sequence[str], splits: set[str],
                  names: set[str]) -> Sequence[Any]:
    """(job_id, split, name, epoch, value) of those jobs, splits and names, in one query."""
    return session.execute(
        select(Metric.job_id, Metric.split, Metric.name, Metric.epoch, Metric.value)
        .where(Metric.job_id.in_(job_ids), Metric.split.in_(splits),
               Metric.name.in_(names))).all()


# ------------------------------------------------------------------ deletes


def delete_finished_job(session: Session, job_id: str) -> bool:
    """Deletes the job unless it became active meanwhile; True when it is gone."""
    gone = session.execute(delete(Job).where(Job.id == job_id, Job.status.notin_(ACTIVE)))
    return bool(gone.rowcount == 1)  # type: ignore[attr-defined]


def _has_active_child() -> Any:
    return exists().where(Job.experiment_id == Experiment.id, Job.status.in_(ACTIVE))


def delete_ended_experiment(session: Session, experiment_id: str) -> bool:
    """Deletes the experiment (children cascade) unless it or a child is active."""
    gone = session.execute(delete(Experiment).where(
        Experiment.id == experiment_id, Experiment.status != ExperimentStatus.RUNNING,
        ~_has_active_child()))
    return bool(gone.rowcount == 1)  # type: ignore[attr-defined]


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> None:
    session.execute(delete(Dataset).where(Dataset.id == dataset_id,
                                          Dataset.tenant_id == tenant_id))


def active_job_specs(session: Session, tenant_id: str) -> Sequence[Any]:
    """(id, spec) of the tenant's queued and running jobs (capped by max_concurrent_jobs)."""
    return session.execute(select(Job.id, Job.spec).where(
        Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))).all()


def running_experiment_requests(session: Session, tenant_id: str) -> Sequence[Any]:
    return session.execute(select(Experiment.id, Experiment.request).where(
        Experiment.tenant_id == tenant_id, Experiment.status == ExperimentStatus.RUNNING)).all()


def active_children(session: Session, experiment_id: str) -> Sequence[str]:
    return session.scalars(select(Job.id).where(Job.experiment_id == experiment_id,
                                                Job.status.in_(ACTIVE))).all()


def vacuum_freed_pages(session: Session) -> None:
    """SQLite: hand the freed pages back to the file system (a no-op unless the database
    was created with auto_vacuum=INCREMENTAL). The pragma frees one page per step, and
    sqlite3's execute() steps a statement that returns no row only once: executescript()
    runs it to the end. Postgres reuses the space after autovacuum."""
    if session.get_bind().dialect.name == "sqlite":
        raw = session.connection().connection.dbapi_connection
        raw.executescript("PRAGMA incremental_vacuum;")  # type: ignore[union-attr]
        session.commit()


# ------------------------------------------------------------------ retention


def collect_jobs(session: Session, unchanged_before: datetime, batch: int) -> list[str]:
    """Deletes up to ``batch`` finished, unkept standalone jobs unchanged since then;
    their ids. (status, updated_at) is indexed (ix_jobs_status_updated)."""
    due = (Job.status.in_(TERMINAL), Job.updated_at < unchanged_before, Job.keep.is_(False),
           Job.experiment_id.is_(None))
    ids = list(session.scalars(select(Job.id).where(*due).limit(batch)))
    if ids:
        session.execute(delete(Job).where(Job.id.in_(ids), *due))  # re-checked as it deletes
    return ids


def collect_experiments(session: Session, unchanged_before: datetime, batch: int) -> list[str]:
    due = (Experiment.status != ExperimentStatus.RUNNING,
           Experiment.updated_at < unchanged_before, Experiment.keep.is_(False),
           ~_has_active_child())
    ids = list(session.scalars(select(Experiment.id).where(*due).limit(batch)))
    if ids:
        session.execute(delete(Experiment).where(Experiment.id.in_(ids), *due))
    return ids


# ------------------------------------------------------------------ usage and quotas


def storage_used(session: Session, tenant_id: str) -> tuple[int, int, int, int]:
    """(dataset bytes, dataset count, checkpoint bytes, model export bytes)."""
    data_bytes, data_count = session.execute(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0), func.count())
        .where(Dataset.tenant_id == tenant_id)).one()
    ckpt = session.scalar(select(func.coalesce(func.sum(Checkpoint.size_bytes), 0))
                          .join(Job, Job.id == Checkpoint.job_id)
                          .where(Job.tenant_id == tenant_id))
    exports = session.scalar(select(func.coalesce(func.sum(ModelExport.size_bytes), 0))
                             .join(Job, Job.id == ModelExport.job_id)
                             .where(Job.tenant_id == tenant_id))
    return int(data_bytes), int(data_count), int(ckpt or 0), int(exports or 0)


def quota_overrides(session: Session, tenant_id: str) -> tuple[int | None, int | None]:
    """The tenant's own (storage bytes, datasets) quotas; None where the default applies."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return None, None
    return tenant.quota_storage_bytes, tenant.quota_datasets


def set_quota_overrides(session: Session, tenant_id: str, storage_bytes: int | None,
                        datasets: int | None) -> None:
    """On an existing tenant row (``repository.ensure_tenant`` first)."""
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None, tenant_id
    tenant.quota_storage_bytes, tenant.quota_datasets = storage_bytes, datasets
