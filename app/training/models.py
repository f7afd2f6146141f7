"""Model builders: an MLP (affine maps + nonlinearities) and a small CNN / ResNet; the
sequence models (RNN, Transformer) live in ``sequence_models.py``.

``shapes.mlp_parameters`` / ``shapes.cnn_parameters`` count the same parameters
without torch; a test keeps them equal.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from app import spec as s
from app.training.errors import DataError
from app.training.sequence_models import SequenceRNN, SequenceTransformer

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def vector_norm(kind: s.Norm, width: int, groups: int) -> nn.Module:
    """A norm for (batch, features) activations."""
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "group":
        return nn.GroupNorm(groups, width)
    if kind == "instance":
        return _VectorInstanceNorm()
    return nn.Identity()


class _VectorInstanceNorm(nn.Module):
    """Per-sample statistics over the feature vector, viewed as a 1-channel signal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.instance_norm(x.unsqueeze(1)).squeeze(1)


class MLPBlock(nn.Module):
    """Linear -> norm -> activation -> dropout, with an optional identity skip."""

    def __init__(self, n_in: int, n_out: int, spec: s.MLP) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = vector_norm(spec.norm, n_out, spec.groups)
        self.act = ACTIVATIONS[spec.activation]()
        self.drop = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.skip = spec.residual and n_in == n_out
        # an Identity module call costs ~5 µs of Python per step (bench/README 1c); the
        # modules stay registered so the state-dict keys never depend on this
        self.normed = not isinstance(self.norm, nn.Identity)
        self.dropped = not isinstance(self.drop, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        if self.normed:
            h = self.norm(h)
        h = self.act(h)
        if self.dropped:
            h = self.drop(h)
        return x + h if self.skip else h


class MLP(nn.Module):
    """Args: spec, n_in features, n_out outputs. Shape: (N, *) -> (N, n_out)."""

    def __init__(self, spec: s.MLP, n_in: int, n_out: int) -> None:
        super().__init__()
        widths = [n_in, *spec.hidden]
        self.blocks = nn.Sequential(*(MLPBlock(a, b, spec) for a, b in itertools.pairwise(widths)))
        self.head = nn.Linear(widths[-1], n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for block in self.blocks:  # not the Sequential's own call: one module call less
            h = block(h)
        return self.head(h)


def conv_norm(kind: s.Norm, channels: int, groups: int, dims: int) -> nn.Module:
    """A norm for (batch, channels, *spatial) activations."""
    if kind == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # statistics over (C, *spatial) of each sample
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        cls = nn.InstanceNorm1d if dims == 1 else nn.InstanceNorm2d
        return cls(channels, affine=True)
    return nn.Identity()


def _conv(c_in: int, c_out: int, spec: s.CNN, dims: int) -> nn.Module:
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(c_in, c_out, spec.kernel_size, padding="same", bias=spec.norm == "none")


class BasicBlock(nn.Module):
    """conv-norm-act-conv-norm plus the identity, then act (He et al., 2016)."""

    def __init__(self, channels: int, spec: s.CNN, dims: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, spec, dims)
        self.norm1 = conv_norm(spec.norm, channels, spec.groups, dims)
        self.conv2 = _conv(channels, channels, spec, dims)
        self.norm2 = conv_norm(spec.norm, channels, spec.groups, dims)
        self.act = ACTIVATIONS[spec.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        return self.act(x + self.norm2(self.conv2(h)))


def _pool(kind: str, dims: int, size: int) -> nn.Module:
    if kind == "none" or size < 2:
        return nn.Identity()
    if kind == "max":
        return nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2)
    return nn.AvgPool1d(2) if dims == 1 else nn.AvgPool2d(2)


def _stage(c_in: int, c_out: int, spec: s.CNN, dims: int, size: int) -> nn.Sequential:
    layers: list[nn.Module] = [
        _conv(c_in, c_out, spec, dims),
        conv_norm(spec.norm, c_out, spec.groups, dims),
        ACTIVATIONS[spec.activation](),
    ]
    if spec.residual:
        layers += [BasicBlock(c_out, spec, dims) for _ in range(spec.blocks_per_stage)]
    layers.append(_pool(spec.pool, dims, size))
    if spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """Args: spec, input_shape (C, L) or (C, H, W), n_out. Shape: (N, prod(shape)) -> (N, n_out)."""

    def __init__(self, spec: s.CNN, input_shape: tuple[int, ...], n_out: int) -> None:
        super().__init__()
        self.input_shape = input_shape
        dims = len(input_shape) - 1
        size, c_in, stages = min(input_shape[1:]), input_shape[0], []
        for c_out in spec.channels:
            stages.append(_stage(c_in, c_out, spec, dims, size))
            size, c_in = (size // 2 if spec.pool != "none" and size >= 2 else size), c_out
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.view(x.shape[0], *self.input_shape))
        return self.head(h.flatten(2).mean(dim=2))  # global average pooling


def initialize(model: nn.Module, scheme: str) -> None:
    """Kaiming (fan-in, for ReLU family) or Xavier on weight matrices; biases to zero."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(spec: s.ModelSpec, input_shape: tuple[int, ...], n_out: int) -> nn.Module:
    """The network a model spec names, for rows viewed as ``input_shape``."""
    model: nn.Module
    if isinstance(spec, s.RNN | s.Transformer):
        if len(input_shape) != 2:
            raise DataError(f"a {spec.kind} model needs data.input_shape [C, L]: "
                            f"{s.SEQUENCE_VIEW}")
        if isinstance(spec, s.RNN):
            return SequenceRNN(spec, input_shape, n_out)
        return SequenceTransformer(spec, input_shape, n_out)
    if isinstance(spec, s.MLP):
        model = MLP(spec, math.prod(input_shape), n_out)
    else:
        if len(input_shape) not in (2, 3):
            raise DataError("a cnn needs data.input_shape [C, L] or [C, H, W]")
        model = CNN(spec, input_shape, n_out)
    initialize(model, spec.init)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
