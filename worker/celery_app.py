"""The worker's Celery app: ``app.queue``'s client plus the task bodies and lifecycle hooks.

- A reaper thread runs in each worker's main process (several reapers are safe).
- SIGTERM (warm shutdown) sets PREEMPT in the pool's children (by SIGUSR2), so a running
  job checkpoints at the next batch boundary and is handed back, not failed. The children
  ignore SIGTERM itself (a group-wide SIGTERM must not kill them mid-write), and a stop
  longer than ``TRAINYARD_WORKER_STOP_SECONDS`` ends with the pool killed.
- torch is imported in each pool child (``child_init``), never in the main process before
  it forks: children forked from a process that had loaded torch trained a tiny job 4x
  slower under load (bench/README.md). tests/training/test_boundary.py guards this.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

from celery import signals

from app.config import get_settings
from app.db import get_sessionmaker
from app.logs import bind_fields, configure, unbind
from app.observability import observe_reaper_pass
from app.queue import ADVANCE_EXPERIMENT, RUN_JOB, get_celery
from app.services.operations import serve_process_metrics
from app.services.reaper import reap_once
from app.services.workers import registry_settle_seconds
from worker import registry
from worker.retry import db_failed_within, note_db_failure
from worker.sinks import PREEMPT

log = logging.getLogger("trainyard.worker")
celery = get_celery()
celery.conf.include = ["worker.tasks"]


def _reaper_loop(stop: threading.Event) -> None:
    """Every interval, one reaper pass. For a lease period after this worker saw the
    database unreachable, leases that expired meanwhile are left alone: their live workers
    heartbeat again or hand their jobs back (``execution._hand_back_after_outage``)
    instead of a re-claim using up an attempt, and the registry is not trusted for the
    no_worker rule until every live worker has beaten again."""
    settings = get_settings()
    grace = max(settings.lease_seconds, registry_settle_seconds(settings))
    while not stop.wait(settings.reaper_interval_seconds):
        take = not db_failed_within(grace)
        try:
            observe_reaper_pass(reap_once(get_sessionmaker(), settings, take_expired=take))
        except Exception as exc:  # the database may be down; try again next tick
            note_db_failure()
            log.warning("reaper pass failed: %s", exc)


_reaper_stop = threading.Event()


@signals.worker_ready.connect
def start_reaper(**_: Any) -> None:
    threading.Thread(target=_reaper_loop, args=(_reaper_stop,), name="reaper", daemon=True).start()


_in_pool_child = False  # set in each pool child
# Shared with the pool children (created before they fork): set once shutdown began, so a
# task that starts after the one SIGUSR2 was sent is preempted as well.
_shutting_down = multiprocessing.Value("b", 0, lock=False)


@signals.worker_process_init.connect
def child_init(**_: Any) -> None:
    """In each pool child: SIGTERM is ignored; SIGUSR2 is ignored until a task arms it
    (``arm_preemption``); fresh DB connections.

    A SIGTERM sent to the whole process group (systemd's KillMode=control-group, supervisord
    stopasgroup, ``kill -TERM -PGID``) would otherwise kill a child while it may hold a pool
    queue's lock, and the parent's warm shutdown then blocks on that lock forever (celery
    #1218). The parent stops its children in order (SIGUSR2, then the pool's sentinels).
    billiard resets a child's handlers after this runs but keeps ignored signals; its own
    terminate (cold shutdown) sends SIGTERM too, so ``stop_watchdog`` bounds that path."""
    global _in_pool_child
    _in_pool_child = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    from app.db import get_engine

    get_engine().dispose(close=False)  # never share the parent's sockets after fork
    import torch
    import torch._dynamo  # the first optimizer imports it lazily: ~1.2 s of the first job

    import worker.execution  # noqa: F401  (load torch now, not when the first job arrives)

    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


@signals.task_prerun.connect
def arm_preemption(**_: Any) -> None:
    """SIGUSR2 from the parent means 'preempt'. Installed per task, not in ``child_init``:
    with the threaded billiard pool (the embedded filesystem broker) the child's later
    signal reset replaces every handler, and SIGUSR2 then killed the child mid-job."""
    if _in_pool_child:
        signal.signal(signal.SIGUSR2, lambda *_: PREEMPT.set())
        if _shutting_down.value:
            PREEMPT.set()


@signals.worker_shutting_down.connect
def preempt_running_jobs(**_: Any) -> None:
    _reaper_stop.set()
    _shutting_down.value = 1
    PREEMPT.set()  # solo/threads pools run jobs in this process
    threading.Thread(target=stop_watchdog, args=(get_settings().worker_stop_seconds,),
                     name="stop-watchdog", daemon=True).start()
    for pid in _pool_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)


def _pool_pids() -> list[int]:
    try:
        from billiard.process import active_children

        return [child.pid for child in active_children() if child.pid]
    except Exception as exc:
        log.warning("could not list pool children: %s", exc)
        return []


def stop_watchdog(bound: float) -> None:
    """A stop that takes longer than ``bound`` is stuck (a pool lock held by a dead child,
    a child ignoring the cold shutdown's SIGTERM): kill the children, then this process.

    A running job was handed back by then (its lease keeper releases it within two
    heartbeats of the stop), so nothing is lost; a daemon thread, it dies with a normal
    exit."""
    time.sleep(bound)
    pids = _pool_pids()
    log.error("worker stop exceeded %gs; killing pool children %s and exiting", bound, pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)  # a join that was only waiting on those children may finish now
    logging.shutdown()
    os._exit(1)


@signals.worker_init.connect
def make_worker_id(**_: Any) -> None:
    registry.new_worker_id()  # before the pool forks: children name leases with it


@signals.worker_ready.connect
def register_worker(sender: Any = None, **_: Any) -> None:
    registry.on_ready(sender)  # sender: the consumer, which knows the queues consumed
    serve_process_metrics(get_settings())  # TRAINYARD_WORKER_METRICS_PORT, when set


@signals.worker_shutdown.connect
def mark_worker_stopped(**_: Any) -> None:
    registry.on_shutdown()  # after the warm shutdown handed running jobs back


@signals.setup_logging.connect
def use_our_logging(**_: Any) -> None:
    """Connected, this replaces Celery's own logging setup: the worker, its pool children
    and Celery's loggers write in TRAINYARD_LOG_FORMAT like the API."""
    configure(get_settings().log_format)


SUBJECT_OF_TASK = {RUN_JOB: "job_id", ADVANCE_EXPERIMENT: "experiment_id"}
_log_ids: dict[str, Any] = {}  # task id -> the token binding its subject's id


@signals.task_prerun.connect
def bind_task_subject(task_id: str = "", task: Any = None, args: Any = (), **_: Any) -> None:
    """Log records made while a task runs carry its job_id or experiment_id."""
    field = SUBJECT_OF_TASK.get(getattr(task, "name", ""))
    if field is not None and args:
        _log_ids[task_id] = bind_fields(**{field: str(args[0])})


@signals.task_postrun.connect
def unbind_task_subject(task_id: str = "", **_: Any) -> None:
    token = _log_ids.pop(task_id, None)
    if token is not None:
        unbind(token)
