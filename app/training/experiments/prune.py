"""Early termination of sweep trials: the median stopping rule. Pure Python (no torch, no
SQL); the worker feeds it the curves it reads from the metrics table.

Golovin et al., "Google Vizier" (KDD 2017): a trial is stopped at step s when its best
objective value up to s is strictly worse than the median of the running averages, over
steps 1..s, of the completed trials' objective values.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MedianDecision:
    epoch: int
    best: float  # the trial's best objective so far
    median: float  # the median of the completed trials' running means at this epoch
    peers: int  # completed trials that reached this epoch

    def reason(self, metric: str) -> str:
        return (f"best {metric} {self.best:.6g} by epoch {self.epoch} is worse than the median "
                f"{self.median:.6g} of {self.peers} completed trials' running means")


def median_stop(own: Sequence[float], completed: Sequence[Sequence[float]], *, maximize: bool,
                grace_epochs: int, min_completed: int) -> MedianDecision | None:
    """``own`` holds this trial's objective for epochs 1..s; each of ``completed`` a finished
    trial's curve (shorter ones, e.g. early-stopped, take part only up to their length).
    Returns the decision to stop, or None to go on."""
    epoch = len(own)
    if epoch < grace_epochs:
        return None
    means = [statistics.fmean(curve[:epoch]) for curve in completed if len(curve) >= epoch]
    if len(means) < min_completed:
        return None
    median = statistics.median(means)
    best = max(own) if maximize else min(own)
    worse = best < median if maximize else best > median
    return MedianDecision(epoch, best, median, len(means)) if worse else None
