"""/v1/jobs: submit, list, inspect, cancel, metrics, checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Body, Header, Path, Query, Response
from sqlalchemy.orm import Session

from app.clock import as_utc
from app.deps import SessionDep, SettingsDep, TenantDep, read_in_one_hop
from app.errors import Unprocessable
from app.repository import JobFilter, JobState, state_of
from app.routes import responses
from app.run_metadata import MAX_TAGS, ORDER_KEYS, MetadataPatch, Tag
from app.schemas import (
    CheckpointOut,
    JobItem,
    JobListPage,
    JobOut,
    MetricsPage,
    error_responses,
)
from app.services import checkpoint_files, deletion, tagging
from app.services import jobs as service
from app.spec import JobSpec
from app.statuses import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
NOT_FOUND = error_responses(404)
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
IfNoneMatch = Annotated[str | None, Header(max_length=2000, description=(
    "ETags of earlier answers (comma-separated): 304 with no body while one still holds."))]
# An epoch has at most 9 digits (max_epochs): a longer number is a 422, never int() on
# thousands of digits (Python refuses over 4300: that was a 500).
CheckpointRef = Annotated[str, Path(pattern=r"^(best|latest|[0-9]{1,9})$",
                                    description="best, latest or an epoch number.")]


@router.post("", status_code=201, response_model=JobOut,
             responses={200: {"model": JobOut, "description": "Idempotent replay"},
                        **error_responses(400, 403, 409, 413, 429)})
def submit_job(spec: Annotated[JobSpec, Body()], session: SessionDep, settings: SettingsDep,
               tenant: TenantDep, idempotency_key: IdemKey = None) -> Any:
    """Queue a training job. The same Idempotency-Key and body returns the original job."""
    job, created = service.submit(session, tenant_id=tenant, spec=spec, settings=settings,
                                  idempotency_key=idempotency_key)
    return responses.created(JobOut.of(job), created, f"/v1/jobs/{job.id}")


ORDER_BY = f"^-?({'|'.join(ORDER_KEYS)})$"
# ISO 8601 (a date, or a date and time; no offset means UTC): a string in the schema, so a
# bare number is refused rather than read as a Unix time
Instant = Annotated[str | None, Query(
    max_length=40, pattern=r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?$", examples=["2026-12-01T09:00:00Z"])]


def instant(raw: str | None, field: str) -> datetime | None:
    if raw is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(raw)).astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # no such date (2026-13-45), or past year 9999
        raise Unprocessable(f"{field}: not a date ({exc})",
                            fields=[{"loc": field, "message": str(exc)}]) from exc


TagQuery = Annotated[list[Tag], Query(max_length=MAX_TAGS, description=(
    "Only runs carrying this tag; repeat it for runs carrying every one given."))]


@router.get("", response_model=JobListPage)
def list_jobs(session: SessionDep, tenant: TenantDep,
              status: JobStatus | None = None,
              name: Annotated[str | None, Query(max_length=200)] = None,
              name_prefix: Annotated[str | None, Query(max_length=200)] = None,
              experiment_id: Annotated[str | None, Query(max_length=40)] = None,
              tag: TagQuery = [],  # noqa: B006  (FastAPI copies a query default)
              created_after: Instant = None,
              created_before: Instant = None,
              order_by: Annotated[str | None, Query(pattern=ORDER_BY, description=(
                  "A summary figure, ascending; prefix '-' for descending. An ordered list "
                  "holds only the jobs that have that figure (finished ones)."),
                  examples=["-test_accuracy", "val_loss"])] = None,
              cursor: Annotated[str | None, Query(max_length=300)] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JobListPage:
    """Newest first (or by ``order_by``), with cursor pagination. Items leave out the spec
    and all but the summary's headline figures (GET the job for those)."""
    narrowed = JobFilter(status=status, name=name, name_prefix=name_prefix,
                         experiment_id=experiment_id, tags=tag,
                         created_after=instant(created_after, "created_after"),
                         created_before=instant(created_before, "created_before"))
    jobs, next_cursor = service.list_page(session, tenant, narrowed, order_by=order_by,
                                          cursor=cursor, limit=limit)
    return JobListPage(items=[JobItem.of(j) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut,
            responses={304: {"description": "Unchanged since the ETag sent in If-None-Match "
                                            "(no body)."}, **NOT_FOUND})
async def get_job(job_id: str, tenant: TenantDep, if_none_match: IfNoneMatch = None) -> Any:
    """With ``If-None-Match: <the ETag of an earlier answer>``: 304 and no body while the
    job is unchanged, so a poller costs one indexed read of a few columns."""
    return await read_in_one_hop(lambda session: _job_answer(session, tenant, job_id,
                                                        if_none_match))


# a job's JobOut by (tenant, job, ETag): a few KB each, more with a summary's predictions
JOB_BODIES = responses.Bodies(max_bytes=16 * 1024**2)


def _job_answer(session: Session, tenant: str, job_id: str,
                if_none_match: str | None) -> Response:
    tag = job_etag(service.state(session, tenant, job_id))  # 404 here: never a cached body
    if (unchanged := responses.not_modified(if_none_match, tag)) is not None:
        return unchanged
    if (body := JOB_BODIES.get((tenant, job_id, tag))) is not None:
        return responses.tagged_json(body, tag)
    job = service.get(session, tenant, job_id)
    # the tag of the row this body is built from: one read after the check above may be newer
    tag = job_etag(state_of(job))
    body = JobOut.of(job).model_dump_json().encode()
    JOB_BODIES.put((tenant, job_id, tag), body)
    return responses.tagged_json(body, tag)


def job_etag(state: JobState) -> str:
    return responses.etag(*state)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=NOT_FOUND)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    """Queued: cancelled at once. Running: stops at the next batch boundary."""
    return JobOut.of(service.cancel(session, tenant, job_id))


@router.patch("/{job_id}", response_model=JobOut, responses=error_responses(400, 404))
def annotate_job(job_id: str, patch: MetadataPatch, session: SessionDep,
                 tenant: TenantDep) -> JobOut:
    """Tags, note, keep: each field given replaces the stored one (``"note": null``
    clears the note); the spec never changes."""
    return JobOut.of(tagging.patch_job(session, tenant, job_id, patch))


@router.delete("/{job_id}", status_code=204, responses=error_responses(404, 409))
def delete_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Removes the job with its metrics, events, checkpoints and model export. A queued or
    running job gets 409 (cancel it first); so does an experiment's child (delete the
    experiment)."""
    deletion.delete_job(session, tenant, job_id)
    return Response(status_code=204)


@router.get("/{job_id}/metrics", response_model=MetricsPage,
            responses={304: {"description": "No point newer than the page sent with this "
                                            "ETag, and the same job status (no body)."},
                       **NOT_FOUND})
async def job_metrics(job_id: str, tenant: TenantDep,
                      name: Annotated[list[str], Query(max_length=50)] = [],  # noqa: B006
                      split: Annotated[list[str], Query(max_length=10)] = [],  # noqa: B006
                      after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                      if_none_match: IfNoneMatch = None) -> Any:
    """Points newer than ``after`` (a cursor), optionally filtered by name and split. With
    ``If-None-Match``: 304 while no metric row of the job was written or changed and its
    status is the same (a poller past the last point costs one indexed read)."""
    query = MetricsQuery(job_id, tuple(name), tuple(split), after, limit)
    return await read_in_one_hop(lambda session: _metrics_answer(session, tenant, query,
                                                            if_none_match))


class MetricsQuery(NamedTuple):
    job_id: str
    names: tuple[str, ...]
    splits: tuple[str, ...]
    after: int
    limit: int


def _metrics_answer(session: Session, tenant: str, query: MetricsQuery,
                    if_none_match: str | None) -> Response:
    job = service.state(session, tenant, query.job_id)
    # the page is a function of the query and of the job's event sequence, which every
    # metric row written or changed moves, and of its status; the tag read before the
    # points can only be older than them, so a later poll is answered 200, never a stale 304
    tag = responses.etag(job.id, job.status, job.event_seq, query.after, query.limit,
                         list(query.names), list(query.splits))
    if (unchanged := responses.not_modified(if_none_match, tag)) is not None:
        return unchanged
    points = service.metrics(session, job, after=query.after, limit=query.limit,
                             names=list(query.names), splits=list(query.splits))
    return responses.rows_json({"job_status": job.status,
                                "points": [point._asdict() for point in points],
                                "next_after": points[-1].id if points else query.after}, tag)


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointOut], responses=NOT_FOUND)
def list_checkpoints(job_id: str, session: SessionDep, tenant: TenantDep) -> list[CheckpointOut]:
    """Checkpoint metadata, newest first (latest and best are kept)."""
    rows = service.checkpoints(session, tenant, job_id)
    return [CheckpointOut(epoch=r.epoch, step=r.step, attempt=r.attempt, is_best=r.is_best,
                          sha256=r.sha256, size_bytes=r.size_bytes, created_at=r.created_at,
                          download=f"/v1/jobs/{job_id}/checkpoints/{r.epoch}")
            for r in rows]


@router.get("/{job_id}/checkpoints/{ref}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The model weights as a safetensors file."},
                       **NOT_FOUND})
def download_checkpoint(job_id: str, ref: CheckpointRef, session: SessionDep,
                        tenant: TenantDep) -> Response:
    """``best``, ``latest`` or an epoch: the weights as safetensors (load with
    ``safetensors.torch.load_file``; nothing is unpickled)."""
    ckpt = service.checkpoint(session, tenant, job_id, ref)
    data = checkpoint_files.weights_file(ckpt.blob, ckpt.sha256, job_id=job_id, epoch=ckpt.epoch)
    filename = f"{job_id}-epoch{ckpt.epoch}.safetensors"
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "X-Checkpoint-Epoch": str(ckpt.epoch)})
