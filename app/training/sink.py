"""Where the core reports to: a Protocol, and an in-memory implementation.

The worker's SQL-backed sink (``worker/sinks.py``) implements the same methods; the core
never knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

Metrics = dict[str, dict[str, float]]  # split -> name -> value


@dataclass
class EpochReport:
    epoch: int  # 1-based
    metrics: Metrics
    checkpoint: bytes | None  # the full training state after this epoch, when due
    is_best: bool  # the monitored metric improved at this epoch


class Sink(Protocol):
    def epoch_end(self, report: EpochReport) -> None:
        """Persist one epoch's metrics (and checkpoint) atomically."""

    def should_stop(self) -> str | None:
        """Called at every batch boundary: a reason to stop ('cancelled', 'preempted',
        'timeout') or None. Must be cheap: implementations rate-limit their I/O."""

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> str | None:
        """Called at the end of each epoch with its metrics (``split_name`` -> value), before
        they are reported: why this run should end here (a sweep's early termination of
        poor trials), or None to go on. The run then ends as early stopping would."""


@dataclass
class MemorySink:
    """Keeps everything in lists. ``stop_after`` simulates a stop request at the
    given batch boundary (the N-th call of should_stop, counting from 1); ``prune_at``
    ends the run at the end of that epoch."""

    reports: list[EpochReport] = field(default_factory=list)
    stop_after: int | None = None
    stop_reason: str = "preempted"
    calls: int = 0
    prune_at: int | None = None

    def epoch_end(self, report: EpochReport) -> None:
        self.reports.append(report)

    def should_stop(self) -> str | None:
        self.calls += 1
        if self.stop_after is not None and self.calls >= self.stop_after:
            self.stop_after = None
            return self.stop_reason
        return None

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> str | None:
        return f"asked to stop at epoch {epoch}" if epoch == self.prune_at else None

    def series(self, split: str, name: str) -> list[float]:
        return [r.metrics[split][name] for r in self.reports if name in r.metrics.get(split, {})]

    @property
    def latest_checkpoint(self) -> bytes | None:
        blobs = [r.checkpoint for r in self.reports if r.checkpoint is not None]
        return blobs[-1] if blobs else None
