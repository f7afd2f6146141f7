"""The names of the metrics a job logs, and which way each is better. Torch-free: the API
validates monitors and the worker's parent process ranks trials with it.

The loop and ``metrics.evaluate`` emit exactly these names (``tests/training`` ties them
by running the loop), so a monitor accepted at submission is one the run reports.
"""

from __future__ import annotations

# What ``metrics.evaluate`` returns for a split, per task (also the final summary's keys).
EVAL: dict[str, tuple[str, ...]] = {
    "classification": ("loss", "accuracy"),
    "regression": ("loss", "rmse", "mae", "r2"),
    # mean squared error per standardized feature (the loss, named for comparisons)
    "reconstruction": ("loss", "mse"),
}
# The training split's per-epoch metrics: measured on the device, then on the host.
TRAIN_DEVICE = ("loss", "grad_norm", "weight_norm")
TRAIN_CLASSIFICATION = ("accuracy",)  # the fraction of training rows predicted right
TRAIN_HOST = ("lr", "epoch_seconds", "samples_per_second")

MAXIMIZED = frozenset({"accuracy", "f1", "r2"})


def train_names(task: str) -> tuple[str, ...]:
    extra = TRAIN_CLASSIFICATION if task == "classification" else ()
    return TRAIN_DEVICE + extra + TRAIN_HOST


def epoch_metric_names(task: str, has_val: bool) -> set[str]:
    """Every metric a job logs per epoch, as ``split_name`` (what monitors may name)."""
    names = {f"train_{m}" for m in train_names(task)}
    if has_val:
        names |= {f"val_{m}" for m in EVAL[task]}
    return names


def default_monitor(has_val: bool) -> str:
    """What the best epoch is judged by when the spec names no monitor."""
    return "val_loss" if has_val else "train_loss"


def metric_mode(monitor: str, mode: str) -> str:
    """auto: larger is better for accuracy, f1 and r2; smaller for everything else."""
    if mode != "auto":
        return mode
    return "max" if monitor.rsplit("_", 1)[-1] in MAXIMIZED else "min"
