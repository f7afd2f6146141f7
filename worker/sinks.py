"""The SQL-backed sink: one transaction per epoch (metric rows and progress always, a
checkpoint when the trainer's cadence made one due; an epoch without a checkpoint is written
on the keeper's writer thread while the next one trains), stop requests (read from the job's
``LeaseKeeper``, so ``should_stop`` costs no SQL), and (for sweep trials) the
early-termination rule. Every write goes through the keeper, fenced by the attempt."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Checkpoint
from app.training.blobs import carried_best_epoch, sha256
from app.training.sink import EpochReport
from worker.lease import PREEMPT, LeaseKeeper
from worker.pruning import TrialPruner

__all__ = ["PREEMPT", "SqlSink"]


class SqlSink:
    """Writes a job's epochs to SQL; every write is fenced by the claimed attempt."""

    def __init__(self, keeper: LeaseKeeper, settings: Settings, *,
                 pruner: TrialPruner | None = None) -> None:
        self.keeper, self.settings, self.pruner = keeper, settings, pruner
        self.job_id, self.attempt = keeper.job_id, keeper.attempt
        self.started = time.monotonic()

    def should_stop(self) -> str | None:
        """LeaseLost or DatabaseUnavailable when this copy must stop; else a reason or None."""
        reason = self.keeper.check()
        if reason is not None:
            return reason
        if PREEMPT.is_set():
            self.keeper.preempt_answered.set()  # this thread checkpoints and hands back
            return "preempted"
        if time.monotonic() - self.started > self.settings.job_time_limit_seconds:
            return "timeout"
        return None

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> str | None:
        pruner = self.pruner
        if pruner is None:
            return None
        return self.keeper.write(lambda s: pruner.decide(s, epoch, metrics))

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

        if report.checkpoint is None:  # metric rows only: the next epoch trains meanwhile
            self.keeper.write_later(write, then=lambda: self.stored(report))
        else:  # a checkpoint is stored before training goes on (what a resume restarts from)
            self.keeper.write(write)
            self.stored(report)

    def stored(self, report: EpochReport) -> None:
        """Called once an epoch's rows are stored (on the writer thread when deferred)."""

    def save_checkpoint(self, blob: bytes, epoch: int, step: int) -> None:
        """A mid-epoch checkpoint (preemption, timeout) outside the epoch transaction."""
        def write(session: Session) -> None:
            repo.heartbeat(session, self.job_id, self.attempt, utcnow(),
                           self.settings.lease_seconds)  # fenced: LeaseLost if not ours
            self._store(session, blob, epoch, step, False)

        self.keeper.write(write)

    def _store(self, session: Session, blob: bytes, epoch: int, step: int, best: bool) -> None:
        repo.add_checkpoint(session, Checkpoint(
            job_id=self.job_id, epoch=epoch, step=step, attempt=self.attempt, is_best=best,
            sha256=sha256(blob), size_bytes=len(blob), blob=blob, created_at=utcnow()),
            best_epoch=carried_best_epoch(blob))
