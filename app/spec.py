"""THE job spec: the one contract shared by the API (validation, OpenAPI) and the worker.

A spec names the four key components of deep learning: the data, the model, the
loss and the optimization algorithm (with its schedule and regularization).
Every field has a default that trains something sensible. Checks that need to
know the data (task, feature count, parameter budget) live in
``app.validation``; everything checkable from the spec alone lives here.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    Tag,
    model_validator,
)

from app.run_metadata import RunMetadata

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "identity"]
Norm = Literal["none", "batch", "layer", "group", "instance"]
# What a job learns: the data's target (classification, regression) or its own inputs
# (reconstruction). "unlabeled" is the task of an uploaded dataset without a target column:
# only a reconstruction job can use it.
Task = Literal["classification", "regression", "reconstruction", "unlabeled"]
# JSON true/false is not a number: lax int/float would turn `"min_lr": false` into 0.0.
# Strict per type (not model-wide strict, which refuses JSON arrays for tuples); a float
# still accepts an integer.
Int = StrictInt
Float = StrictFloat
# Structural list caps, far above the configurable Limits (max_layers 32, max_epochs 1000),
# so a huge list is refused while parsing and the Limits still name the real cap.
MAX_LIST_LAYERS = 256
MAX_LIST_MILESTONES = 10_000
MAX_LIST_CLASSES = 10_000
# One value per development row (boosting's offsets and weights): the default row limits
# (max_dataset_rows, max_rows_synthetic), so every boosting experiment they accept can run
# all its rounds; above it a boosting experiment is refused at submission.
MAX_DEV_ROWS = 1_000_000


def _kind_or(default: str) -> Discriminator:
    """Discriminate on ``kind``; a block without one gets the component's default kind."""

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            return str(value.get("kind", default))
        kind = getattr(value, "kind", None)  # a model instance; anything else is no block
        return None if kind is None else str(kind)

    return Discriminator(pick)


def _examples_from_defaults(schema: dict[str, Any]) -> None:
    """Every documented field shows an example: its default, unless it names its own."""
    for prop in schema.get("properties", {}).values():
        if "examples" not in prop and prop.get("default") is not None:
            prop["examples"] = [prop["default"]]


class Strict(BaseModel):
    """Unknown fields are errors: a typo must not silently train something else."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_examples_from_defaults)


# --------------------------------------------------------------------------- data


class BuiltinSource(Strict):
    """A scikit-learn bundled dataset (no download)."""

    builtin: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"] = Field(
        description="digits: 1797 8x8 images (10 classes, viewed as 1x8x8); iris, wine, "
        "breast_cancer: tabular classification; diabetes: regression.",
        examples=["digits"],
    )


class GeneratorBase(Strict):
    n_samples: Int = Field(1000, ge=20, le=1_000_000, description="Rows to generate.")
    seed: Int = Field(0, ge=0, description="Generator seed (data is a pure function of it).")


class MoonsSource(GeneratorBase):
    """Two interleaving half circles (binary classification)."""

    synthetic: Literal["moons"] = Field(examples=["moons"])
    noise: Float = Field(0.2, ge=0.0, le=10.0, description="Std of Gaussian noise.")


class CirclesSource(GeneratorBase):
    """A small circle inside a large one (binary classification)."""

    synthetic: Literal["circles"] = Field(examples=["circles"])
    noise: Float = Field(0.1, ge=0.0, le=10.0, description="Std of Gaussian noise.")
    factor: Float = Field(0.5, gt=0.0, lt=1.0, description="Inner/outer radius ratio.")


class BlobsSource(GeneratorBase):
    """Isotropic Gaussian blobs (multi-class classification)."""

    synthetic: Literal["blobs"] = Field(examples=["blobs"])
    n_features: Int = Field(2, ge=1, le=10_000)
    centers: Int = Field(3, ge=2, le=1000, description="Number of blobs = classes.")
    cluster_std: Float = Field(1.0, gt=0.0, le=100.0)


class SpiralsSource(GeneratorBase):
    """Interleaved spiral arms in 2-D, one class per arm (not linearly separable)."""

    synthetic: Literal["spirals"] = Field(examples=["spirals"])
    n_classes: Int = Field(2, ge=2, le=20, description="Number of arms = classes.")
    turns: Float = Field(1.5, gt=0.0, le=10.0, description="Revolutions per arm.")
    noise: Float = Field(0.2, ge=0.0, le=10.0, description="Std of Gaussian noise.")


class MakeClassificationSource(GeneratorBase):
    """scikit-learn's make_classification: informative, redundant and noise features."""

    synthetic: Literal["make_classification"] = Field(examples=["make_classification"])
    n_features: Int = Field(20, ge=2, le=10_000)
    n_informative: Int = Field(5, ge=1, le=10_000)
    n_redundant: Int = Field(2, ge=0, le=10_000)
    n_classes: Int = Field(2, ge=2, le=1000)
    class_sep: Float = Field(1.0, gt=0.0, le=100.0)
    flip_y: Float = Field(0.01, ge=0.0, le=1.0, description="Fraction of labels flipped.")

    @model_validator(mode="after")
    def _features_add_up(self) -> MakeClassificationSource:
        if self.n_informative + self.n_redundant > self.n_features:
            raise ValueError("n_informative + n_redundant must be <= n_features")
        if self.n_classes > 2**self.n_informative:
            raise ValueError("n_classes must be <= 2**n_informative")
        return self


class MakeRegressionSource(GeneratorBase):
    """scikit-learn's make_regression: a random linear model plus Gaussian noise."""

    synthetic: Literal["make_regression"] = Field(examples=["make_regression"])
    n_features: Int = Field(10, ge=1, le=10_000)
    n_informative: Int = Field(5, ge=1, le=10_000)
    noise: Float = Field(10.0, ge=0.0, le=1e6, description="Std of the output noise.")


class FunctionSource(GeneratorBase):
    """y = f(x) + noise on 1-D x: the universal-approximation demo."""

    synthetic: Literal["function"] = Field(examples=["function"])
    fn: Literal["sin", "cos", "abs", "square", "step", "sawtooth"] = Field("sin")
    x_min: Float = Field(-math.pi, ge=-1e4, le=1e4)
    x_max: Float = Field(math.pi, ge=-1e4, le=1e4)
    noise: Float = Field(0.05, ge=0.0, le=100.0, description="Std of the output noise.")

    @model_validator(mode="after")
    def _range(self) -> FunctionSource:
        if self.x_max <= self.x_min:
            raise ValueError("x_max must be greater than x_min")
        return self


class MotifOrderSource(GeneratorBase):
    """Sequences of Gaussian noise carrying two motifs at random steps; the class is 1 when
    motif A comes before motif B. Order decides, position does not: a sequence task that an
    MLP on the flat row does not solve from few rows (rows are [n_features, length],
    feature-major, the natural data.input_shape)."""

    synthetic: Literal["motif_order"] = Field(examples=["motif_order"])
    n_features: Int = Field(4, ge=1, le=256, description="Features per step (C).")
    length: Int = Field(16, ge=2, le=1024, description="Steps per sequence (L).")
    noise: Float = Field(0.5, ge=0.0, le=10.0, description="Std of the background noise; "
                         "each motif is a unit-norm pattern scaled by 2.")


SyntheticSource = Annotated[
    MotifOrderSource
    | MoonsSource
    | CirclesSource
    | BlobsSource
    | SpiralsSource
    | MakeClassificationSource
    | MakeRegressionSource
    | FunctionSource,
    Field(discriminator="synthetic"),
]


class DatasetSource(Strict):
    """A dataset uploaded through POST /v1/datasets."""

    dataset: str = Field(min_length=1, max_length=64, examples=["ds_3f2a9c1e5b7d4a10"])


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = value.keys()
    elif isinstance(value, BaseModel):
        keys = type(value).model_fields.keys()
    else:  # not an object: pydantic reports the source_kind error, not a 500
        return None
    for kind in ("builtin", "synthetic", "dataset"):
        if kind in keys:
            return kind
    return None


Source = Annotated[
    Annotated[BuiltinSource, Tag("builtin")]
    | Annotated[SyntheticSource, Tag("synthetic")]
    | Annotated[DatasetSource, Tag("dataset")],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message="source needs one of the keys 'builtin', 'synthetic' or 'dataset'",
    ),
]


class Split(Strict):
    """Train/validation/test split. Test rows are never used for any selection."""

    val: Float = Field(0.15, ge=0.0, le=0.5, description="Fraction of rows for validation.")
    test: Float = Field(0.15, gt=0.0, le=0.5, description="Fraction of rows held out for test.")
    stratify: bool = Field(True, description="Keep class proportions in every split.")
    seed: Int = Field(0, ge=0)


class FoldRows(Strict):
    """Train on the development rows (train + val) outside fold ``index`` of a k-fold
    partition and validate on the fold. The test rows are never part of any fold."""

    kind: Literal["fold"] = "fold"
    k: Int = Field(5, ge=2, le=50)
    index: Int = Field(0, ge=0, description="Which fold validates (0 .. k-1).")
    repeat: Int = Field(0, ge=0, le=100, description="Repeated k-fold: reshuffles the folds.")
    seed: Int = Field(0, ge=0)
    stratify: bool = Field(True, description="Stratified folds for classification.")

    @model_validator(mode="after")
    def _index(self) -> FoldRows:
        if self.index >= self.k:
            raise ValueError(f"index must be < k ({self.k})")
        return self


class BootstrapRows(Strict):
    """Train on n rows drawn with replacement from the n development rows (optionally
    weighted); validate on the rows never drawn (out-of-bag)."""

    kind: Literal["bootstrap"] = "bootstrap"
    seed: Int = Field(0, ge=0)
    weights: list[Annotated[Float, Field(ge=0.0)]] | None = Field(
        None, max_length=MAX_DEV_ROWS,
        description="Draw probabilities, one per development row (sorted by row index).")


Rows = Annotated[
    Annotated[FoldRows, Tag("fold")] | Annotated[BootstrapRows, Tag("bootstrap")],
    _kind_or("fold"),
]


class Labels(Strict):
    """Few labels: train on a subset of the training split's rows only (stratified by class
    for classification; at least 2 rows and one per class), chosen by a seed. The other
    training rows and their labels are not used; validation and test rows are unchanged."""

    fraction: Float = Field(gt=0.0, le=1.0, description="Share of the training rows whose "
                            "labels are used (rounded up).", examples=[0.05])
    seed: Int = Field(0, ge=0, description="Which rows: the subset is a pure function of it.")


class Data(Strict):
    """Where the rows come from, how they are split, and how each row is shaped."""

    source: Source = Field(
        default_factory=lambda: BuiltinSource(builtin="digits"),
        examples=[{"builtin": "digits"}, {"synthetic": "moons", "noise": 0.2}],
    )
    split: Split = Field(default_factory=Split)
    standardize: bool = Field(
        True, description="Scale features with mean/std fitted on the training rows only."
    )
    standardize_target: bool = Field(
        True,
        description="Regression: fit the net on standardized targets (train statistics); "
        "rmse/mae/r2 are always reported in the original units.",
    )
    input_shape: list[Int] | None = Field(
        None,
        min_length=2,
        max_length=3,
        description="How a conv model views each row: [channels, length] (1-D) or "
        "[channels, height, width] (2-D). digits defaults to [1, 8, 8].",
        examples=[[1, 8, 8]],
    )
    rows: Rows | None = Field(
        None, description="Resample the development rows (train + val): a k-fold split or a "
        "bootstrap. Experiments use it for their children; test rows are never touched.")
    target_offset: list[Float] | None = Field(
        None, max_length=MAX_DEV_ROWS,
        description="Regression: subtract these values (one per development row, sorted by "
        "row index, original units) from the targets; gradient boosting fits residuals so.")
    labels: Labels | None = Field(
        None, description="Use the labels of only a fraction of the training rows (a "
        "semi-supervised setting: pretrain on every row with task reconstruction, then "
        "fine-tune on these).", examples=[{"fraction": 0.05, "seed": 0}])

    @model_validator(mode="after")
    def _shape_positive(self) -> Data:
        if self.input_shape is not None and min(self.input_shape) < 1:
            raise ValueError("input_shape entries must be >= 1")
        return self


# -------------------------------------------------------------------------- model


MAX_FREEZE_PREFIXES = 64


class InitFrom(Strict):
    """Start from another succeeded job's weights (same tenant): pretrain, then fine-tune.
    Every tensor of this model must exist with the same shape in that checkpoint (the output
    layer aside with head: reinit); checked at submission."""

    job: str = Field(min_length=1, max_length=64, examples=["job_3f2a9c1e5b7d4a10"])
    checkpoint: Literal["best", "latest"] = Field(
        "best", description="best: the source's best epoch (by its monitor); latest: its end.")
    freeze: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=MAX_FREEZE_PREFIXES,
        description="Parameter-name prefixes kept fixed during training (e.g. 'blocks.0.', "
        "'rnn.', 'encoder.layers.0.'); each must name a tensor of the checkpoint.",
        examples=[["blocks.0."]])
    head: Literal["reinit", "keep"] = Field(
        "reinit", description="reinit: a fresh output layer (head.*) for the new task; keep: "
        "the source's, which must then have the same shape.")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Set by the server at submission: the "
        "source checkpoint's sha256, so the job trains from exactly those weights. A value "
        "given here must match it.")


class ModelBase(Strict):
    init_from: InitFrom | None = Field(
        None, description="Warm start from another job's checkpoint (see InitFrom).")


class MLP(ModelBase):
    """Stacked affine maps each followed by a nonlinearity. hidden=[] is a linear model."""

    kind: Literal["mlp"] = "mlp"
    hidden: list[Annotated[Int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 256], max_length=MAX_LIST_LAYERS,
        description="Hidden layer widths; [] gives linear/logistic regression.",
        examples=[[256, 256]],
    )
    activation: Activation = "relu"
    dropout: Float = Field(0.0, ge=0.0, lt=1.0, description="Drop probability after each layer.")
    norm: Norm = Field(
        "none",
        description="Per hidden layer: batch (BatchNorm1d), layer (LayerNorm), group "
        "(GroupNorm over groups of features), instance (per-sample statistics over the "
        "feature vector, no affine; for a vector this equals an affine-free layer norm).",
    )
    groups: Int = Field(2, ge=1, description="Groups for norm=group; must divide each width.")
    residual: bool = Field(
        False, description="Skip connections around hidden layers of equal width."
    )
    init: Literal["default", "kaiming", "xavier"] = "default"

    @model_validator(mode="after")
    def _groups_divide(self) -> MLP:
        if self.norm == "group":
            for i, width in enumerate(self.hidden):
                if width % self.groups:
                    raise ValueError(f"groups={self.groups} does not divide hidden[{i}]={width}")
        return self


class CNN(ModelBase):
    """Conv stages (1-D or 2-D by data.input_shape) and a global-pooling head.

    With residual=true each stage adds basic blocks (conv-norm-act-conv-norm plus
    the identity): a small ResNet.
    """

    kind: Literal["cnn"] = "cnn"
    channels: list[Annotated[Int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [32, 64], min_length=1, max_length=MAX_LIST_LAYERS,
        description="Channels per stage."
    )
    kernel_size: Int = Field(3, ge=1, le=15)
    pool: Literal["max", "avg", "none"] = Field("max", description="2x downsampling per stage.")
    activation: Activation = "relu"
    norm: Norm = "batch"
    groups: Int = Field(4, ge=1, description="Groups for norm=group; must divide each stage.")
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    residual: bool = False
    blocks_per_stage: Int = Field(1, ge=1, le=8, description="Basic blocks per stage (residual).")
    init: Literal["default", "kaiming", "xavier"] = "default"

    @model_validator(mode="after")
    def _groups_divide(self) -> CNN:
        if self.norm == "group":
            for i, width in enumerate(self.channels):
                if width % self.groups:
                    raise ValueError(f"groups={self.groups} does not divide channels[{i}]={width}")
        return self


SEQUENCE_VIEW = ("a sequence model reads each row as data.input_shape [C, L]: C features per "
                 "step, L steps, stored feature-major (value c*L + t is feature c at step t, "
                 "the same view a 1-D cnn uses)")


class RNN(ModelBase):
    """A recurrent network (GRU or LSTM) over the steps of a sequence, pooled, then a linear
    head. Rows are viewed as data.input_shape [C, L]: C features per step, L steps."""

    kind: Literal["rnn"] = "rnn"
    cell: Literal["gru", "lstm"] = Field("gru", description="Recurrent cell.")
    hidden: Int = Field(64, ge=1, le=1024, description="Hidden units per layer and direction.")
    layers: Int = Field(1, ge=1, le=8, description="Stacked recurrent layers.")
    bidirectional: bool = Field(False, description="Also read the sequence backwards.")
    dropout: Float = Field(0.0, ge=0.0, lt=1.0, description="Drop probability between "
                           "stacked layers and on the pooled features before the head.")
    pooling: Literal["last", "mean"] = Field(
        "last", description="last: the final hidden state of the top layer (each "
        "direction's own last step); mean: the top layer's outputs averaged over steps.")


class Transformer(ModelBase):
    """A pre-norm Transformer encoder (self-attention + feed-forward per layer) over the
    steps of a sequence, pooled, then a linear head. Rows are viewed as data.input_shape
    [C, L]: each step's C features are projected to d_model."""

    kind: Literal["transformer"] = "transformer"
    d_model: Int = Field(32, ge=1, le=1024, description="Width of every token.")
    heads: Int = Field(4, ge=1, le=64, description="Attention heads; must divide d_model.")
    layers: Int = Field(2, ge=1, le=16, description="Encoder layers.")
    ff: Int = Field(64, ge=1, le=4096, description="Hidden width of each feed-forward block.")
    dropout: Float = Field(0.0, ge=0.0, lt=1.0, description="In attention, after each "
                           "sub-layer and in the feed-forward block.")
    activation: Literal["relu", "gelu"] = "gelu"
    positional: Literal["learned", "sinusoidal"] = Field(
        "sinusoidal", description="Position information added to each token: a trained "
        "vector per position, or the fixed sines and cosines of Vaswani et al. (2017).")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="cls: a trained token prepended to the sequence is read out "
        "(BERT); mean: the tokens averaged.")

    @model_validator(mode="after")
    def _heads_divide(self) -> Transformer:
        if self.d_model % self.heads:
            raise ValueError(f"heads={self.heads} does not divide d_model={self.d_model}")
        return self


SequenceModel = RNN | Transformer

Model = Annotated[
    Annotated[MLP, Tag("mlp")]
    | Annotated[CNN, Tag("cnn")]
    | Annotated[RNN, Tag("rnn")]
    | Annotated[Transformer, Tag("transformer")],
    _kind_or("mlp"),
]
ModelSpec = MLP | CNN | RNN | Transformer


# --------------------------------------------------------------------------- loss


# A float32 weight: a tiny positive float becomes 0 on the device, and a batch of only that
# class then divides 0 by 0 (NaN, a spurious "diverged"); the bounds keep it representable.
ClassWeight = Annotated[Float, Field(ge=1e-6, le=1e6)]


class CrossEntropy(Strict):
    """Softmax cross-entropy, computed through log-softmax (no overflow)."""

    kind: Literal["cross_entropy"] = "cross_entropy"
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: list[ClassWeight] | None = Field(
        None, max_length=MAX_LIST_CLASSES, description="One weight per class, between 1e-6 and 1e6."
    )


class NLL(Strict):
    """Negative log-likelihood of log-softmax outputs (= cross-entropy without smoothing)."""

    kind: Literal["nll"] = "nll"
    class_weights: list[ClassWeight] | None = Field(
        None, max_length=MAX_LIST_CLASSES,
        description="One weight per class, between 1e-6 and 1e6.")


class BCE(Strict):
    """Binary cross-entropy on one logit (sigmoid inside the loss, stable)."""

    kind: Literal["bce"] = "bce"
    pos_weight: Float = Field(1.0, ge=1e-6, le=1e6, description="Weight of positive examples.")


class MSE(Strict):
    """Mean squared error (regression); the maximum-likelihood loss under Gaussian noise."""

    kind: Literal["mse"] = "mse"


class MAE(Strict):
    """Mean absolute error (regression); robust to outliers, fits the conditional median."""

    kind: Literal["mae"] = "mae"


class Huber(Strict):
    """Squared error for small residuals, absolute error for large ones (regression)."""

    kind: Literal["huber"] = "huber"
    delta: Float = Field(1.0, gt=0.0, description="Quadratic below delta, linear above.")


Loss = Annotated[
    Annotated[CrossEntropy, Tag("cross_entropy")]
    | Annotated[NLL, Tag("nll")]
    | Annotated[BCE, Tag("bce")]
    | Annotated[MSE, Tag("mse")]
    | Annotated[MAE, Tag("mae")]
    | Annotated[Huber, Tag("huber")],
    _kind_or("cross_entropy"),
]
CLASSIFICATION_LOSSES = frozenset({"cross_entropy", "nll", "bce"})
JobTask = Literal["supervised", "reconstruction"]

# ---------------------------------------------------------------------- optimizer

LR = Annotated[Float, Field(gt=0.0, le=1e4, description="Learning rate (step size).")]
WeightDecay = Annotated[Float, Field(ge=0.0, le=10.0)]
Eps = Annotated[Float, Field(gt=0.0, le=1.0, description="Added to denominators (stability).")]


class OptimizerBase(Strict):
    decay_all_parameters: bool = Field(
        False,
        description="false: weight decay touches weight matrices/kernels only, not biases "
        "or norm parameters; true: every parameter.",
    )


class SGD(OptimizerBase):
    """Gradient descent; momentum adds inertia, nesterov=true is NAG (look-ahead gradient)."""

    kind: Literal["sgd"] = "sgd"
    lr: LR = 0.01
    momentum: Float = Field(0.0, ge=0.0, lt=1.0)
    dampening: Float = Field(0.0, ge=0.0, le=1.0)
    nesterov: bool = False
    weight_decay: WeightDecay = 0.0

    @model_validator(mode="after")
    def _nesterov(self) -> SGD:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        return self


class Adagrad(OptimizerBase):
    """Per-parameter step shrinking with the sum of squared gradients."""

    kind: Literal["adagrad"] = "adagrad"
    lr: LR = 0.01
    lr_decay: Float = Field(0.0, ge=0.0, le=1.0)
    weight_decay: WeightDecay = 0.0
    initial_accumulator_value: Float = Field(0.0, ge=0.0)
    eps: Eps = 1e-10


class Adadelta(OptimizerBase):
    """Adagrad with an exponential moving average instead of an ever-growing sum."""

    kind: Literal["adadelta"] = "adadelta"
    lr: LR = 1.0
    rho: Float = Field(0.9, ge=0.0, le=1.0)
    eps: Eps = 1e-6
    weight_decay: WeightDecay = 0.0


class RMSprop(OptimizerBase):
    """EMA of squared gradients divides the step (Hinton's lecture 6e)."""

    kind: Literal["rmsprop"] = "rmsprop"
    lr: LR = 0.01
    alpha: Float = Field(0.99, ge=0.0, lt=1.0, description="Smoothing constant of the EMA.")
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.0
    momentum: Float = Field(0.0, ge=0.0, lt=1.0)
    centered: bool = False


class Adam(OptimizerBase):
    """Momentum plus an EMA of squared gradients, bias-corrected. weight_decay is L2 (coupled)."""

    kind: Literal["adam"] = "adam"
    lr: LR = 1e-3
    betas: tuple[
        Annotated[Float, Field(ge=0.0, lt=1.0)], Annotated[Float, Field(ge=0.0, lt=1.0)]
    ] = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.0
    amsgrad: bool = False


class AdamW(Adam):
    """Adam with decoupled weight decay."""

    kind: Literal["adamw"] = "adamw"  # type: ignore[assignment]
    weight_decay: WeightDecay = 0.01


Optimizer = Annotated[
    Annotated[SGD, Tag("sgd")]
    | Annotated[Adagrad, Tag("adagrad")]
    | Annotated[Adadelta, Tag("adadelta")]
    | Annotated[RMSprop, Tag("rmsprop")]
    | Annotated[Adam, Tag("adam")]
    | Annotated[AdamW, Tag("adamw")],
    _kind_or("adam"),
]

# ----------------------------------------------------------------------- schedule


class ScheduleBase(Strict):
    warmup_epochs: Float = Field(
        0.0, ge=0.0, le=1000.0, description="Linear warm-up from 0 to the base lr (per step)."
    )


class Constant(ScheduleBase):
    """The base lr throughout (after any warm-up)."""

    kind: Literal["constant"] = "constant"


class Step(ScheduleBase):
    """lr x gamma every step_size epochs."""

    kind: Literal["step"] = "step"
    step_size: Int = Field(10, ge=1)
    gamma: Float = Field(0.1, gt=0.0, le=1.0)


class MultiStep(ScheduleBase):
    """lr x gamma at each milestone epoch."""

    kind: Literal["multistep"] = "multistep"
    milestones: list[Annotated[Int, Field(ge=1)]] = Field(
        default_factory=lambda: [10, 20], max_length=MAX_LIST_MILESTONES)
    gamma: Float = Field(0.1, gt=0.0, le=1.0)


class Exponential(ScheduleBase):
    """lr x gamma every epoch."""

    kind: Literal["exponential"] = "exponential"
    gamma: Float = Field(0.95, gt=0.0, le=1.0)


class Cosine(ScheduleBase):
    """Cosine annealing from the base lr to min_lr over the run (per step)."""

    kind: Literal["cosine"] = "cosine"
    min_lr: Float = Field(0.0, ge=0.0)


class OneCycle(ScheduleBase):
    """Up from max_lr/div_factor to max_lr, then cosine down to max_lr/final_div_factor."""

    kind: Literal["one_cycle"] = "one_cycle"
    max_lr: Float | None = Field(None, gt=0.0, description="Defaults to the optimizer's lr.")
    pct_start: Float = Field(0.3, gt=0.0, lt=1.0)
    div_factor: Float = Field(25.0, ge=1.0)
    final_div_factor: Float = Field(1e4, ge=1.0)


class ReduceOnPlateau(ScheduleBase):
    """lr x factor when the monitored metric stalls for patience epochs."""

    kind: Literal["reduce_on_plateau"] = "reduce_on_plateau"
    monitor: str = Field("val_loss", examples=["val_loss", "val_accuracy"])
    mode: Literal["auto", "min", "max"] = "auto"
    factor: Float = Field(0.1, gt=0.0, lt=1.0)
    patience: Int = Field(3, ge=0)
    threshold: Float = Field(1e-4, ge=0.0)
    min_lr: Float = Field(0.0, ge=0.0)


Schedule = Annotated[
    Annotated[Constant, Tag("constant")]
    | Annotated[Step, Tag("step")]
    | Annotated[MultiStep, Tag("multistep")]
    | Annotated[Exponential, Tag("exponential")]
    | Annotated[Cosine, Tag("cosine")]
    | Annotated[OneCycle, Tag("one_cycle")]
    | Annotated[ReduceOnPlateau, Tag("reduce_on_plateau")],
    _kind_or("constant"),
]

# ----------------------------------------------------------------- regularization


class EarlyStopping(Strict):
    """Stop when the monitored metric has not improved for patience epochs."""

    monitor: str = Field("val_loss", examples=["val_loss", "val_accuracy", "val_rmse"])
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="auto: max for accuracy/f1/r2, min otherwise."
    )
    patience: Int = Field(5, ge=0, le=10_000)
    min_delta: Float = Field(0.0, ge=0.0)
    restore_best: bool = Field(True, description="End with the weights of the best epoch.")


class Mix(Strict):
    """Train on blends of two examples and their labels (mixup: whole inputs; cutmix: a
    patch of one pasted into the other)."""

    alpha: Float = Field(0.2, gt=0.0, le=100.0, description="Beta(alpha, alpha) mixing ratio.")


class Augment(Strict):
    """Image/sequence augmentation (needs data.input_shape or image data)."""

    shift: Int = Field(0, ge=0, le=64, description="Random shift up to this many positions "
                       "per axis (zero-padded crop).")
    flip: bool = Field(False, description="Random flip of the last axis with probability 0.5.")


class Regularization(Strict):
    """Everything that trades training fit for generalization."""

    early_stopping: EarlyStopping | None = None
    l1: Float = Field(0.0, ge=0.0, le=10.0, description="Adds l1 * sum|w| to the loss.")
    l2: Float = Field(0.0, ge=0.0, le=10.0, description="Adds l2 * sum w^2 to the loss.")
    input_noise: Float = Field(0.0, ge=0.0, le=10.0, description="Std of Gaussian input noise.")
    input_mask: Float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of each training row's features set to 0 "
        "(the training mean, after standardization), drawn afresh per step and not rescaled; "
        "with task reconstruction this is masked-feature prediction.")
    weight_noise: Float = Field(
        0.0, ge=0.0, le=1.0, description="Std of Gaussian noise on weights during each step."
    )
    mixup: Mix | None = None
    cutmix: Mix | None = None
    augment: Augment | None = None

    @model_validator(mode="after")
    def _one_mixing(self) -> Regularization:
        if self.mixup is not None and self.cutmix is not None:
            raise ValueError("choose one of mixup and cutmix")
        return self


# ----------------------------------------------------------------------- training


class Sharpness(Strict):
    """Top Hessian eigenvalue (power iteration on Hessian-vector products) and
    epsilon-sharpness (Keskar et al., 2017: the largest relative loss increase in the box
    |delta_i| <= epsilon (|w_i| + 1), by projected gradient ascent)."""

    epsilon: Float = Field(1e-3, gt=0.0, le=1.0)
    power_iterations: Int = Field(20, ge=1, le=200)
    ascent_steps: Int = Field(10, ge=1, le=200)
    max_rows: Int = Field(2048, ge=1, le=100_000, description="Training rows used.")


class Until(Strict):
    """Train until a target fit: stop at the first epoch whose mean training loss falls to
    train_loss, or whose training accuracy reaches train_accuracy (one of the two);
    training.epochs is then the budget. Comparing minima (sharpness, generalization) means
    something only between runs that fit the training data equally well."""

    train_loss: Float | None = Field(None, gt=0.0, le=1e6, examples=[0.05])
    train_accuracy: Float | None = Field(None, gt=0.0, le=1.0, examples=[0.99])

    @model_validator(mode="after")
    def _one_target(self) -> Until:
        if (self.train_loss is None) == (self.train_accuracy is None):
            raise ValueError("give one of train_loss and train_accuracy")
        return self


# Checkpoints cost a SQL write of weights + optimizer state; metric rows land every epoch.
DEFAULT_CHECKPOINT_SECONDS = 30.0


class Training(Strict):
    """How long, in what batches, with which seed and on which device."""

    epochs: Int = Field(30, ge=1, description="Passes over the training rows.")
    batch_size: Annotated[Int, Field(ge=1)] | Literal["full"] = Field(
        64,
        description='1: stochastic GD, k: mini-batch GD, "full": batch GD (every row, '
        "one step per epoch).",
        examples=[64, 1, "full"],
    )
    seed: Int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast forward.")
    grad_clip_norm: Float | None = Field(None, gt=0.0, description="Clip the global grad norm.")
    checkpoint_every: Int | None = Field(
        None, ge=1, description="Epochs between checkpoints. Set alone, it replaces the "
        "time rule (checkpoint_every_seconds); set with it, a checkpoint is written when "
        "either is due.")
    checkpoint_every_seconds: Float | None = Field(
        None, ge=0.0, description="Seconds of training between checkpoints (0: every epoch), "
        f"judged at epoch ends; {DEFAULT_CHECKPOINT_SECONDS:g} when neither this nor "
        "checkpoint_every is set. The last epoch, an early stop and a stop request "
        "(preemption, timeout) always write one, and each checkpoint carries the best "
        "epoch's weights.")

    @property
    def checkpoint_seconds(self) -> float | None:
        """The time rule in force: None when only ``checkpoint_every`` was asked for."""
        if self.checkpoint_every_seconds is None and self.checkpoint_every is None:
            return DEFAULT_CHECKPOINT_SECONDS
        return self.checkpoint_every_seconds
    record_predictions: bool = Field(
        False, description="Put the final model's predictions on the development and test "
        "rows in the summary (class probabilities, or values in original units).")
    sharpness: Sharpness | None = Field(
        None, description="Measure the sharpness of the final minimum on the training loss.")
    until: Until | None = Field(
        None, description="Stop once a target training fit is reached (epochs is the budget).")
    record_grad_norms: bool = Field(
        False, description="Put each layer's gradient norm (before clipping), averaged over "
        "the first epoch's steps, in the summary (grad_norms): where a deep network's "
        "gradient vanishes. The depth experiment sets it for its children.")


def _job_examples(schema: dict[str, Any]) -> None:
    _examples_from_defaults(schema)
    schema["examples"] = [{
        "name": "digits-mlp-adam",
        "data": {"source": {"builtin": "digits"}},
        "model": {"kind": "mlp", "hidden": [256, 256], "dropout": 0.1},
        "loss": {"kind": "cross_entropy", "label_smoothing": 0.05},
        "optimizer": {"kind": "adam", "lr": 0.001},
        "training": {"epochs": 30, "batch_size": 64},
    }]


class JobSpec(Strict):
    """A training job: data, model, loss, optimization algorithm."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _job_examples(schema),
    )

    name: str = Field("job", min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$",
                      examples=["digits-mlp-adam"])
    task: JobTask = Field(
        "supervised", description="supervised: learn the data's target (classification or "
        "regression, as the data says); reconstruction: a self-supervised pretext task that "
        "needs no labels: the model outputs its own standardized input features (loss mse; an "
        "autoencoder, denoising with regularization.input_noise, masked-feature prediction "
        "with regularization.input_mask), on an uploaded dataset without a target or on the "
        "features of a labelled one (split as a supervised job would split it). Its weights "
        "start a supervised job through model.init_from with head: reinit.")
    data: Data = Field(default_factory=Data)
    model: Model = Field(default_factory=MLP)
    loss: Loss = Field(default_factory=CrossEntropy)
    optimizer: Optimizer = Field(default_factory=Adam)
    schedule: Schedule = Field(default_factory=Constant)
    regularization: Regularization = Field(default_factory=Regularization)
    training: Training = Field(default_factory=Training)
    metadata: RunMetadata = Field(
        default_factory=RunMetadata,
        description="Tags, a note and keep: about the run, not part of its spec (stored "
                    "apart, edited with PATCH, not compared).")
