"""What a spec implies before any data is loaded: task, sizes, parameter count.

Pure Python (no torch): the API uses it to refuse bad specs with 422 before a
job is queued. ``tests/training/test_shapes.py`` checks every number here
against the real datasets and the real ``torch`` modules, so they cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app import spec as s


@dataclass(frozen=True)
class DataInfo:
    """The shape of a data source, known without loading it."""

    task: s.Task
    n_rows: int
    n_features: int
    n_classes: int  # 0 for regression
    input_shape: tuple[int, ...] | None = None  # natural view of a row (digits: 1x8x8)


BUILTIN_INFO: dict[str, DataInfo] = {
    "digits": DataInfo("classification", 1797, 64, 10, (1, 8, 8)),
    "iris": DataInfo("classification", 150, 4, 3),
    "wine": DataInfo("classification", 178, 13, 3),
    "breast_cancer": DataInfo("classification", 569, 30, 2),
    "diabetes": DataInfo("regression", 442, 10, 0),
}


def synthetic_info(src: s.GeneratorBase) -> DataInfo:
    """Task and sizes of a generator's output."""
    n = src.n_samples
    match src:
        case s.MoonsSource() | s.CirclesSource():
            return DataInfo("classification", n, 2, 2)
        case s.BlobsSource():
            return DataInfo("classification", n, src.n_features, src.centers)
        case s.SpiralsSource():
            return DataInfo("classification", n, 2, src.n_classes)
        case s.MakeClassificationSource():
            return DataInfo("classification", n, src.n_features, src.n_classes)
        case s.MakeRegressionSource():
            return DataInfo("regression", n, src.n_features, 0)
        case s.FunctionSource():
            return DataInfo("regression", n, 1, 0)
    raise ValueError(f"unknown generator {src!r}")


LossSpec = s.CrossEntropy | s.NLL | s.BCE | s.MSE | s.MAE | s.Huber


def output_dim(info: DataInfo, loss: LossSpec) -> int:
    """Width of the model's last layer: one logit per class, or one output."""
    if info.task == "classification" and loss.kind != "bce":
        return info.n_classes
    return 1


def effective_input_shape(data: s.Data, info: DataInfo) -> tuple[int, ...]:
    """The shape each row is viewed as: the spec's input_shape, the data's own, or flat."""
    if data.input_shape is not None:
        return tuple(data.input_shape)
    if info.input_shape is not None:
        return info.input_shape
    return (info.n_features,)


def _norm_params(norm: s.Norm, width: int, *, conv: bool) -> int:
    if norm == "none" or (norm == "instance" and not conv):
        return 0  # an MLP's instance norm is affine-free (see spec.MLP.norm)
    return 2 * width


def mlp_parameters(model: s.MLP, n_in: int, n_out: int) -> int:
    total, width_in = 0, n_in
    for width in model.hidden:
        total += width_in * width + width + _norm_params(model.norm, width, conv=False)
        width_in = width
    return total + width_in * n_out + n_out


def cnn_parameters(model: s.CNN, shape: tuple[int, ...], n_out: int) -> int:
    dims = len(shape) - 1
    k = model.kernel_size**dims
    bias = 1 if model.norm == "none" else 0
    total, c_in = 0, shape[0]
    for c in model.channels:
        total += c_in * c * k + bias * c + _norm_params(model.norm, c, conv=True)
        if model.residual:
            per_block = 2 * (c * c * k + bias * c + _norm_params(model.norm, c, conv=True))
            total += model.blocks_per_stage * per_block
        c_in = c
    return total + c_in * n_out + n_out


def parameter_count(spec: s.JobSpec, info: DataInfo) -> int:
    n_out = output_dim(info, spec.loss)
    if isinstance(spec.model, s.MLP):
        return mlp_parameters(spec.model, info.n_features, n_out)
    return cnn_parameters(spec.model, effective_input_shape(spec.data, info), n_out)


def layer_count(spec: s.JobSpec) -> int:
    if isinstance(spec.model, s.MLP):
        return len(spec.model.hidden) + 1
    blocks = spec.model.blocks_per_stage * 2 if spec.model.residual else 0
    return len(spec.model.channels) * (1 + blocks) + 1


def max_width(spec: s.JobSpec) -> int:
    widths = spec.model.hidden if isinstance(spec.model, s.MLP) else spec.model.channels
    return max(widths, default=0)


def train_rows(info: DataInfo, split: s.Split) -> int:
    """Rows in the training split (same rounding as the splitter)."""
    n_test = math.ceil(info.n_rows * split.test)
    rest = info.n_rows - n_test
    n_val = math.ceil(rest * split.val / (1 - split.test)) if split.val > 0 else 0
    return rest - n_val
