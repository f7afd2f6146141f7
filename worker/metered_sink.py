"""The SQL sink, with each stored epoch's duration observed for Prometheus."""

from __future__ import annotations

from app.observability import observe_epoch
from app.training.sink import EpochReport
from worker.sinks import SqlSink


class MeteredSink(SqlSink):
    def epoch_end(self, report: EpochReport) -> None:
        super().epoch_end(report)  # observed once stored: a fenced-out copy counts nothing
        observe_epoch(report.metrics)
