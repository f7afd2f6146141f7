"""The worker's Celery app: ``app.queue``'s client plus the task bodies and lifecycle hooks.

- A reaper thread runs in each worker's main process (several reapers are safe).
- SIGTERM (warm shutdown) sets PREEMPT in the pool's children, so a running job
  checkpoints at the next batch boundary and is handed back, not failed.
- torch is imported in each pool child (``child_init``), never in the main process before
  it forks: children forked from a process that had loaded torch trained a tiny job 4x
  slower under load (bench/README.md). tests/training/test_boundary.py guards this.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery import signals

from app.config import get_settings
from app.db import get_sessionmaker
from app.queue import get_celery
from app.services.reaper import reap_once
from worker import registry
from worker.sinks import PREEMPT

log = logging.getLogger("trainyard.worker")
celery = get_celery()
celery.conf.include = ["worker.tasks"]


def _reaper_loop(stop: threading.Event) -> None:
    settings = get_settings()
    while not stop.wait(settings.reaper_interval_seconds):
        try:
            reap_once(get_sessionmaker(), settings)
        except Exception as exc:  # the database may be down; try again next tick
            log.warning("reaper pass failed: %s", exc)


_reaper_stop = threading.Event()


@signals.worker_ready.connect
def start_reaper(**_: Any) -> None:
    threading.Thread(target=_reaper_loop, args=(_reaper_stop,), name="reaper", daemon=True).start()


@signals.worker_process_init.connect
def child_init(**_: Any) -> None:
    """In each pool child: SIGUSR2 from the parent means 'preempt'; fresh DB connections."""
    signal.signal(signal.SIGUSR2, lambda *_: PREEMPT.set())
    from app.db import get_engine

    get_engine().dispose(close=False)  # never share the parent's sockets after fork
    import torch
    import torch._dynamo  # the first optimizer imports it lazily: ~1.2 s of the first job

    import worker.execution  # noqa: F401  (load torch now, not when the first job arrives)

    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


@signals.worker_shutting_down.connect
def preempt_running_jobs(**_: Any) -> None:
    _reaper_stop.set()
    PREEMPT.set()  # solo/threads pools run jobs in this process
    try:
        from billiard.process import active_children

        for child in active_children():
            if child.pid:
                os.kill(child.pid, signal.SIGUSR2)
    except Exception as exc:
        log.warning("could not signal pool children: %s", exc)


@signals.worker_init.connect
def make_worker_id(**_: Any) -> None:
    registry.new_worker_id()  # before the pool forks: children name leases with it


@signals.worker_ready.connect
def register_worker(sender: Any = None, **_: Any) -> None:
    registry.on_ready(sender)  # sender: the consumer, which knows the queues consumed


@signals.worker_shutdown.connect
def mark_worker_stopped(**_: Any) -> None:
    registry.on_shutdown()  # after the warm shutdown handed running jobs back
