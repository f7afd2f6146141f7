"""Tags, notes and keep on jobs and experiments: set at submission, edited with PATCH.

The tags live twice, on purpose: in the row's ``tags`` column (returned with the row, no
join) and in ``job_tags``/``experiment_tags`` (``?tag=`` filters through their
(tenant_id, tag) index). Both are written together, in the caller's transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import lifecycle_repository as store
from app import repository as repo
from app.clock import utcnow
from app.models import Experiment, ExperimentTag, Job, JobTag
from app.run_metadata import MetadataPatch, RunMetadata, unique_tags
from app.services.rows import found


def annotate_job(session: Session, job: Job, metadata: RunMetadata) -> None:
    """A new job's metadata (added to the session with the job)."""
    job.tags, job.note, job.keep = unique_tags(metadata.tags), metadata.note, metadata.keep
    session.add_all(JobTag(job_id=job.id, tag=tag, tenant_id=job.tenant_id) for tag in job.tags)


def annotate_experiment(session: Session, exp: Experiment, metadata: RunMetadata) -> None:
    exp.tags, exp.note, exp.keep = unique_tags(metadata.tags), metadata.note, metadata.keep
    session.add_all(ExperimentTag(experiment_id=exp.id, tag=tag, tenant_id=exp.tenant_id)
                    for tag in exp.tags)


def patch_job(session: Session, tenant_id: str, job_id: str, patch: MetadataPatch) -> Job:
    job = found(repo.get_job(session, tenant_id, job_id), "job", job_id)
    if patch.tags is not None:
        job.tags = unique_tags(patch.tags)
        store.replace_job_tags(session, job, job.tags)
    _set_note_and_keep(job, patch)
    session.commit()
    return job


def patch_experiment(session: Session, tenant_id: str, experiment_id: str,
                     patch: MetadataPatch) -> Experiment:
    exp = found(repo.get_experiment(session, tenant_id, experiment_id), "experiment",
                experiment_id)
    if patch.tags is not None:
        exp.tags = unique_tags(patch.tags)
        store.replace_experiment_tags(session, exp, exp.tags)
    _set_note_and_keep(exp, patch)
    session.commit()
    return exp


def _set_note_and_keep(row: Job | Experiment, patch: MetadataPatch) -> None:
    given = patch.model_fields_set
    if "note" in given:
        row.note = patch.note  # an explicit null clears it
    if patch.keep is not None:
        row.keep = patch.keep
    row.updated_at = utcnow()
