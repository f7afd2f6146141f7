"""Typed views of the experiment results the plots read.

The aggregation (``app/training/experiments/aggregate.py``) stores each kind's result as
JSON; these models name the fields the plots use and ignore the rest, so a plot never
reads a result by string keys."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Metrics = dict[str, float]


class Read(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MeanStd(Read):
    mean: float
    std: float
    n: int


class Fold(Read):
    repeat: int
    fold: int
    val: Metrics


class CrossValidationResult(Read):
    folds: list[Fold]
    val: dict[str, MeanStd]


class Trial(Read):
    trial: int
    params: dict[str, Any]
    objective: float | None
    failed: bool
    pruned: dict[str, Any] | None


class Ranked(Read):
    trial: int
    params: dict[str, Any]
    objective: float


class Objective(Read):
    metric: str
    direction: str


class SweepResult(Read):
    objective: Objective
    trials: list[Trial]
    leaderboard: list[Ranked]


class Member(Read):
    member: int
    test: Metrics


class BaggingResult(Read):
    members: list[Member]
    member_test: dict[str, MeanStd]
    ensemble_test: Metrics | None = None
    oob_estimate: Metrics | None = None


class Round(Read):
    round: int
    learner_weight: float
    ensemble_test: Metrics
    learner_test: Metrics | None = None  # SAMME (classification)
    train_residual_rmse: float | None = None  # gradient boosting (regression)


class BoostingResult(Read):
    algorithm: str | None = None  # absent when a round failed
    rounds: list[Round]


class Setting(Read):
    value: Any
    expected_loss: float
    variance: float
    bias2: float | None = None  # squared loss, the noise-free truth known
    noise_empirical: float | None = None
    bias2_plus_noise: float | None = None  # squared loss, truth unknown
    bias: float | None = None  # zero-one loss


class BiasVarianceResult(Read):
    parameter: str
    loss: str
    curve: list[Setting]


class BatchPoint(Read):
    batch_size: int | str
    generalization_gap: Metrics
    hessian_top_eigenvalue: float
    epsilon_sharpness: float


class BatchSizeResult(Read):
    curve: list[BatchPoint]


class Run(Read):
    optimizer: dict[str, Any]
    curves: dict[str, list[float]]


class OptimizerComparisonResult(Read):
    epochs: list[int]
    runs: list[Run]


class LayerNorm(Read):
    name: str
    norm: float


class GradNorms(Read):
    layers: list[LayerNorm]


class DepthPoint(Read):
    depth: int
    train_error: float
    test_error: float
    grad_norms: GradNorms | None = None


class DepthResult(Read):
    error: str | None = None  # "1 - accuracy", "rmse" or "loss"; None when no child ran
    plain: list[DepthPoint]
    residual: list[DepthPoint]
