"""What a run returns: typed, torch-free (the worker's parent process, the aggregation and
the API read them). ``Summary.to_json()`` is the exact JSON stored in ``jobs.summary``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SplitMetrics = dict[str, float]  # metric name -> value, as metric_names.EVAL lists them

# Keys left out of the stored JSON when they do not apply (rather than stored as null).
ABSENT_WHEN_NONE = ("val", "macro_f1", "confusion_matrix", "predictions", "sharpness",
                    "grad_norms", "worker", "attempt")


def _is_none(value: object) -> bool:
    return value is None


def _absent() -> Any:
    """An ABSENT_WHEN_NONE field: left out of every dump (to_json, the API's JobOut) when
    None, so the API returns the stored JSON as it is."""
    return Field(None, exclude_if=_is_none)


class Pruned(BaseModel):
    """A sweep's rule ended this trial at ``epoch``."""

    epoch: int
    reason: str


class SharpnessResult(BaseModel):
    hessian_top_eigenvalue: float
    epsilon_sharpness: float
    epsilon: float
    rows: int


class LayerGradNorm(BaseModel):
    name: str  # the module that owns the parameters (``blocks.3.linear``, ``head``)
    norm: float


class GradNorms(BaseModel):
    """Each layer's gradient norm (its parameters together, before clipping), averaged over
    the first epoch's steps; layers from input to output (``grad_norms.py`` says why)."""

    epoch: Literal[1] = 1
    steps: int
    layers: list[LayerGradNorm]


class Summary(BaseModel):
    """The end of a completed run: final metrics of each split and how the run went."""

    model_config = ConfigDict(extra="ignore")

    task: str
    epochs_completed: int
    best_epoch: int | None
    monitor: str
    best_value: float | None
    early_stopped: bool
    stopped_epoch: int | None
    pruned: Pruned | None = None
    restored_best_weights: bool = False
    parameters: int
    rows: dict[str, int]
    seed: int
    device: str
    versions: dict[str, str]
    train: SplitMetrics
    val: SplitMetrics | None = _absent()
    test: SplitMetrics
    generalization_gap: SplitMetrics
    macro_f1: float | None = _absent()
    confusion_matrix: list[list[int]] | None = _absent()
    predictions: dict[str, list[Any]] | None = _absent()  # "dev"/"test" -> per row
    sharpness: SharpnessResult | None = _absent()
    grad_norms: GradNorms | None = _absent()  # training.record_grad_norms
    worker: str | None = _absent()  # set by the worker that ran it
    attempt: int | None = _absent()

    def metric(self, name: str) -> float:
        """A final metric by its logged name, ``split_name`` (``val_loss``)."""
        split, metric = name.split("_", 1)
        values = {"train": self.train, "val": self.val, "test": self.test}.get(split) or {}
        return values[metric]

    @property
    def epochs_needed(self) -> int:
        """The best epoch, or every epoch run when none was judged best."""
        return self.best_epoch or self.epochs_completed

    def prediction(self, rows: Literal["dev", "test"]) -> list[Any]:
        if self.predictions is None or rows not in self.predictions:
            raise ValueError(f"this run recorded no {rows} predictions")
        return self.predictions[rows]

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump()
        return {k: v for k, v in out.items() if not (k in ABSENT_WHEN_NONE and v is None)}


@dataclass(frozen=True)
class Outcome:
    """A run's end. ``completed`` carries the summary; ``stopped`` (cancelled, preempted,
    timeout) carries the state at the stop and where in the run that was."""

    status: Literal["completed", "stopped"]
    epoch: int  # completed epochs
    step: int  # the next step inside the current epoch
    reason: str | None = None
    summary: Summary | None = None
    checkpoint: bytes | None = None
