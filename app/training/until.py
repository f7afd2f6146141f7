"""Training until a target fit (``training.until``): judged on the epoch's logged metrics."""

from __future__ import annotations

from app import spec as s


def reached(until: s.Until | None, epoch_metrics: dict[str, float]) -> bool:
    """True once the epoch's mean training loss or training accuracy meets the target."""
    if until is None:
        return False
    if until.train_loss is not None:
        return epoch_metrics["train_loss"] <= until.train_loss
    target = until.train_accuracy if until.train_accuracy is not None else 1.0
    return epoch_metrics.get("train_accuracy", 0.0) >= target
