"""Job verbs: submit (commit, then enqueue), get, list, cancel, metrics, checkpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import repository as repo
from app import spec as s
from app.clock import as_utc, new_id, utcnow
from app.config import Settings
from app.errors import Conflict, NotFound, TooMany, Unprocessable
from app.models import Checkpoint, Job, Metric
from app.queue import enqueue_job
from app.services import dataset_refs
from app.training import shapes
from app.validation import check_spec

log = logging.getLogger("trainyard.jobs")


def body_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def data_info(session: Session, tenant_id: str, source: Any) -> shapes.DataInfo:
    """The data's shape without loading it (uploaded sets from their SQL row)."""
    if isinstance(source, s.BuiltinSource):
        return shapes.BUILTIN_INFO[source.builtin]
    if isinstance(source, s.DatasetSource):
        ds = dataset_refs.resolve(session, tenant_id, source.dataset,
                                  ("data", "source", "dataset"))
        return shapes.DataInfo(ds.task, ds.rows, ds.features, ds.n_classes,  # type: ignore[arg-type]
                               tuple(ds.info["input_shape"]) if ds.info.get("input_shape")
                               else None)
    return shapes.synthetic_info(source)


def validate(session: Session, tenant_id: str, spec: s.JobSpec,
             settings: Settings) -> shapes.DataInfo:
    info = data_info(session, tenant_id, spec.data.source)
    check_spec(spec, info, settings.limits)
    return info


def new_job(tenant_id: str, spec: s.JobSpec, info: shapes.DataInfo, settings: Settings, *,
            queue: str | None = None, experiment_id: str | None = None,
            idempotency_key: str | None = None, request_hash: str | None = None) -> Job:
    now = utcnow()
    queue = queue or ("gpu" if spec.training.device == "cuda" else settings.default_queue)
    return Job(id=new_id("job"), tenant_id=tenant_id, experiment_id=experiment_id,
               name=spec.name, spec=spec.model_dump(mode="json"), task=info.task, queue=queue,
               status="queued", attempt=0, max_attempts=settings.max_attempts,
               cancel_requested=False, epoch=0, total_epochs=spec.training.epochs,
               idempotency_key=idempotency_key, request_hash=request_hash,
               created_at=now, updated_at=now)


class _Replayable(Protocol):
    request_hash: str | None


R = TypeVar("R", bound=_Replayable)


def replay(existing: R | None, key: str, digest: str) -> R | None:
    """The resource an Idempotency-Key already created, or 409 if the body differs."""
    if existing is not None and existing.request_hash != digest:
        raise Conflict(f"Idempotency-Key '{key}' was used with a different body")
    return existing


def commit_unless_raced(session: Session, idempotency_key: str | None) -> bool:
    """COMMIT; False when a concurrent request with the same Idempotency-Key won the
    insert (the caller then replays it)."""
    try:
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        return False


def _replay(session: Session, tenant_id: str, key: str, digest: str) -> Job | None:
    return replay(repo.job_by_idempotency_key(session, tenant_id, key), key, digest)


def enqueue_committed(session: Session, jobs: Sequence[Job]) -> None:
    """After COMMIT: ring the broker. If it is down the reaper enqueues later."""
    sent = []
    for job in jobs:
        try:
            enqueue_job(job.id, job.queue)
            sent.append(job.id)
        except Exception as exc:  # broker down: the job is safe in SQL
            log.warning("enqueue of %s failed (%s); the reaper will retry", job.id, exc)
    if sent:
        repo.mark_enqueued(session, sent, utcnow())
        session.commit()


def reserve_slots(session: Session, tenant_id: str, wanted: int, settings: Settings) -> None:
    """Room under max_concurrent_jobs for ``wanted`` new jobs, or 429. The tenant's row stays
    locked until the caller's COMMIT, so concurrent submits count one after another and the
    cap holds (checking, then inserting, without the lock let them all through)."""
    repo.lock_tenant(session, tenant_id, utcnow())
    active = repo.count_active_jobs(session, tenant_id)
    cap = settings.limits.max_concurrent_jobs
    if active + wanted > cap:
        session.rollback()  # release the lock now, not when the request's session closes
        raise TooMany(f"{active} jobs are already queued or running and {wanted} more would "
                      f"exceed the limit max_concurrent_jobs {cap}; wait for some to finish",
                      headers={"Retry-After": "10"})


def submit(session: Session, *, tenant_id: str, spec: s.JobSpec, settings: Settings,
           idempotency_key: str | None, raw: Any) -> tuple[Job, bool]:
    """Validate, INSERT, COMMIT, enqueue. Returns (job, created)."""
    digest = body_hash(raw)
    idempotency_key = idempotency_key or None  # an empty header is no key
    if idempotency_key and (job := _replay(session, tenant_id, idempotency_key, digest)):
        return job, False
    info = validate(session, tenant_id, spec, settings)
    reserve_slots(session, tenant_id, 1, settings)
    job = new_job(tenant_id, spec, info, settings, idempotency_key=idempotency_key,
                  request_hash=digest)
    repo.add_job(session, job)
    if not commit_unless_raced(session, idempotency_key):
        return submit(session, tenant_id=tenant_id, spec=spec, settings=settings,
                      idempotency_key=idempotency_key, raw=raw)
    enqueue_committed(session, [job])
    return job, True


def get(session: Session, tenant_id: str, job_id: str) -> Job:
    job = repo.get_job(session, tenant_id, job_id)
    if job is None:
        raise NotFound(f"no job '{job_id}'")
    return job


class _Keyed(Protocol):
    id: str
    created_at: datetime


def encode_cursor(row: _Keyed) -> str:
    """The keyset cursor after ``row`` (jobs, experiments and datasets page alike)."""
    raw = f"{as_utc(row.created_at).isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        # a hand-made cursor without an offset, or one whose UTC time is out of range,
        # must not reach SQL (each was a 500)
        return as_utc(datetime.fromisoformat(created)).astimezone(UTC), row_id
    except (ValueError, OverflowError) as exc:
        raise Unprocessable("cursor is not one this API issued",
                            fields=[{"loc": "cursor", "message": "malformed"}]) from exc


def list_page(session: Session, tenant_id: str, *, status: str | None, name: str | None,
              experiment_id: str | None, cursor: str | None,
              limit: int) -> tuple[Sequence[Job], str | None]:
    before = decode_cursor(cursor) if cursor else None
    jobs = repo.list_jobs(session, tenant_id, status=status, name=name,
                          experiment_id=experiment_id, before=before, limit=limit + 1)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, encode_cursor(jobs[-1]) if more and jobs else None


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    job = get(session, tenant_id, job_id)
    repo.cancel(session, job, utcnow())
    session.commit()
    return job


def metrics(session: Session, tenant_id: str, job_id: str, *, after: int, limit: int,
            names: Sequence[str], splits: Sequence[str]) -> tuple[Job, Sequence[Metric]]:
    job = get(session, tenant_id, job_id)
    return job, repo.metrics_page(session, job_id, after=after, limit=limit, names=names,
                                  splits=splits)


def checkpoints(session: Session, tenant_id: str, job_id: str) -> Sequence[Any]:
    get(session, tenant_id, job_id)
    return repo.checkpoints_meta(session, job_id)


def checkpoint(session: Session, tenant_id: str, job_id: str, ref: str) -> Checkpoint:
    """``best``, ``latest`` or an epoch number."""
    rows = checkpoints(session, tenant_id, job_id)
    if ref == "best":
        match = next((r for r in rows if r.is_best), None)
    elif ref == "latest":
        match = rows[0] if rows else None
    elif ref.isdigit():
        match = next((r for r in rows if r.epoch == int(ref) and r.step == 0), None)
    else:
        raise Unprocessable("checkpoint ref must be 'best', 'latest' or an epoch number",
                            fields=[{"loc": "ref", "message": f"got '{ref}'"}])
    blob = repo.checkpoint_blob(session, match.id) if match else None
    if blob is None:
        raise NotFound(f"job '{job_id}' has no checkpoint '{ref}' (latest and best are kept)")
    return blob
