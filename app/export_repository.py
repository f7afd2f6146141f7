"""SQL of model exports (``jobs.model_status`` and ``model_exports``): the repository's part for
this aggregate, kept apart from ``app/repository.py`` as it passed 500 lines.

Every state change is a conditional UPDATE on the job row, so concurrent exports of one job
(a re-sent message, the reaper) store at most one result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from app.models import Job, ModelExport
from app.statuses import JobStatus, ModelStatus


def mark_pending(session: Session, job_id: str, now: datetime) -> bool:
    """A succeeded job with no model, or a failed export, becomes pending (to be exported)."""
    stmt = (update(Job).where(Job.id == job_id, Job.status == JobStatus.SUCCEEDED,
                              or_(Job.model_status.is_(None),
                                  Job.model_status == ModelStatus.FAILED))
            .values(model_status=ModelStatus.PENDING, model_error=None, model_updated_at=now))
    return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]


def store(session: Session, export: ModelExport, now: datetime) -> bool:
    """Pending -> ready with its export, in the caller's transaction; False when another copy
    already ended it (nothing is written then)."""
    if not _end(session, export.job_id, ModelStatus.READY, None, now):
        return False
    # an export asked for again replaces the one before it
    session.execute(delete(ModelExport).where(ModelExport.job_id == export.job_id))
    session.add(export)
    return True


def fail(session: Session, job_id: str, reason: str, now: datetime) -> bool:
    return _end(session, job_id, ModelStatus.FAILED, reason, now)


def _end(session: Session, job_id: str, status: ModelStatus, reason: str | None,
         now: datetime) -> bool:
    stmt = (update(Job).where(Job.id == job_id, Job.model_status == ModelStatus.PENDING)
            .values(model_status=status, model_error=reason, model_updated_at=now))
    return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ExportMeta:
    """An export without its blobs: what predict needs to find its cached session."""

    onnx_sha256: str
    weights_sha256: str
    manifest: dict[str, Any]
    size_bytes: int


def meta(session: Session, job_id: str) -> ExportMeta | None:
    stmt = select(ModelExport.onnx_sha256, ModelExport.weights_sha256, ModelExport.manifest,
                  ModelExport.size_bytes).where(ModelExport.job_id == job_id)
    row = session.execute(stmt).first()
    return ExportMeta(*row) if row is not None else None


@dataclass(frozen=True)
class Serving:
    """What a prediction needs to know about its job, in one narrow query (no spec or
    summary JSON to decode on every request)."""

    status: JobStatus
    model_status: ModelStatus | None
    model_error: str | None
    onnx_sha256: str | None


def serving(session: Session, tenant_id: str, job_id: str) -> Serving | None:
    stmt = (select(Job.status, Job.model_status, Job.model_error, ModelExport.onnx_sha256)
            .outerjoin(ModelExport, ModelExport.job_id == Job.id)
            .where(Job.id == job_id, Job.tenant_id == tenant_id))
    row = session.execute(stmt).first()
    return Serving(*row) if row is not None else None


def onnx_blob(session: Session, job_id: str) -> bytes | None:
    return session.scalar(select(ModelExport.onnx).where(ModelExport.job_id == job_id))


def with_blobs(session: Session, job_id: str) -> ModelExport | None:
    return session.get(ModelExport, job_id)


def stale_pending(session: Session, older_than: datetime,
                  limit: int = 100) -> Sequence[tuple[str, str]]:
    """(job id, queue) of exports pending since before ``older_than``: a lost message or a
    worker that died while exporting."""
    stmt = (select(Job.id, Job.queue).where(Job.model_status == ModelStatus.PENDING,
                                            Job.model_updated_at < older_than)
            .limit(limit))
    return [(job_id, queue) for job_id, queue in session.execute(stmt).all()]


def touch_pending(session: Session, job_id: str, now: datetime) -> None:
    """Restart a pending export's clock when it is sent again (the reaper waits anew)."""
    session.execute(update(Job).where(Job.id == job_id, Job.model_status == ModelStatus.PENDING)
                    .values(model_updated_at=now))
