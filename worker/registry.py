"""This worker's entry in the registry (``app/services/workers.py``), from its main process.

The id is opaque and random per worker process, made at ``worker_init`` before the pool
forks, and passed to pool children in the environment: a job's lease owner is
``<worker id>:<pid>``, so a tenant never sees a host name. The main process registers
when the consumer is ready, beats from a thread every ``worker_heartbeat_seconds``, and
marks itself stopped at the end of a warm shutdown; a killed worker simply stops beating
and counts as lost after ``worker_lost_seconds``.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import Any

from app.config import get_settings
from app.db import get_sessionmaker
from app.services import workers

log = logging.getLogger("trainyard.worker")
ENV = "TRAINYARD_WORKER_ID"


def new_worker_id() -> str:
    """A fresh id for this worker process; pool children inherit it through the env."""
    os.environ[ENV] = f"wk_{secrets.token_hex(8)}"
    return os.environ[ENV]


def worker_id() -> str:
    return os.environ.get(ENV) or new_worker_id()


def consumed_queues(consumer: Any) -> list[str]:
    """The queues this worker consumes (``--queues``), read from Celery, not re-parsed."""
    names = list(consumer.app.amqp.queues.consume_from or ())
    return names or [consumer.app.conf.task_default_queue]


class Registration:
    """Register, beat on a thread, mark stopped; each step survives a database outage."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.node = str(consumer.hostname)
        self.concurrency = int(getattr(consumer.controller, "concurrency", 0) or 0)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="worker-registry", daemon=True)

    def _beat(self) -> None:
        workers.beat(get_sessionmaker(), worker_id=worker_id(), node=self.node,
                     queues=consumed_queues(self.consumer), concurrency=self.concurrency)

    def _loop(self) -> None:
        interval = get_settings().worker_heartbeat_seconds
        while True:
            try:  # the first beat registers (the row is missing)
                self._beat()
            except Exception as exc:  # the database may be down; beat again next time
                log.warning("worker registry heartbeat failed: %s", exc)
            if self.stop_event.wait(interval):
                return

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)  # a beat in flight must not land after 'stopped'
        try:
            workers.mark_stopped(get_sessionmaker(), worker_id())
        except Exception as exc:  # it will count as lost after worker_lost_seconds instead
            log.warning("could not mark worker %s stopped: %s", worker_id(), exc)


_current: list[Registration] = []


def on_ready(consumer: Any) -> None:
    registration = Registration(consumer)
    _current.append(registration)
    registration.start()
    log.info("worker %s (%s) consumes %s", worker_id(), registration.node,
             consumed_queues(consumer))


def on_shutdown() -> None:
    while _current:
        _current.pop().stop()
