"""Learning tests: real models reach known-good scores on real data (kept small and fast)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from app import spec as s
from app.training.results import Summary
from app.training.runner import run_spec
from app.training.sink import MemorySink
from tests.training.helpers import make_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str) -> s.JobSpec:
    return s.JobSpec.model_validate(json.loads((EXAMPLES / name).read_text()))


def _summary(spec: s.JobSpec) -> Summary:
    outcome = run_spec(spec, MemorySink())
    assert outcome.status == "completed" and outcome.summary is not None
    return outcome.summary


def test_digits_mlp_example() -> None:
    summary = _summary(_example("digits.json"))
    assert summary.test["accuracy"] >= 0.95
    assert summary.macro_f1 >= 0.95


def test_digits_cnn_example() -> None:
    # the example as shipped: a user copying it must not conclude CNNs do worse on images
    spec = _example("digits-cnn.json")
    assert spec.model.kind == "cnn"
    summary = _summary(spec)
    assert summary.test["accuracy"] >= 0.97
    assert summary.macro_f1 is not None and summary.macro_f1 >= 0.97


def test_digits_cnn() -> None:
    spec = make_spec(data={"source": {"builtin": "digits"}}, model={"kind": "cnn"},
                     optimizer={"kind": "adam", "lr": 0.01}, schedule={"kind": "one_cycle"},
                     training={"epochs": 15, "batch_size": 64})
    assert spec.model.channels == [32, 64]  # type: ignore[union-attr]
    assert _summary(spec).test["accuracy"] >= 0.97


def test_moons_mlp() -> None:
    spec = make_spec(data={"source": {"synthetic": "moons", "n_samples": 1000, "noise": 0.2}},
                     model={"hidden": [32, 32]}, optimizer={"kind": "adam", "lr": 0.01},
                     training={"epochs": 20, "batch_size": 32})
    assert _summary(spec).test["accuracy"] >= 0.95


def test_diabetes_mlp_example() -> None:
    summary = _summary(_example("diabetes.json"))
    assert summary.test["r2"] >= 0.4


def _sine(hidden: list[int]) -> s.JobSpec:
    # two periods: the best straight line explains almost nothing (rmse ~0.65 for sin's
    # 0.71 std); on the default [-pi, pi] a line already reaches rmse ~0.45
    return make_spec(data={"source": {"synthetic": "function", "fn": "sin",
                                      "x_min": -2 * math.pi, "x_max": 2 * math.pi}},
                     loss={"kind": "mse"}, model={"hidden": hidden},
                     optimizer={"kind": "adam", "lr": 0.01},
                     training={"epochs": 60, "batch_size": 32})


def test_one_hidden_layer_fits_a_sine_a_line_cannot() -> None:
    assert _summary(_sine([64])).test["rmse"] < 0.15
    assert _summary(_sine([])).test["rmse"] > 0.5
