"""The registry of worker processes, and the ``no_worker`` rule it makes possible.

Each worker's main process registers its opaque id, the queues it consumes and its
concurrency, beats every ``worker_heartbeat_seconds`` and marks itself stopped when it
shuts down. A worker that stopped beating for ``worker_lost_seconds`` counts as gone.

The ``no_worker`` rule: a queued job whose queue no worker has consumed for
``no_worker_after_seconds`` (counted from the job's creation or the last time a worker
of that queue was seen, whichever is later) fails with reason ``no_worker``. A backlog
on a queue that has a live worker is never failed, however long it waits.

One registry serves this rule, the Prometheus worker series and the dashboard. Node
names (``name@host``) stay in the table for operators and never reach a tenant.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import as_utc, utcnow
from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.models import Worker
from app.statuses import FailureReason

log = logging.getLogger("trainyard.workers")


@dataclass(frozen=True)
class WorkerState:
    """A registry row as operators see it; ``state`` is live, lost or stopped."""

    id: str
    node: str
    queues: tuple[str, ...]
    concurrency: int
    state: str
    started_at: datetime
    last_seen_at: datetime


def register(sessions: sessionmaker[Session], *, worker_id: str, node: str,
             queues: list[str], concurrency: int) -> None:
    now = utcnow()
    with sessions() as session:
        repo.add_worker(session, Worker(id=worker_id, node=node, queues=sorted(queues),
                                        concurrency=concurrency, started_at=now,
                                        last_seen_at=now, stopped_at=None))
        session.commit()


def beat(sessions: sessionmaker[Session], *, worker_id: str, node: str, queues: list[str],
         concurrency: int) -> None:
    """Record that the worker is alive; re-registers it if its row is gone."""
    with sessions() as session:
        found = repo.worker_beat(session, worker_id, sorted(queues), utcnow())
        session.commit()
    if not found:
        register(sessions, worker_id=worker_id, node=node, queues=queues,
                 concurrency=concurrency)


def mark_stopped(sessions: sessionmaker[Session], worker_id: str) -> None:
    with sessions() as session:
        repo.worker_stopped(session, worker_id, utcnow())
        session.commit()


def _state(worker: Worker, live_after: datetime) -> str:
    if worker.stopped_at is not None:
        return "stopped"
    return "live" if as_utc(worker.last_seen_at) >= live_after else "lost"


def list_workers(sessions: sessionmaker[Session], settings: Settings,
                 seen_within_seconds: float = 24 * 3600.0) -> list[WorkerState]:
    """Workers seen in the last day (by default), newest first, with their state."""
    now = utcnow()
    live_after = now - timedelta(seconds=settings.worker_lost_seconds)
    with sessions() as session:
        rows = repo.workers_seen_since(session, now - timedelta(seconds=seen_within_seconds))
        return [WorkerState(id=w.id, node=w.node, queues=tuple(w.queues),
                            concurrency=w.concurrency, state=_state(w, live_after),
                            started_at=as_utc(w.started_at),
                            last_seen_at=as_utc(w.last_seen_at)) for w in rows]


def no_worker_message(queue: str, after_seconds: float) -> str:
    return (f"no live worker consumes queue {queue!r} (none seen for {after_seconds:g} s, "
            f"TRAINYARD_NO_WORKER_AFTER_SECONDS); start one with "
            f"`trainyard worker --queues {queue}` and resubmit the job")


def consumed_queues(workers: list[Worker], now: datetime, settings: Settings) -> set[str]:
    """Queues with a live worker, or with any worker seen within the no_worker window."""
    live_after = now - timedelta(seconds=settings.worker_lost_seconds)
    window_start = now - timedelta(seconds=settings.no_worker_after_seconds)
    out: set[str] = set()
    for worker in workers:
        seen = as_utc(worker.last_seen_at)
        if seen >= window_start or (worker.stopped_at is None and seen >= live_after):
            out.update(worker.queues)
    return out


def live_queues(session: Session, settings: Settings) -> set[str]:
    """The queues at least one live worker consumes now."""
    live_after = utcnow() - timedelta(seconds=settings.worker_lost_seconds)
    return {queue for worker in repo.workers_seen_since(session, live_after)
            if worker.stopped_at is None for queue in worker.queues}


def fail_jobs_without_worker(sessions: sessionmaker[Session], settings: Settings) -> list[str]:
    """Apply the ``no_worker`` rule once; returns the ids of the jobs it failed.

    Safe to run from many processes at once: each failure is a conditional UPDATE of a
    job that is still ``queued``.
    """
    after = settings.no_worker_after_seconds
    if after <= 0:
        return []
    now = utcnow()
    cutoff = now - timedelta(seconds=after)
    horizon = min(cutoff, now - timedelta(seconds=settings.worker_lost_seconds))
    failed: list[str] = []
    with sessions() as session:
        consumed = consumed_queues(list(repo.workers_seen_since(session, horizon)), now,
                                   settings)
        for queue in repo.queued_queues(session):
            if queue in consumed:
                continue
            ids = repo.fail_queued_in_queue(session, queue, created_before=cutoff, now=now,
                                            reason=FailureReason.NO_WORKER,
                                            message=no_worker_message(queue, after))
            if ids:
                log.warning("no live worker for queue %r: failed %s", queue, ids)
            failed.extend(ids)
        session.commit()
    return failed


def registry_settle_seconds(settings: Settings) -> float:
    """How long the registry cannot be trusted after SQL was unreachable: no worker could
    beat during the outage, so every queue looks unconsumed until each has beaten again."""
    return settings.worker_lost_seconds + settings.worker_heartbeat_seconds


class QueueWatch:
    """The API's ``no_worker`` pass, which sits out the registry's settling time after any
    pass that found SQL unreachable (otherwise a long outage would fail the backlog of every
    queue, live ones included, the moment SQL answers)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings
        self.quiet_until = 0.0

    def pass_once(self, now: float) -> list[str]:
        if now < self.quiet_until:
            return []
        try:
            return fail_jobs_without_worker(self.sessions, self.settings)
        except Exception as exc:  # the database may be down; try again next tick
            self.quiet_until = now + registry_settle_seconds(self.settings)
            log.warning("no_worker pass failed: %s", exc)
            return []


async def _watch(settings: Settings) -> None:
    watch = QueueWatch(get_sessionmaker(), settings)
    while True:
        await asyncio.sleep(settings.reaper_interval_seconds)
        await asyncio.to_thread(watch.pass_once, time.monotonic())


@asynccontextmanager
async def watch_queues(_app: Any) -> AsyncIterator[None]:
    """The API's lifespan: it applies the ``no_worker`` rule too. The reaper runs inside
    workers, so with no worker at all nothing else would ever fail a queued job."""
    settings = get_settings()
    task = (asyncio.create_task(_watch(settings))
            if settings.no_worker_after_seconds > 0 else None)
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
