"""training.record_grad_norms: each layer's gradient norm over the first epoch, checked
against torch's own backward, taken before clipping, and the same after any resume."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from app.training.grad_norms import layer_of
from app.training.results import GradNorms
from app.training.sink import MemorySink
from tests.training.helpers import make_spec, prepared, trainer

DEEP: dict[str, Any] = {
    "data": {"source": {"synthetic": "moons", "n_samples": 200, "noise": 0.25}},
    "model": {"kind": "mlp", "hidden": [16, 16, 16], "norm": "layer"},
    "optimizer": {"kind": "adam", "lr": 0.01},
    "training": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu",
                 "record_grad_norms": True, "checkpoint_every_seconds": 0},
}


def recorded(**over: Any) -> GradNorms:
    outcome = trainer(make_spec(DEEP, **over)).run()
    assert outcome.summary is not None and outcome.summary.grad_norms is not None
    return outcome.summary.grad_norms


def test_off_unless_asked() -> None:
    outcome = trainer(make_spec(DEEP, training={"record_grad_norms": False})).run()
    assert outcome.summary is not None and outcome.summary.grad_norms is None
    assert "grad_norms" not in outcome.summary.to_json()


def test_one_full_batch_step_equals_torchs_backward_per_layer() -> None:
    spec = make_spec(DEEP, training={"batch_size": "full", "epochs": 1})
    norms = recorded(training={"batch_size": "full", "epochs": 1})
    reference = trainer(spec)  # the same seed builds the same initial weights
    data = prepared(spec)
    reference.loss_fn(reference.model(data.x_train), data.y_train).backward()
    squares: dict[str, float] = {}
    for name, p in reference.model.named_parameters():
        assert p.grad is not None
        squares[layer_of(name)] = squares.get(layer_of(name), 0.0) + float(p.grad.norm() ** 2)
    assert norms.steps == 1
    assert [n.name for n in norms.layers] == list(squares) == [
        "blocks.0.linear", "blocks.0.norm", "blocks.1.linear", "blocks.1.norm",
        "blocks.2.linear", "blocks.2.norm", "head"]
    for layer in norms.layers:
        assert layer.norm == pytest.approx(math.sqrt(squares[layer.name]), rel=1e-5)


def test_recorded_before_clipping() -> None:
    one_step = {"batch_size": "full", "epochs": 1}
    clipped = recorded(training={**one_step, "grad_clip_norm": 1e-6})
    assert clipped == recorded(training=one_step)
    assert all(layer.norm > 1e-3 for layer in clipped.layers)


def test_averaged_over_the_first_epoch_only() -> None:
    three = recorded()
    assert three.steps == 5  # 160 training rows in batches of 32
    assert three == recorded(training={"epochs": 1})


@pytest.mark.parametrize("stop_after", [2, 5 + 3], ids=["inside-epoch-1", "in-epoch-2"])
def test_a_resumed_run_reports_the_same_norms(stop_after: int) -> None:
    spec = make_spec(DEEP)
    unbroken = recorded()
    first = trainer(spec, MemorySink(stop_after=stop_after)).run()
    assert first.status == "stopped" and first.checkpoint is not None
    resumed = trainer(spec).run(first.checkpoint)
    assert resumed.summary is not None and resumed.summary.grad_norms == unbroken
    torch.testing.assert_close(torch.tensor([n.norm for n in unbroken.layers]),
                               torch.tensor([n.norm for n in resumed.summary.grad_norms.layers]),
                               rtol=0, atol=0)


SEQUENCES = {"source": {"synthetic": "motif_order", "n_samples": 120, "n_features": 2,
                        "length": 8}}


@pytest.mark.parametrize(("data", "model", "precision"), [
    ({"source": {"builtin": "digits"}, "input_shape": [1, 8, 8]},
     {"kind": "cnn", "channels": [4], "residual": True}, "fp32"),
    (SEQUENCES, {"kind": "rnn", "cell": "lstm", "hidden": 8}, "fp32"),
    (SEQUENCES, {"kind": "transformer", "d_model": 8, "heads": 2, "ff": 8}, "fp32"),
    ({"source": {"synthetic": "moons", "n_samples": 200}}, {"kind": "mlp", "hidden": [8]},
     "bf16"),
], ids=["cnn", "rnn", "transformer", "bf16"])
def test_every_model_kind_reports_every_layer_that_owns_parameters(
        data: dict[str, Any], model: dict[str, Any], precision: str) -> None:
    spec = make_spec(DEEP, data=data, model=model, training={"epochs": 1,
                                                            "precision": precision})
    t = trainer(spec)
    outcome = t.run()
    assert outcome.summary is not None and outcome.summary.grad_norms is not None
    layers = outcome.summary.grad_norms.layers
    owners = list(dict.fromkeys(layer_of(n) for n, _ in t.model.named_parameters()))
    assert [layer.name for layer in layers] == owners
    assert all(math.isfinite(layer.norm) and layer.norm >= 0 for layer in layers)
    assert layers[-1].norm > 0
