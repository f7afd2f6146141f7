"""ONNX export: the graph computes what the torch model computes, from raw rows, for every model
kind the spec allows and every task, and reproduces the run's reported test metrics."""

from __future__ import annotations

import math
from typing import Any, get_args

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app import spec as s
from app.training import export as ex
from app.training.data import load_arrays, prepare
from app.training.loop import Trainer
from app.training.manifest import LABEL, PROBABILITIES, TOLERANCE, VALUE
from app.training.results import Summary
from app.training.sink import MemorySink
from tests.training.helpers import CPU, make_spec


def model_kinds() -> list[type[s.Strict]]:
    """Every member of the spec's model union: a kind added later is tested here too."""
    return [get_args(member)[0] for member in get_args(get_args(s.Model)[0])]


TASKS: dict[str, dict[str, Any]] = {
    # [2, 8]: 2 channels of length 8 for a cnn, 8 steps of 2 features for a sequence model
    "multiclass": {"data": {"source": {"synthetic": "make_classification", "n_samples": 240,
                                       "n_features": 16, "n_informative": 4, "n_classes": 3,
                                       "seed": 2},
                            "input_shape": [2, 8]},
                   "loss": {"kind": "cross_entropy"}},
    "binary": {"data": {"source": {"synthetic": "make_classification", "n_samples": 240,
                                   "n_features": 16, "seed": 3},
                        "input_shape": [2, 8]},
               "loss": {"kind": "bce"}},
    "regression": {"data": {"source": {"synthetic": "make_regression", "n_samples": 240,
                                       "n_features": 16, "noise": 5.0, "seed": 4},
                            "input_shape": [2, 8]},
                   "loss": {"kind": "mse"}},
}
TRAINING = {"training": {"epochs": 2, "batch_size": 64, "seed": 0, "device": "cpu"},
            "optimizer": {"kind": "adam", "lr": 0.01},
            "regularization": {"early_stopping": {"patience": 5, "restore_best": True}}}

VARIANTS: list[dict[str, Any]] = [
    *({"kind": "mlp", "hidden": [16, 16], "norm": norm, "activation": act, "residual": True,
       "groups": 4, "dropout": 0.1}
      for norm, act in [("none", "relu"), ("batch", "gelu"), ("layer", "tanh"),
                        ("group", "elu"), ("instance", "silu")]),
    {"kind": "mlp", "hidden": [], "activation": "identity"},
    *({"kind": "cnn", "channels": [8, 8], "norm": norm, "residual": True, "groups": 4,
       "pool": pool, "kernel_size": 3, "activation": "leaky_relu"}
      for norm, pool in [("batch", "max"), ("group", "avg"), ("instance", "none"),
                         ("layer", "max"), ("none", "avg")]),
]


def trained(spec: s.JobSpec) -> tuple[ex.Bundle, Summary, np.ndarray, np.ndarray, Any]:
    arrays = load_arrays(spec.data.source)
    data = prepare(spec.data, arrays, CPU)
    sink = MemorySink()
    outcome = Trainer(spec, data, sink, CPU).run()
    assert outcome.summary is not None and sink.latest_checkpoint is not None
    weights, epoch = ex.final_weights(sink.latest_checkpoint, outcome.summary.restored_best_weights)
    names = ex.source_names(spec.data.source, arrays.info)  # type: ignore[arg-type]
    facts = ex.JobFacts("job_test", spec, names, epoch, outcome.summary.test)
    rows = ex.held_out_rows(spec.data, arrays)
    bundle = ex.export(facts, data, weights, rows)
    y = arrays.y[ex.split_indices(arrays.y, spec.data.split, arrays.info).test]
    return bundle, outcome.summary, rows, y, ex.servable(spec, data, weights)


def check_reproduces(bundle: ex.Bundle, summary: Summary, rows: np.ndarray,
                     y: np.ndarray) -> None:
    session = ort.InferenceSession(bundle.onnx, providers=["CPUExecutionProvider"])
    out = dict(zip(bundle.manifest.outputs, session.run(None, {"rows": rows}), strict=True))
    if bundle.manifest.task == "classification":
        assert np.allclose(out[PROBABILITIES].sum(axis=1), 1.0, atol=1e-5)
        accuracy = float(np.mean(out[LABEL] == y))
        assert abs(accuracy - summary.test["accuracy"]) <= 1e-6
    else:
        rmse = math.sqrt(float(np.mean((out[VALUE].astype(np.float64) - y) ** 2)))
        assert rmse == pytest.approx(summary.test["rmse"], rel=1e-5)


def random_rows_agree(bundle: ex.Bundle, module: ex.Servable, rows: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    spread = rows.std(axis=0) + 1e-3
    noise = rng.normal(rows.mean(axis=0), 3 * spread, size=(50, rows.shape[1]))
    assert ex.max_difference(bundle.onnx, module, noise.astype(np.float32)) <= TOLERANCE


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("kind", model_kinds(), ids=lambda c: c.model_fields["kind"].default)
def test_every_model_kind_exports_for_every_task(kind: type[s.Strict], task: str) -> None:
    model = {"kind": kind.model_fields["kind"].default}
    spec = make_spec({**TASKS[task], **TRAINING, "model": model})
    bundle, summary, rows, y, module = trained(spec)
    assert bundle.manifest.check.max_abs_difference <= TOLERANCE
    check_reproduces(bundle, summary, rows, y)
    random_rows_agree(bundle, module, rows)


@pytest.mark.parametrize("model", VARIANTS, ids=lambda m: f"{m['kind']}-{m.get('norm')}")
def test_norms_activations_and_residual_blocks_export(model: dict[str, Any]) -> None:
    images = {"data": {"source": {"builtin": "digits"}}}  # viewed as 1x8x8: a 2-D cnn
    spec = make_spec({**(images if model["kind"] == "cnn" else TASKS["binary"]), **TRAINING,
                      "model": model})
    bundle, summary, rows, y, module = trained(spec)
    check_reproduces(bundle, summary, rows, y)
    random_rows_agree(bundle, module, rows)


def test_a_one_dimensional_cnn_views_flat_rows_by_input_shape() -> None:
    spec = make_spec({**TASKS["regression"], **TRAINING,
                      "model": {"kind": "cnn", "channels": [4], "residual": True}})
    bundle, summary, rows, y, _ = trained(spec)
    assert bundle.manifest.input_shape == [2, 8] and bundle.manifest.input_width == 16
    assert bundle.manifest.standardization.target is not None
    check_reproduces(bundle, summary, rows, y)


def test_the_manifest_names_features_classes_and_files() -> None:
    spec = make_spec({"data": {"source": {"builtin": "iris"}}, **TRAINING,
                      "model": {"kind": "mlp", "hidden": [8]}})
    bundle, *_ = trained(spec)
    card = bundle.manifest
    assert card.classes == ["setosa", "versicolor", "virginica"]
    assert card.feature_names[0] == "sepal length (cm)" and len(card.feature_names) == 4
    assert card.files["model.onnx"] == ex.sha256(bundle.onnx)
    assert card.files["model.safetensors"] == ex.sha256(bundle.weights)
    assert card.versions["onnxruntime"] == ort.__version__
    assert len(card.standardization.features.mean) == 4


def test_a_graph_that_differs_from_torch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is real: a graph exported from other weights fails loudly."""
    spec = make_spec({**TASKS["binary"], **TRAINING, "model": {"kind": "mlp", "hidden": [8]}})
    real = ex.to_onnx

    def perturbed(module: ex.Servable, width: int) -> tuple[bytes, ex.Exporter]:
        with torch.no_grad():
            next(module.net.parameters()).add_(0.5)
        graph = real(module, width)
        with torch.no_grad():
            next(module.net.parameters()).sub_(0.5)
        return graph

    monkeypatch.setattr(ex, "to_onnx", perturbed)
    with pytest.raises(ex.ExportMismatch, match="differs from the torch model"):
        trained(spec)


def test_the_dynamo_exporter_is_the_fallback_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    def untraceable(*_: Any) -> bytes:
        raise RuntimeError("the tracer cannot follow this module")

    monkeypatch.setattr(ex, "_torchscript", untraceable)
    spec = make_spec({**TASKS["multiclass"], **TRAINING,
                      "model": {"kind": "cnn", "channels": [4], "residual": True}})
    bundle, summary, rows, y, _ = trained(spec)
    assert bundle.manifest.check.exporter == "dynamo"
    check_reproduces(bundle, summary, rows, y)
