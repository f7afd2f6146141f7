"""Job verbs: submit (commit, then enqueue), get, list, cancel, metrics, checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NoReturn

from sqlalchemy.orm import Session

from app import repository as repo
from app import spec as s
from app.clock import new_id, utcnow
from app.config import Settings
from app.errors import NotFound, TooMany, Unprocessable
from app.models import Checkpoint, Job
from app.queue import enqueue_job
from app.services import checkpoint_files, cursors, dataset_refs, tagging, usage, warm_start
from app.services.idempotency import create_once, request_hash
from app.services.rows import found
from app.statuses import JobStatus
from app.training import shapes
from app.training.blobs import sha256
from app.validation import check_spec

log = logging.getLogger("trainyard.jobs")


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
    warm_start.pin(session, tenant_id, spec, info)  # model.init_from: checked, sha256 pinned
    return shapes.job_info(spec.task, info)  # what the job learns: jobs.task


def new_job(tenant_id: str, spec: s.JobSpec, info: shapes.DataInfo, settings: Settings, *,
            queue: str | None = None, experiment_id: str | None = None,
            idempotency_key: str | None = None, request_hash: str | None = None) -> Job:
    now = utcnow()
    queue = queue or ("gpu" if spec.training.device == "cuda" else settings.default_queue)
    return Job(id=new_id("job"), tenant_id=tenant_id, experiment_id=experiment_id,
               name=spec.name, spec=spec.model_dump(mode="json", exclude={"metadata"}),
               task=info.task, queue=queue,
               status=JobStatus.QUEUED, attempt=0, max_attempts=settings.max_attempts,
               cancel_requested=False, epoch=0, total_epochs=spec.training.epochs,
               idempotency_key=idempotency_key, request_hash=request_hash,
               created_at=now, updated_at=now)


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
           idempotency_key: str | None) -> tuple[Job, bool]:
    """Validate, INSERT, COMMIT, enqueue. Returns (job, created)."""

    def insert(key: str | None) -> Job:
        info = validate(session, tenant_id, spec, settings)
        usage.check_storage(session, tenant_id, settings.limits)
        reserve_slots(session, tenant_id, 1, settings)
        job = new_job(tenant_id, spec, info, settings, idempotency_key=key, request_hash=digest)
        repo.add_job(session, job)
        tagging.annotate_job(session, job, spec.metadata)
        return job

    def find(key: str) -> Job | None:
        return repo.job_by_idempotency_key(session, tenant_id, key)

    digest = request_hash(spec.model_dump(mode="json"))
    job, created = create_once(session, key=idempotency_key, digest=digest, find=find,
                               insert=insert)
    if created:
        enqueue_committed(session, [job])
    return job, created


def get(session: Session, tenant_id: str, job_id: str) -> Job:
    return found(repo.get_job(session, tenant_id, job_id), "job", job_id)


def list_page(session: Session, tenant_id: str, f: repo.JobFilter, *, order_by: str | None,
              cursor: str | None, limit: int) -> tuple[Sequence[Job], str | None]:
    """Newest first, or by a summary figure (``order_by``: a key of ORDER_KEYS, ``-`` for
    descending); an ordered list holds only the jobs that have that figure."""
    if order_by is None:
        return cursors.page(lambda before, n: repo.list_jobs(
            session, tenant_id, f, before=before, limit=n), cursor, limit)
    key, descending = order_by.removeprefix("-"), order_by.startswith("-")
    after = cursors.decode_ordered(cursor, order_by) if cursor else None
    rows = repo.list_jobs_ordered(session, tenant_id, f, key=key, descending=descending,
                                  after=after, limit=limit + 1)
    more, rows = len(rows) > limit, rows[:limit]
    last = rows[-1] if rows else None
    next_cursor = (cursors.encode_ordered(order_by, getattr(last, f"ord_{key}"), last.id)
                   if more and last is not None else None)
    return rows, next_cursor


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    job = get(session, tenant_id, job_id)
    repo.cancel(session, job, utcnow())
    session.commit()
    return job


def state(session: Session, tenant_id: str, job_id: str) -> repo.JobState:
    """What a poller's ETag is computed from, without loading the job (404 as ``get``)."""
    return found(repo.job_state(session, tenant_id, job_id), "job", job_id)


def metrics(session: Session, job: repo.JobState, *, after: int, limit: int,
            names: Sequence[str], splits: Sequence[str]) -> list[repo.MetricRow]:
    """The page of a job whose state the tenant has read (so the job is theirs)."""
    return repo.metrics_page(session, job.id, after=after, limit=limit, names=names,
                             splits=splits)


def checkpoints(session: Session, tenant_id: str, job_id: str) -> Sequence[Any]:
    get(session, tenant_id, job_id)
    return repo.checkpoints_meta(session, job_id)


def checkpoint(session: Session, tenant_id: str, job_id: str, ref: str) -> Checkpoint:
    """``best``, ``latest`` or an epoch number. ``best`` is the row written at the best
    epoch while it is kept; else the best weights the latest checkpoint carries (the best
    epoch's own checkpoint need not have been written), as an unsaved row of that epoch."""
    rows = checkpoints(session, tenant_id, job_id)
    if ref == "best":
        match = next((r for r in rows if r.is_best), None)
        if match is None and rows:
            return _best_carried(session, job_id, rows[0].id) or _not_found(job_id, ref)
    elif ref == "latest":
        match = rows[0] if rows else None
    elif ref.isdigit():
        match = next((r for r in rows if r.epoch == int(ref) and r.step == 0), None)
    else:
        raise Unprocessable("checkpoint ref must be 'best', 'latest' or an epoch number",
                            fields=[{"loc": "ref", "message": f"got '{ref}'"}])
    row = repo.checkpoint_with_blob(session, match.id) if match else None
    return row if row is not None else _not_found(job_id, ref)


def _best_carried(session: Session, job_id: str, latest_id: int) -> Checkpoint | None:
    latest = repo.checkpoint_with_blob(session, latest_id)
    if latest is None:
        return None
    carried = checkpoint_files.best_carried(latest.blob, latest.sha256, job_id=job_id,
                                            epoch=latest.epoch)
    if carried is None:
        return None
    epoch, blob = carried
    return Checkpoint(job_id=job_id, epoch=epoch, step=0, attempt=latest.attempt, is_best=True,
                      sha256=sha256(blob), size_bytes=len(blob), blob=blob,
                      created_at=latest.created_at)


def _not_found(job_id: str, ref: str) -> NoReturn:
    raise NotFound(f"job '{job_id}' has no checkpoint '{ref}' (latest and best are kept)")
