"""The SQL-backed sink: one transaction per epoch, a rate-limited heartbeat, stop requests,
and (for sweep trials) the early-termination rule."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Checkpoint
from app.training.blobs import sha256
from app.training.sink import EpochReport
from worker.retry import with_retry

if TYPE_CHECKING:  # the worker's main process imports this module and must not load torch
    from worker.pruning import TrialPruner

# Set when this worker is shutting down (SIGTERM): running jobs checkpoint and hand back.
PREEMPT = threading.Event()


class SqlSink:
    """Writes a job's epochs to SQL; every write is fenced by the claimed attempt."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, *, job_id: str,
                 attempt: int, pruner: TrialPruner | None = None) -> None:
        self.sessions, self.settings = sessions, settings
        self.job_id, self.attempt, self.pruner = job_id, attempt, pruner
        self.started = time.monotonic()
        self.next_heartbeat = self.started + settings.heartbeat_seconds

    def should_stop(self) -> str | None:
        if PREEMPT.is_set():
            return "preempted"
        now = time.monotonic()
        if now < self.next_heartbeat:
            return None
        self.next_heartbeat = now + self.settings.heartbeat_seconds
        if now - self.started > self.settings.job_time_limit_seconds:
            return "timeout"
        cancel = with_retry(self.sessions, lambda s: repo.heartbeat(
            s, self.job_id, self.attempt, utcnow(), self.settings.lease_seconds))
        return "cancelled" if cancel else None

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> str | None:
        pruner = self.pruner
        if pruner is None:
            return None
        return with_retry(self.sessions, lambda s: pruner.decide(s, epoch, metrics))

    def epoch_end(self, report: EpochReport) -> None:
        rows = [{"job_id": self.job_id, "epoch": report.epoch, "split": split, "name": name,
                 "value": value, "attempt": self.attempt}
                for split, values in report.metrics.items() for name, value in values.items()]

        def write(session: Session) -> None:
            repo.record_epoch(session, job_id=self.job_id, attempt=self.attempt,
                              epoch=report.epoch, rows=rows, now=utcnow(),
                              lease=self.settings.lease_seconds)
            if report.checkpoint is not None:
                self._store(session, report.checkpoint, report.epoch, 0, report.is_best)

        with_retry(self.sessions, write)

    def save_checkpoint(self, blob: bytes, epoch: int, step: int) -> None:
        """A mid-epoch checkpoint (preemption, timeout) outside the epoch transaction."""
        def write(session: Session) -> None:
            repo.heartbeat(session, self.job_id, self.attempt, utcnow(),
                           self.settings.lease_seconds)  # fenced: LeaseLost if not ours
            self._store(session, blob, epoch, step, False)

        with_retry(self.sessions, write)

    def _store(self, session: Session, blob: bytes, epoch: int, step: int, best: bool) -> None:
        repo.add_checkpoint(session, Checkpoint(
            job_id=self.job_id, epoch=epoch, step=step, attempt=self.attempt, is_best=best,
            sha256=sha256(blob), size_bytes=len(blob), blob=blob, created_at=utcnow()))
