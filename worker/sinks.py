"""The SQL-backed sink: epochs' metric rows and progress (and a checkpoint when the
trainer's cadence made one due), stop requests (read from the job's ``LeaseKeeper``, so
``should_stop`` costs no SQL), and (for sweep trials) the early-termination rule. Every write
goes through the keeper, fenced by the attempt.

An epoch is written at its end unless the last write was less than
``metrics_flush_seconds`` ago; then it waits, and goes in the next write, which stores every
waiting epoch in order (each its own progress update and metric rows, so the event stream
is the same as one write per epoch). A checkpoint, a mid-epoch checkpoint and the run's end
(``flush``) write whatever waits first. Short epochs thus cost one transaction per interval,
not one each: on the training thread, since a writer thread costs the training thread more
through the GIL than the write itself (docs/ARCHITECTURE.md, "Epoch writes")."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
        self._waiting: list[EpochReport] = []  # ended epochs not written yet, in order
        self._written_at = float("-inf")

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
        self._waiting.append(report)
        interval = self.settings.metrics_flush_seconds
        # a sweep trial's rule reads its own curve from SQL at the next epoch: nothing waits
        if (report.checkpoint is not None or self.pruner is not None
                or time.monotonic() - self._written_at >= interval):
            self.flush()

    def flush(self) -> None:
        """Write the epochs that wait (none: nothing); raises what the write raised, and
        the epochs it held are not tried again."""
        if self._waiting:
            self._write_epochs(lambda _session: None)

    def save_checkpoint(self, blob: bytes, epoch: int, step: int) -> None:
        """A mid-epoch checkpoint (preemption, timeout), after the epochs that wait."""
        def store(session: Session) -> None:
            repo.heartbeat(session, self.job_id, self.attempt, utcnow(),
                           self.settings.lease_seconds)  # fenced: LeaseLost if not ours
            self._store(session, blob, epoch, step, False)

        self._write_epochs(store)

    def stored(self, report: EpochReport) -> None:
        """Called once an epoch's rows are stored."""

    def _write_epochs(self, then: Callable[[Session], None]) -> None:
        """One fenced transaction: every waiting epoch in order, then ``then``."""
        reports, self._waiting = self._waiting, []
        epochs = [repo.EpochRows(r.epoch, self._rows(r)) for r in reports]  # once, not per try

        def write(session: Session) -> None:
            repo.record_epochs(session, job_id=self.job_id, attempt=self.attempt,
                               epochs=epochs, now=utcnow(), lease=self.settings.lease_seconds)
            for report in reports:  # at most the last: only a checkpoint ends the waiting
                if report.checkpoint is not None:
                    self._store(session, report.checkpoint, report.epoch, 0, report.is_best)
            then(session)

        self.keeper.write(write)
        self._written_at = time.monotonic()
        for report in reports:
            self.stored(report)

    def _rows(self, report: EpochReport) -> list[dict[str, Any]]:
        return [{"job_id": self.job_id, "epoch": report.epoch, "split": split, "name": name,
                 "value": value, "attempt": self.attempt}
                for split, values in report.metrics.items() for name, value in values.items()]

    def _store(self, session: Session, blob: bytes, epoch: int, step: int, best: bool) -> None:
        repo.add_checkpoint(session, Checkpoint(
            job_id=self.job_id, epoch=epoch, step=step, attempt=self.attempt, is_best=best,
            sha256=sha256(blob), size_bytes=len(blob), blob=blob, created_at=utcnow()),
            best_epoch=carried_best_epoch(blob))
