"""The one Celery client. The API enqueues by task name; the worker reuses this app
and adds the task bodies (``worker/tasks.py``), so ``app`` never imports ``worker``.

Settings for long tasks: late acks, reject on worker loss, prefetch 1, JSON only,
and a broker visibility timeout above the job time limit (the lease, not the
broker, decides who runs a job; a redelivered duplicate is a no-op claim).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from app.config import Settings, get_settings

RUN_JOB = "trainyard.run_job"
ADVANCE_EXPERIMENT = "trainyard.advance_experiment"
EXPORT_MODEL = "trainyard.export_model"


def broker_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
                "control_folder": str(folder / "control"),
                "processed_folder": str(folder / "processed"), "store_processed": False,
                # a job waits half of this on average before a worker sees it (a fifth of a
                # digits job at 0.2 s: bench/job_e2e.py); a listdir 20 times a second is free
                "polling_interval": 0.05}
    timeout = settings.broker_visibility_timeout or settings.job_time_limit_seconds * 1.5 + 600
    # kombu scans for expired unacked messages every interval * throttle seconds (100 s by
    # default), so a short timeout would otherwise wait far past itself. One cheap scan per
    # quarter timeout, at most every 10 s, keeps redelivery close to the timeout.
    restore_every = max(1.0, min(10.0, timeout / 4))
    return {"visibility_timeout": timeout, "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1}


def make_celery(settings: Settings) -> Celery:
    celery = Celery("trainyard", broker=settings.resolved_broker_url)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.default_queue,
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_time_limit=int(settings.job_time_limit_seconds) + 300,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # A pool child imports torch in its init (never the parent; see worker/celery_app.py),
        # which takes 3-6 s on a busy machine. Celery's default of 4 s killed such children
        # as they started, in an endless respawn loop.
        worker_proc_alive_timeout=60.0,
        task_create_missing_queues=True,
    )
    return celery


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: str, queue: str) -> None:
    """Ring the doorbell: only the id travels; the task re-reads the row."""
    get_celery().send_task(RUN_JOB, args=[job_id], queue=queue,
                           retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2})


def enqueue_advance(experiment_id: str, queue: str) -> None:
    """Ask a worker to move an experiment to its next stage (idempotent, stage-fenced)."""
    get_celery().send_task(ADVANCE_EXPERIMENT, args=[experiment_id], queue=queue,
                           retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2})


def enqueue_export(job_id: str, queue: str) -> None:
    """Ask a worker of the job's queue (it has torch) to export a succeeded job to ONNX."""
    get_celery().send_task(EXPORT_MODEL, args=[job_id], queue=queue,
                           retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2})


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False
