"""Export a succeeded job to ONNX: a follow-up task, so the job's own finish never waits on it.

The job is re-read; only a pending export is worked on, and the result is stored with a
conditional UPDATE (``app.export_repository``), so a duplicate message or a re-send by the
reaper stores nothing twice. A graph that differs from torch, or data the job can no longer
read, ends the export ``failed`` with the reason; a database outage leaves it pending, and
the reaper sends it again.
"""

from __future__ import annotations

import logging

import torch
from sqlalchemy.orm import Session, sessionmaker

from app import export_repository as exports
from app import repository as repo
from app import spec as s
from app.clock import utcnow
from app.config import Settings
from app.models import Job, ModelExport
from app.statuses import JobStatus, ModelStatus
from app.training.data import DataError, load_arrays, prepare
from app.training.export import (
    Bundle,
    DataNames,
    ExportMismatch,
    JobFacts,
    NotExportable,
    check_exportable,
    export,
    final_weights,
    held_out_rows,
    source_names,
)
from app.training.results import Summary
from app.training.shapes import DataInfo
from worker.datasets import dataset_loader
from worker.execution import newest_good_checkpoint
from worker.retry import is_transient, public_message, with_retry

log = logging.getLogger("trainyard.worker")


class NothingToExport(RuntimeError):
    """The job's final checkpoint is gone (it cannot be exported again)."""


def export_model(job_id: str, sessions: sessionmaker[Session], settings: Settings) -> str:
    """Returns what happened: ``ready``, ``failed``, or ``skipped`` (not pending)."""
    with sessions() as session:
        job = repo.get_job_any_tenant(session, job_id)
    if job is None or job.status != JobStatus.SUCCEEDED or job.model_status != ModelStatus.PENDING:
        return "skipped"
    try:
        bundle = build(job, sessions)
    except Exception as exc:
        if is_transient(exc):
            raise  # still pending: the reaper sends it again
        return _failed(sessions, settings, job_id, _reason(exc))
    stored = with_retry(sessions, lambda sn: exports.store(sn, _row(job_id, bundle), utcnow()),
                        give_up_after=settings.db_retry_seconds)
    log.info("job %s: model exported (%s)", job_id, "stored" if stored else "already ended")
    return ModelStatus.READY if stored else "skipped"


def _reason(exc: Exception) -> str:
    if isinstance(exc, ExportMismatch | DataError | NothingToExport | NotExportable):
        return str(exc)
    log.error("model export failed", exc_info=exc)
    return f"export error: {public_message(exc)}"


def _failed(sessions: sessionmaker[Session], settings: Settings, job_id: str,
            reason: str) -> str:
    with_retry(sessions, lambda sn: exports.fail(sn, job_id, reason, utcnow()),
               give_up_after=settings.db_retry_seconds)
    log.warning("job %s: model export failed: %s", job_id, reason)
    return ModelStatus.FAILED


def build(job: Job, sessions: sessionmaker[Session]) -> Bundle:
    """The job's data re-derived (a pure function of its spec), its final weights from its
    last checkpoint, and the export checked on its test rows; on CPU."""
    spec = s.JobSpec.model_validate(job.spec)
    check_exportable(spec)
    summary = Summary.model_validate(job.summary)
    checkpoint = newest_good_checkpoint(sessions, job.id)
    if checkpoint is None:
        raise NothingToExport("the job's final checkpoint is no longer stored")
    arrays = load_arrays(spec.data.source, dataset_loader(sessions, job.tenant_id),
                         job.task)  # type: ignore[arg-type]
    data = prepare(spec.data, arrays, torch.device("cpu"))
    weights, epoch = final_weights(checkpoint, summary.restored_best_weights)
    names = data_names(sessions, job, spec, arrays.info)
    facts = JobFacts(job.id, spec, names, epoch, summary.test)
    return export(facts, data, weights, held_out_rows(spec.data, arrays))


def data_names(sessions: sessionmaker[Session], job: Job, spec: s.JobSpec,
               info: DataInfo) -> DataNames:
    """Uploads keep their column names and class labels in their row's info."""
    source = spec.data.source
    if not isinstance(source, s.DatasetSource):
        return source_names(source, info)
    with sessions() as session:
        row = repo.get_dataset(session, job.tenant_id, source.dataset)
    if row is None:
        raise DataError(f"dataset {source.dataset} no longer exists")
    stored = row.info or {}
    return DataNames(list(stored.get("feature_names") or []), stored.get("classes"),
                     stored.get("target"))


def _row(job_id: str, bundle: Bundle) -> ModelExport:
    card = bundle.manifest
    return ModelExport(job_id=job_id, onnx=bundle.onnx, onnx_sha256=card.files["model.onnx"],
                       weights=bundle.weights, weights_sha256=card.files["model.safetensors"],
                       manifest=card.model_dump(mode="json"),
                       size_bytes=len(bundle.onnx) + len(bundle.weights), created_at=utcnow())
