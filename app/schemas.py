"""Response shapes (the request shape is ``app.spec``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.clock import as_utc
from app.models import Dataset, Job
from app.prediction_schemas import ModelState
from app.spec_unions import experiment_kinds
from app.statuses import TERMINAL, ExperimentStatus, FailureReason, JobStatus
from app.training.results import Summary


class Progress(BaseModel):
    epoch: int = Field(description="Epochs completed.")
    total: int = Field(description="Epochs requested (early stopping may end sooner).")


class JobError(BaseModel):
    reason: FailureReason
    message: str


class JobOut(BaseModel):
    id: str
    name: str
    status: JobStatus
    experiment_id: str | None
    queue: str = Field(description="The queue it waits on; a worker started with "
                       "`trainyard worker --queues <queue>` runs it. With no live worker on "
                       "it for TRAINYARD_NO_WORKER_AFTER_SECONDS a queued job fails "
                       "`no_worker`.", examples=["cpu", "gpu"])
    progress: Progress
    attempt: int
    max_attempts: int
    cancel_requested: bool
    worker: str | None = Field(description="<worker id>:<pid> holding the lease while "
                               "running (an opaque id, not a host name).")
    role: dict[str, Any] | None = Field(description="Its place in its experiment's design.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: Summary | None = Field(description="A completed run's end; fields that do not "
                                    "apply (val, predictions, sharpness, ...) are left out.")
    error: JobError | None
    model: ModelState | None = Field(None, description="A succeeded job's ONNX model: pending "
                                     "(being exported), ready (GET .../model, POST "
                                     ".../predict) or failed with the reason; absent when "
                                     "none was asked for.")
    spec: dict[str, Any]
    tags: list[str]
    note: str | None
    keep: bool
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        error = (JobError(reason=job.error_reason, message=job.error_message or "")
                 if job.error_reason else None)
        return cls(
            id=job.id, name=job.name, status=job.status, experiment_id=job.experiment_id,
            queue=job.queue, progress=Progress(epoch=job.epoch, total=job.total_epochs),
            attempt=job.attempt, max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested, worker=job.lease_owner, role=job.role,
            created_at=as_utc(job.created_at),
            started_at=job.started_at and as_utc(job.started_at),
            finished_at=job.finished_at and as_utc(job.finished_at),
            summary=Summary.model_validate(job.summary) if job.summary is not None else None,
            error=error, spec=job.spec, tags=job.tags, note=job.note, keep=job.keep,
            model=ModelState(status=job.model_status, reason=job.model_error)
            if job.model_status is not None else None,
            links={"self": base, "metrics": f"{base}/metrics", "checkpoints": f"{base}/checkpoints",
                   "cancel": f"{base}/cancel"})


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page.")


# The summary keys a list item keeps: scalars and per-split metric dicts. Predictions
# (one per row), the per-class report and sharpness grow with the data: GET the job.
LIST_SUMMARY_KEYS = ("task", "epochs_completed", "best_epoch", "monitor", "best_value",
                     "early_stopped", "stopped_epoch", "pruned", "parameters", "train", "val",
                     "test", "generalization_gap")


class JobItem(BaseModel):
    """A GET /v1/jobs item: the job without its spec, with the summary's headline figures
    (bounded whatever the spec or data; GET the job for the rest)."""

    id: str
    name: str
    status: JobStatus
    experiment_id: str | None
    queue: str
    progress: Progress
    attempt: int
    max_attempts: int
    cancel_requested: bool
    worker: str | None
    role: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict[str, Any] | None = Field(description=f"Only {', '.join(LIST_SUMMARY_KEYS)}.")
    error: JobError | None
    tags: list[str]
    note: str | None
    keep: bool
    model: ModelState | None = None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job) -> JobItem:
        full = JobOut.of(job)
        stored = full.summary.to_json() if full.summary is not None else None
        summary = ({k: stored[k] for k in LIST_SUMMARY_KEYS if k in stored}
                   if stored is not None else None)
        return cls(**full.model_dump(exclude={"spec", "summary"}), summary=summary)


class JobListPage(BaseModel):
    items: list[JobItem]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page.")


class MetricPoint(BaseModel):
    id: int = Field(description="Monotonic cursor: pass the last one as ?after=.")
    epoch: int
    split: str = Field(examples=["train", "val"])
    name: str = Field(examples=["loss", "accuracy", "lr"])
    value: float


class MetricsPage(BaseModel):
    job_status: JobStatus
    points: list[MetricPoint]
    next_after: int = Field(description="Cursor to poll for newer points.")


class CheckpointOut(BaseModel):
    epoch: int
    step: int = Field(description="0 for an end-of-epoch checkpoint; > 0 if saved mid-epoch.")
    attempt: int
    is_best: bool
    sha256: str
    size_bytes: int
    created_at: datetime
    download: str


class DatasetSummary(BaseModel):
    """A list item: no ``info`` (feature names, classes); GET the dataset for those."""

    id: str
    name: str
    format: str
    task: str
    rows: int
    features: int
    n_classes: int
    sha256: str
    size_bytes: int
    created_at: datetime
    links: dict[str, str]

    @classmethod
    def of(cls, ds: Dataset) -> DatasetSummary:
        return DatasetSummary(id=ds.id, name=ds.name, format=ds.format, task=ds.task,
                              rows=ds.rows, features=ds.features, n_classes=ds.n_classes,
                              sha256=ds.sha256, size_bytes=ds.size_bytes,
                              created_at=as_utc(ds.created_at),
                              links={"self": f"/v1/datasets/{ds.id}"})


class DatasetOut(DatasetSummary):
    info: dict[str, Any]

    @classmethod
    def of(cls, ds: Dataset) -> DatasetOut:
        return DatasetOut(**dict(DatasetSummary.of(ds)), info=ds.info)


class DatasetPage(BaseModel):
    items: list[DatasetSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page.")


class ErrorField(BaseModel):
    loc: str = Field(description="JSON path of the offending field.", examples=["optimizer.lr"])
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(examples=["validation_error", "not_found", "unauthorized"])
    message: str
    fields: list[ErrorField]


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message", "fields"}}``."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the given error statuses, all with the one error shape."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
            for status in statuses}


ERROR_DESCRIPTIONS = {
    400: "The body could not be parsed (not JSON or form data).",
    401: "Missing, wrong or revoked API key.",
    403: "Over the tenant's storage or dataset quota (GET /v1/usage shows both).",
    404: "No such resource for this tenant.",
    409: "Idempotency-Key reused with a different body.",
    413: "Request body over its size limit (max_json_bytes; uploads max_dataset_bytes).",
    422: "Invalid request: each problem's JSON path is in error.fields. Also a request "
         "valid by this schema that the data refuses: a referenced dataset that does not "
         "exist for this tenant, a loss that does not fit the data's task, a cap exceeded.",
    429: "Too many queued or running jobs (see Retry-After).",
    500: "A bug (logged); the body still has the one error shape.",
    503: "The database is unavailable (see Retry-After).",
}
# Every authenticated /v1 operation: no key, a body over the cap (checked on every route,
# before the body is read), bad input, a bug, SQL down.
V1_ERRORS = error_responses(401, 413, 422, 500, 503)


class ExperimentProgress(BaseModel):
    done: int = Field(description="Children that ended (succeeded, failed or cancelled).")
    total: int = Field(description="Children so far (sequential designs add stages).")
    succeeded: int
    failed: int
    stage: int


class ExperimentItem(BaseModel):
    """A GET /v1/experiments item: the experiment without its request body (which may
    hold per-row lists); GET the experiment for it."""

    id: str
    name: str
    kind: str = Field(examples=experiment_kinds())
    status: ExperimentStatus
    progress: ExperimentProgress
    created_at: datetime
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    tags: list[str]
    note: str | None
    keep: bool
    links: dict[str, str]


class ExperimentOut(ExperimentItem):
    request: dict[str, Any]

    @classmethod
    def of(cls, exp: Any, counts: dict[str, int]) -> ExperimentOut:
        base = f"/v1/experiments/{exp.id}"
        ended = sum(counts.get(k, 0) for k in TERMINAL)
        return cls(id=exp.id, name=exp.name, kind=exp.kind, status=exp.status,
                   progress=ExperimentProgress(done=ended, total=sum(counts.values()),
                                               succeeded=counts.get(JobStatus.SUCCEEDED, 0),
                                               failed=counts.get(JobStatus.FAILED, 0),
                                               stage=exp.stage),
                   created_at=as_utc(exp.created_at),
                   finished_at=exp.finished_at and as_utc(exp.finished_at), result=exp.result,
                   error=exp.error_message, request=exp.request, tags=exp.tags, note=exp.note,
                   keep=exp.keep,
                   links={"self": base, "jobs": f"{base}/jobs", "cancel": f"{base}/cancel"})


class ExperimentPage(BaseModel):
    # ExperimentOut instances serialize as ExperimentItem here: ``request`` is left out
    items: list[ExperimentItem]
    next_cursor: str | None
