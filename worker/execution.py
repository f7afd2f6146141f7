"""Run one job: claim its lease, resume from its newest good checkpoint, train, record the end.

The Celery task is a thin wrapper around ``execute``, so this runs (and is
tested) in any process.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.queue import enqueue_job
from app.services.datasets import load_arrays
from app.spec import JobSpec
from app.training.blobs import CorruptBlob, read_metadata, verify
from app.training.data import DataError
from app.training.loop import Outcome, TrainingDiverged
from app.training.runner import run_spec
from worker.pruning import trial_pruner
from worker.retry import with_retry
from worker.sinks import SqlSink

log = logging.getLogger("trainyard.worker")


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def newest_good_checkpoint(sessions: sessionmaker[Session], job_id: str) -> bytes | None:
    """The newest checkpoint whose sha256 verifies; corrupt ones are skipped, never loaded."""
    with sessions() as session:
        for ckpt in repo.checkpoints_newest_first(session, job_id):
            try:
                verify(ckpt.blob, ckpt.sha256)
                read_metadata(ckpt.blob)
                return ckpt.blob
            except CorruptBlob:
                log.error("job %s: checkpoint epoch %s step %s is corrupt; skipping it",
                          job_id, ckpt.epoch, ckpt.step)
    return None


def dataset_loader(sessions: sessionmaker[Session]) -> Any:
    def load(dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
        with sessions() as session:
            blob = repo.dataset_blob(session, dataset_id)
        if blob is None:
            raise DataError(f"dataset {dataset_id} no longer exists")
        return load_arrays(blob)

    return load


def execute(job_id: str, sessions: sessionmaker[Session], settings: Settings) -> str:
    """Run the job if this call wins its lease; returns what happened (for logs and tests).

    When an experiment's child ends, its experiment is asked to advance."""
    outcome = _execute(job_id, sessions, settings)
    if outcome not in ("not-claimed", "lease-lost", "preempted"):
        from worker.orchestrate import request_advance

        request_advance(sessions, job_id)
    return outcome


def _execute(job_id: str, sessions: sessionmaker[Session], settings: Settings) -> str:
    owner = worker_identity()
    job = with_retry(sessions, lambda s: repo.claim(s, job_id, owner, utcnow(),
                                                    settings.lease_seconds))
    if job is None:
        with_retry(sessions, lambda s: repo.cancelled_while_queued(s, job_id, utcnow()))
        return "not-claimed"
    attempt = job.attempt
    log.info("job %s: attempt %d on %s", job_id, attempt, owner)
    sink = SqlSink(sessions, settings, job_id=job_id, attempt=attempt,
                   pruner=trial_pruner(sessions, job))
    try:
        outcome = run_spec(JobSpec.model_validate(job.spec), sink,
                           resume=newest_good_checkpoint(sessions, job_id),
                           uploaded=dataset_loader(sessions), task=job.task)  # type: ignore[arg-type]
    except repo.LeaseLost:
        log.warning("job %s: lease lost (attempt %d); stopping this copy", job_id, attempt)
        return "lease-lost"
    except TrainingDiverged as exc:
        return _fail(sessions, job_id, attempt, "diverged", str(exc))
    except (DataError, ValueError) as exc:
        return _fail(sessions, job_id, attempt, "data", str(exc))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return _fail(sessions, job_id, attempt, "error", f"{type(exc).__name__}: {exc}")
    return _record(sessions, settings, job_id, attempt, sink, outcome, owner)


def _fail(sessions: sessionmaker[Session], job_id: str, attempt: int, reason: str,
          message: str) -> str:
    with_retry(sessions, lambda s: repo.finish(s, job_id=job_id, attempt=attempt, status="failed",
                                                now=utcnow(), reason=reason, message=message))
    log.info("job %s: failed (%s) %s", job_id, reason, message)
    return f"failed:{reason}"


def _record(sessions: sessionmaker[Session], settings: Settings, job_id: str, attempt: int,
            sink: SqlSink, outcome: Outcome, owner: str) -> str:
    if outcome.status == "completed":
        summary = outcome.summary | {"worker": owner, "attempt": attempt}
        with_retry(sessions, lambda s: repo.finish(s, job_id=job_id, attempt=attempt,
                                                    status="succeeded", now=utcnow(),
                                                    summary=summary))
        log.info("job %s: succeeded", job_id)
        return "succeeded"
    if outcome.reason == "cancelled":
        with_retry(sessions, lambda s: repo.finish(s, job_id=job_id, attempt=attempt,
                                                    status="cancelled", now=utcnow()))
        return "cancelled"
    _save_stop_checkpoint(sink, outcome)
    if outcome.reason == "timeout":
        limit = settings.job_time_limit_seconds
        return _fail(sessions, job_id, attempt, "timeout", f"the job ran past its wall-time limit "
                     f"of {limit:g}s; its checkpoint was saved")
    with_retry(sessions, lambda s: repo.release(s, job_id=job_id, attempt=attempt, now=utcnow()))
    job_queue = with_retry(sessions, lambda s: repo.get_job_any_tenant(s, job_id))
    if job_queue is not None:
        enqueue_job(job_id, job_queue.queue)
    log.info("job %s: preempted; checkpoint saved and handed back", job_id)
    return "preempted"


def _save_stop_checkpoint(sink: SqlSink, outcome: Outcome) -> None:
    if outcome.checkpoint is None:
        return
    import json

    state = json.loads(read_metadata(outcome.checkpoint)["trainyard.state"])
    sink.save_checkpoint(outcome.checkpoint, state["epoch"], state["step"])
