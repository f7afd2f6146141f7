"""The service's state as an operator watches it, read from SQL (jobs by status and queue,
the oldest queued job of each queue, the workers of the live-worker registry), and the
Prometheus exposition of one scrape (``app.observability`` says what is counted where).

Aggregates only: no tenant, job or host name leaves this module (workers are named by
their opaque registry id)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import app.observability  # noqa: F401  (this process's series exist before the first scrape)
from app import repository as repo
from app.clock import as_utc, utcnow
from app.config import Settings
from app.metrics_folder import MULTIPROC_ENV
from app.services.workers import WorkerState, list_workers


@dataclass(frozen=True)
class JobCount:
    status: str
    queue: str
    jobs: int


@dataclass(frozen=True)
class ServiceState:
    read_at: datetime
    jobs: list[JobCount]
    oldest_queued: dict[str, datetime]  # queue -> creation of its oldest queued job
    workers: list[WorkerState]

    def queue_age_seconds(self) -> dict[str, float]:
        """Per queue that has jobs, how long its oldest queued job has waited (0: none)."""
        queues = {count.queue for count in self.jobs}
        return {queue: max(0.0, (self.read_at - self.oldest_queued[queue]).total_seconds())
                if queue in self.oldest_queued else 0.0 for queue in sorted(queues)}


def service_state(sessions: sessionmaker[Session], settings: Settings) -> ServiceState:
    """One consistent-enough read (two grouped queries and the registry)."""
    with sessions() as session:
        jobs = [JobCount(status, queue, n) for status, queue, n in repo.job_counts(session)]
        oldest = {queue: as_utc(at) for queue, at in repo.oldest_queued(session).items()}
        read_at = utcnow()
    return ServiceState(read_at=read_at, jobs=jobs, oldest_queued=oldest,
                        workers=list_workers(sessions, settings))


# ------------------------------------------------------------------------- scrape


class ServiceStateCollector(Collector):
    """Series read from SQL at scrape time; with SQL down, only ``trainyard_database_up 0``."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("trainyard_database_up",
                               "1 when this scrape could read the service's state from SQL.")
        try:
            state = service_state(self.sessions, self.settings)
        except SQLAlchemyError:
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *state_metrics(state)]


def state_metrics(state: ServiceState) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("trainyard_jobs", "Jobs by status and queue (every tenant).",
                             labels=["status", "queue"])
    for count in state.jobs:
        jobs.add_metric([count.status, count.queue], count.jobs)
    yield jobs
    age = GaugeMetricFamily("trainyard_queue_oldest_job_age_seconds",
                            "How long the oldest queued job of each queue has waited since "
                            "it was submitted (0: nothing queued).", labels=["queue"])
    for queue, seconds in state.queue_age_seconds().items():
        age.add_metric([queue], seconds)
    yield age
    seen = GaugeMetricFamily("trainyard_worker_last_seen_timestamp_seconds",
                             "Unix time of each worker's last heartbeat in the registry "
                             "(workers seen in the last day, by opaque id).",
                             labels=["worker", "state"])
    for worker in state.workers:
        seen.add_metric([worker.id, worker.state], worker.last_seen_at.timestamp())
    yield seen
    by_state = GaugeMetricFamily("trainyard_workers", "Workers in the registry seen in the last "
                                 "day, by state (live, lost, stopped).", labels=["state"])
    counts = Counter(worker.state for worker in state.workers)
    for worker_state in ("live", "lost", "stopped"):
        by_state.add_metric([worker_state], counts[worker_state])
    yield by_state


class _ThisProcess(Collector):
    """Single-process mode (tests, a bare ``uvicorn app.main:create_app``): this process's
    own series from the default registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def process_registry() -> CollectorRegistry:
    """The counters and histograms of every process on this host (multiprocess mode), or of
    this process alone; what a worker's own endpoint serves."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    return registry


def exposition(sessions: sessionmaker[Session], settings: Settings) -> bytes:
    """The text exposition for one scrape of the API: this host's processes' series plus
    the state read from SQL."""
    registry = process_registry()
    registry.register(ServiceStateCollector(sessions, settings))
    return generate_latest(registry)


def serve_process_metrics(settings: Settings) -> None:
    """A worker's endpoint (``TRAINYARD_WORKER_METRICS_PORT``), in a daemon thread."""
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, settings.worker_metrics_host,
                          registry=process_registry())
