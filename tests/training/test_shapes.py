"""shapes.py (torch-free) agrees with the real datasets, splits and torch modules."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn import datasets as skd
from torch import nn

from app import spec as s
from app.training import shapes
from app.training.data import DataError, generate, load_arrays, prepare, split_indices
from app.training.models import build_model
from tests.training.helpers import CPU, make_spec


@pytest.mark.parametrize("name", sorted(shapes.BUILTIN_INFO))
def test_builtin_info_matches_sklearn(name: str) -> None:
    bunch = getattr(skd, f"load_{name}")()
    info = shapes.BUILTIN_INFO[name]
    assert info.n_rows == bunch.data.shape[0]
    assert info.n_features == bunch.data.shape[1]
    if info.task == "classification":
        assert np.issubdtype(bunch.target.dtype, np.integer)
        assert info.n_classes == len(np.unique(bunch.target)) == int(bunch.target.max()) + 1
    else:
        assert info.n_classes == 0
        assert len(np.unique(bunch.target)) > 50  # a continuous target
    if info.input_shape is not None:
        assert math.prod(info.input_shape) == info.n_features
        assert info.input_shape[1:] == bunch.images.shape[1:]


SYNTHETIC: list[dict[str, Any]] = [
    {"synthetic": "moons", "n_samples": 101},
    {"synthetic": "circles", "n_samples": 77, "factor": 0.3},
    {"synthetic": "blobs", "n_samples": 90, "n_features": 5, "centers": 4},
    {"synthetic": "spirals", "n_samples": 99, "n_classes": 3},
    {"synthetic": "spirals", "n_samples": 60, "n_classes": 5, "turns": 2.0},
    {"synthetic": "make_classification", "n_samples": 120, "n_features": 7,
     "n_informative": 3, "n_redundant": 1, "n_classes": 3},
    {"synthetic": "make_regression", "n_samples": 55, "n_features": 6, "n_informative": 9},
    *({"synthetic": "function", "n_samples": 33, "fn": fn}
      for fn in ("sin", "cos", "abs", "square", "step", "sawtooth")),
]


@pytest.mark.parametrize("source", SYNTHETIC, ids=lambda d: d["synthetic"])
def test_synthetic_info_matches_generated_arrays(source: dict[str, Any]) -> None:
    src = s.Data.model_validate({"source": source}).source
    x, y = generate(src)
    info = shapes.synthetic_info(src)
    assert x.ndim == 2 and y.shape == (x.shape[0],)
    assert (info.n_rows, info.n_features) == x.shape
    if info.task == "classification":
        assert np.array_equal(np.unique(y), np.arange(info.n_classes))
    else:
        assert info.n_classes == 0
        assert len(np.unique(y)) > 2 or source.get("fn") == "step"
    # load_arrays reports the same info and dtypes the trainer expects
    arrays = load_arrays(src)
    assert arrays.info == info
    assert arrays.x.dtype == np.float32
    assert arrays.y.dtype == (np.int64 if info.task == "classification" else np.float32)


def _model_for(spec: s.JobSpec, info: shapes.DataInfo) -> nn.Module:
    shape = shapes.effective_input_shape(spec.data, info)
    return build_model(spec.model, shape, shapes.output_dim(info, spec.loss))


def _check_counts(spec: s.JobSpec, info: shapes.DataInfo) -> None:
    model = _model_for(spec, info)
    assert shapes.parameter_count(spec, info) == sum(p.numel() for p in model.parameters())
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    assert shapes.layer_count(spec) == len(layers)
    # the last layer's width is what the loss needs
    model.eval()
    out = model(torch.randn(3, info.n_features))
    expected = info.n_classes if info.task == "classification" and spec.loss.kind != "bce" else 1
    assert out.shape == (3, expected)


MLP_DATA = [  # (builtin, loss)
    ("iris", "cross_entropy"), ("breast_cancer", "bce"), ("diabetes", "mse"), ("digits", "nll"),
]


@pytest.mark.parametrize(("builtin", "loss"), MLP_DATA)
def test_mlp_parameter_count_matches_torch(builtin: str, loss: str) -> None:
    info = shapes.BUILTIN_INFO[builtin]
    for hidden, norm, residual in itertools.product(
            ([], [8], [8, 8], [6, 12, 12]), ("none", "batch", "layer", "group", "instance"),
            (False, True)):
        spec = make_spec(data={"source": {"builtin": builtin}}, loss={"kind": loss},
                         model={"kind": "mlp", "hidden": hidden, "norm": norm,
                                "residual": residual, "groups": 2, "dropout": 0.1})
        _check_counts(spec, info)


CNN_VIEWS = [  # (builtin, input_shape or None for the dataset's own, loss)
    ("digits", None, "cross_entropy"),          # 2-D 1x8x8
    ("digits", [4, 16], "nll"),                 # 1-D, 4 channels
    ("digits", [2, 4, 8], "cross_entropy"),     # 2-D, non-square
    ("breast_cancer", [1, 30], "bce"),          # 1-D, one logit
    ("diabetes", [2, 5], "mse"),                # 1-D regression
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(("builtin", "view", "loss"), CNN_VIEWS)
def test_cnn_parameter_count_matches_torch(builtin: str, view: list[int] | None,
                                           loss: str) -> None:
    info = shapes.BUILTIN_INFO[builtin]
    for norm, residual, kernel, blocks, pool in itertools.product(
            ("none", "batch", "layer", "group", "instance"), (False, True), (1, 2, 3),
            (1, 2), ("max", "avg", "none")):
        if not residual and blocks > 1:
            continue
        spec = make_spec(data={"source": {"builtin": builtin}, "input_shape": view},
                         loss={"kind": loss},
                         model={"kind": "cnn", "channels": [4, 8], "norm": norm, "groups": 2,
                                "residual": residual, "kernel_size": kernel,
                                "blocks_per_stage": blocks, "pool": pool})
        _check_counts(spec, info)


def test_cnn_residual_parameters_are_the_basic_blocks() -> None:
    """The residual extra is exactly 2 convs + 2 norms per block per stage (not a guess)."""
    info = shapes.BUILTIN_INFO["digits"]
    plain = make_spec(data={"source": {"builtin": "digits"}},
                      model={"kind": "cnn", "channels": [4, 8], "norm": "batch"})
    res = make_spec(data={"source": {"builtin": "digits"}},
                    model={"kind": "cnn", "channels": [4, 8], "norm": "batch",
                           "residual": True, "blocks_per_stage": 2})
    extra = shapes.parameter_count(res, info) - shapes.parameter_count(plain, info)
    assert extra == sum(2 * 2 * (c * c * 9 + 2 * c) for c in (4, 8))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(40, 400), val=st.sampled_from([0.0, 0.05, 0.1, 0.15, 0.2, 0.3]),
       test=st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.25, 0.33, 0.5]),
       stratify=st.booleans(), seed=st.integers(0, 5))
def test_train_rows_equals_the_real_split(n: int, val: float, test: float, stratify: bool,
                                          seed: int) -> None:
    assume(val + test <= 0.8)
    spec = make_spec(data={"source": {"synthetic": "blobs", "n_samples": n, "centers": 3},
                           "split": {"val": val, "test": test, "stratify": stratify,
                                     "seed": seed}})
    arrays = load_arrays(spec.data.source)
    try:
        idx = split_indices(arrays.y, spec.data.split, arrays.info)
    except DataError:
        assume(False)
    assert len(idx.train) == shapes.train_rows(arrays.info, spec.data.split)
    assert len(idx.test) == math.ceil(n * test)
    assert len(idx.train) + len(idx.val) + len(idx.test) == n
    if val == 0:
        assert len(idx.val) == 0


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer", "diabetes"])
def test_train_rows_equals_prepared_rows_for_builtins(name: str) -> None:
    spec = make_spec(data={"source": {"builtin": name}, "split": {"val": 0.2, "test": 0.1}})
    data = prepare(spec.data, load_arrays(spec.data.source), CPU)
    info = shapes.BUILTIN_INFO[name]
    assert data.x_train.shape[0] == shapes.train_rows(info, spec.data.split)
    assert data.x_test.shape[0] == math.ceil(info.n_rows * 0.1)


def _leaf_outputs_per_row(model: nn.Module, rows: torch.Tensor) -> list[int]:
    """Elements each leaf module writes per row (modules returning their input excluded)."""
    sizes: list[int] = []

    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if out is not inputs[0]:
            sizes.append(out[0].numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    model.eval()
    with torch.no_grad():
        model(rows)
    for h in handles:
        h.remove()
    return sizes


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(("builtin", "view", "loss"), CNN_VIEWS)
def test_memory_ops_follow_the_real_layer_outputs(builtin: str, view: list[int] | None,
                                                  loss: str) -> None:
    """shapes.model_ops walks the same layers as the torch modules, in order, with the
    same output sizes (dropout aside: in eval mode it returns its input)."""
    info = shapes.BUILTIN_INFO[builtin]
    for kind, norm, residual, pool, kernel in itertools.product(
            ("mlp", "cnn"), ("none", "batch", "group", "instance"), (False, True),
            ("max", "avg", "none"), (2, 3)):
        model = ({"kind": "cnn", "channels": [4, 8], "norm": norm, "groups": 2, "pool": pool,
                  "residual": residual, "kernel_size": kernel, "dropout": 0.1}
                 if kind == "cnn" else {"kind": "mlp", "hidden": [8, 8], "norm": norm,
                                        "groups": 2, "residual": residual})
        spec = make_spec(data={"source": {"builtin": builtin}, "input_shape": view},
                         loss={"kind": loss}, model=model)
        shape = shapes.effective_input_shape(spec.data, info)
        n_out = shapes.output_dim(info, spec.loss)
        real = _leaf_outputs_per_row(_model_for(spec, info), torch.randn(2, info.n_features))
        ops = shapes.model_ops(spec.model, shape, n_out)
        assert [op.writes for op in ops if op.kind == "layer"] == real
        assert ops[-1].writes == n_out
