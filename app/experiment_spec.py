"""Experiments: a base job spec plus a design, run as ordinary child jobs.

POST /v1/experiments takes one of these (discriminated by ``kind``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from app.run_metadata import RunMetadata
from app.spec import MAX_LIST_LAYERS, MLP, Float, Int, JobSpec, Optimizer, Sharpness, Strict, Until


class ExperimentBase(Strict):
    name: str = Field("experiment", min_length=1, max_length=200,
                      pattern=r"^[^\x00-\x1f\x7f]+$")
    base: JobSpec = Field(default_factory=JobSpec, description="The job every child varies.")
    metadata: RunMetadata = Field(default_factory=RunMetadata,
                                  description="The experiment's tags, note and keep.")

    @model_validator(mode="after")
    def _design_owned_fields(self) -> ExperimentBase:
        # The design sets these per child; in the base, a long list would be copied into
        # every child (an 8 MiB body stored 200 times over).
        for name in ("rows", "target_offset"):
            if getattr(self.base.data, name) is not None:
                raise ValueError(f"base.data.{name} is set by the experiment for each child; "
                                 "leave it out of the base")
        if self.base.metadata != RunMetadata():
            raise ValueError("base.metadata: tags, note and keep belong to the experiment "
                             "(its top-level metadata), not to its children")
        return self


class CrossValidation(ExperimentBase):
    """k-fold cross-validation over the development rows; the test split stays untouched."""

    kind: Literal["cross_validation"]
    k: Int = Field(5, ge=2, le=20)
    repeats: Int = Field(1, ge=1, le=10, description="Repeated k-fold with reshuffled folds.")
    seed: Int = Field(0, ge=0)
    stratify: bool = True


class LogUniform(Strict):
    log_uniform: tuple[Annotated[Float, Field(gt=0)], Annotated[Float, Field(gt=0)]]


class Uniform(Strict):
    uniform: tuple[Float, Float]


class IntUniform(Strict):
    int_uniform: tuple[Int, Int]


Distribution = LogUniform | Uniform | IntUniform
Values = Annotated[list[Any], Field(min_length=1, max_length=50)]
MAX_SWEEP_PARAMETERS = 32  # dotted paths swept at once (a grid multiplies them)


class Objective(Strict):
    """What a sweep ranks its trials by: a validation metric, or its k-fold CV mean."""

    metric: str = Field("val_loss", examples=["val_loss", "val_accuracy"],
                        description="A validation metric; never a test metric.")
    direction: Literal["auto", "min", "max"] = "auto"
    cv_folds: Int | None = Field(None, ge=2, le=10,
                                 description="Score each trial by its k-fold CV mean.")

    @model_validator(mode="after")
    def _validation_only(self) -> Objective:
        if not self.metric.startswith("val_"):
            raise ValueError("the objective must be a validation metric (val_*): selecting "
                             "on training or test metrics is not model selection")
        return self


class MedianStopping(Strict):
    """The median stopping rule (Golovin et al., Google Vizier, 2017): at the end of epoch s a
    trial stops when its best objective so far is worse than the median, over the completed
    trials, of their running means of the objective over epochs 1..s."""

    rule: Literal["median"] = "median"
    grace_epochs: Int = Field(3, ge=1, le=10_000,
                              description="No trial is stopped before this many epochs.")
    min_completed: Int = Field(3, ge=1, le=200, description=(
        "Completed trials that reached the epoch needed before any trial is stopped."))


class Sweep(ExperimentBase):
    """Grid or random search over dotted spec paths; the best configuration is retrained
    on train + val and evaluated once on the test split."""

    kind: Literal["sweep"]
    method: Literal["grid", "random"] = "grid"
    parameters: dict[str, Values | Distribution] = Field(
        min_length=1, max_length=MAX_SWEEP_PARAMETERS,
        examples=[{"optimizer.lr": {"log_uniform": [1e-4, 1e-1]},
                   "training.batch_size": [32, 128]}])
    trials: Int | None = Field(None, ge=1, le=200, description="Budget (random: required).")
    objective: Objective = Field(default_factory=Objective)
    seed: Int = Field(0, ge=0)
    retrain_best: bool = True
    early_termination: MedianStopping | None = Field(None, description=(
        "Stop poor trials early; stopped trials are listed but never chosen as best."))

    @model_validator(mode="after")
    def _method(self) -> Sweep:
        ranges = [k for k, v in self.parameters.items() if not isinstance(v, list)]
        if self.method == "grid" and ranges:
            raise ValueError(f"grid search needs value lists; {ranges} are distributions")
        if self.method == "random" and self.trials is None:
            raise ValueError("random search needs a trial budget (trials)")
        if self.early_termination is not None and self.objective.cv_folds:
            raise ValueError("early_termination compares one validation curve per trial; "
                             "with objective.cv_folds a trial has one per fold")
        return self


class Bagging(ExperimentBase):
    """n models on bootstrap resamples, ensembled (soft vote or mean), with an OOB estimate."""

    kind: Literal["bagging"]
    n_models: Int = Field(5, ge=2, le=50)
    seed: Int = Field(0, ge=0)


class Boosting(ExperimentBase):
    """SAMME (multi-class AdaBoost by weighted resampling) for classification; gradient
    boosting on residuals for regression."""

    kind: Literal["boosting"]
    rounds: Int = Field(5, ge=1, le=50)
    learning_rate: Float = Field(0.5, gt=0.0, le=1.0, description="Gradient-boosting shrinkage.")
    seed: Int = Field(0, ge=0)


class BiasVariance(ExperimentBase):
    """Bootstrap replicates per setting of one parameter; decomposition on the test rows."""

    kind: Literal["bias_variance"]
    parameter: str = Field("model.hidden", examples=["model.hidden", "regularization.l2"])
    values: Values = Field(examples=[[[4], [16], [64], [256]]])
    replicates: Int = Field(10, ge=2, le=50)
    seed: Int = Field(0, ge=0)


class BatchSize(ExperimentBase):
    """The same spec at several batch sizes: generalization gap against sharpness."""

    kind: Literal["batch_size"]
    batch_sizes: list[Int | Literal["full"]] = Field(min_length=2, max_length=12,
                                                     examples=[[16, 64, 256, "full"]])
    sharpness: Sharpness = Field(default_factory=Sharpness)
    until: Until | None = Field(
        None, description="Train every batch size until this training fit (the base's "
        "training.epochs is the budget), so the minima are compared at equal fit; the result "
        "reports each run's fit and epochs and warns when they did not reach comparable "
        "training losses.", examples=[{"train_loss": 0.05}])


class OptimizerComparison(ExperimentBase):
    """Several optimizers from the same initial weights and the same data order."""

    kind: Literal["optimizer_comparison"]
    optimizers: list[Optimizer] = Field(min_length=2, max_length=10)


class Depth(ExperimentBase):
    """The depth lesson of ResNet (He et al., 2016): the base MLP at each depth, plain and
    residual (an identity skip around every hidden layer after the first), reporting train
    and test error per depth and each layer's gradient norm in the first epoch. Past some
    depth the plain network fits its own training data worse, while the residual one holds."""

    kind: Literal["depth"]
    depths: list[Annotated[Int, Field(ge=1, le=MAX_LIST_LAYERS)]] = Field(
        min_length=2, max_length=12, description="Hidden layers of each pair of children.",
        examples=[[2, 8, 24]])
    width: Int = Field(32, ge=1, description="The width of every hidden layer (replaces "
                       "base.model.hidden; the rest of base.model applies to every child).")

    @model_validator(mode="after")
    def _an_mlp_at_distinct_depths(self) -> Depth:
        if not isinstance(self.base.model, MLP):
            raise ValueError(f"base.model.kind: the depth experiment varies an mlp's hidden "
                             f"layers; {self.base.model.kind} is not supported")
        if len(set(self.depths)) != len(self.depths):
            raise ValueError(f"depths: {self.depths} repeats a depth; list each once")
        return self


Experiment = Annotated[
    CrossValidation | Sweep | Bagging | Boosting | BiasVariance | BatchSize
    | OptimizerComparison | Depth,
    Field(discriminator="kind"),
]
