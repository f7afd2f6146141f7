"""Job and experiment statuses and job failure reasons: one torch-free home for the values the
database stores, the API returns (OpenAPI lists them) and the worker writes. They are
``StrEnum``s, so each member *is* its string: stored rows and JSON stay plain strings."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExperimentStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # ended with a result, but some children failed
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailureReason(StrEnum):
    """Why a job failed (``jobs.error_reason``)."""

    DIVERGED = "diverged"  # the loss became NaN or infinite
    DATA = "data"  # the core refused the data (DataError)
    TIMEOUT = "timeout"  # past its wall-time limit
    ERROR = "error"  # anything else: a bug, reported by its public message
    WORKER_LOST = "worker_lost"  # its worker died max_attempts times
    NO_WORKER = "no_worker"  # no live worker serves its queue


class ModelStatus(StrEnum):
    """A succeeded job's ONNX export (``jobs.model_status``)."""

    PENDING = "pending"  # a worker exports it (predict and downloads answer 409, Retry-After)
    READY = "ready"
    FAILED = "failed"  # with the reason (``jobs.model_error``)


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)  # a job that holds a slot of its tenant
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
