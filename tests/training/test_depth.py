"""The depth experiment: the shipped example shows ResNet's lesson when its children really
train, and the aggregation reports errors, gradient norms and degradation per variant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from app import experiment_spec as e
from app.plots.experiments import EXPERIMENT_PLOTS
from app.statuses import JobStatus
from app.training.experiments.aggregate import advance, depth
from app.training.experiments.plan import Child, child_count, first_stage
from app.training.experiments.roles import DepthRole
from app.training.runner import run_spec
from app.training.sink import MemorySink
from tests.training.helpers import summary_of

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "experiments" / "depth-spirals.json"
EXPERIMENT: TypeAdapter[Any] = TypeAdapter(e.Experiment)


def no_targets(_: Any) -> Any:
    raise AssertionError("the depth experiment scores its children's own summaries")


def run_in_process(raw: dict[str, Any]) -> dict[str, Any]:
    """Plan, train every child here on the CPU, aggregate: the worker's path without it."""
    exp = EXPERIMENT.validate_python(raw)
    children = []
    for plan in first_stage(exp):
        outcome = run_spec(plan.spec, MemorySink())
        assert outcome.summary is not None
        children.append(Child(plan.role, plan.spec.model_dump(mode="json"),
                              JobStatus.SUCCEEDED, outcome.summary, job_id=plan.spec.name))
    result = advance(exp, children, no_targets).result
    assert result is not None
    return result


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    raw = json.loads(EXAMPLE.read_text())
    raw["base"]["training"]["device"] = "cpu"
    return run_in_process(raw)


def by_depth(result: dict[str, Any], variant: str) -> dict[int, dict[str, Any]]:
    return {p["depth"]: p for p in result[variant]}


def test_the_plain_network_fits_worse_past_some_depth_the_residual_one_does_not(
        example: dict[str, Any]) -> None:
    plain, residual = by_depth(example, "plain"), by_depth(example, "residual")
    assert list(plain) == list(residual) == [2, 8, 24]
    # deeper helps up to a point, then the plain network's own training error rises to
    # chance (two balanced classes): degradation, not overfitting
    assert plain[8]["train_error"] <= plain[2]["train_error"]
    assert plain[24]["train_error"] > plain[8]["train_error"] + 0.3
    assert plain[24]["test_error"] > residual[24]["test_error"] + 0.3
    # the same depth with identity skips keeps improving or holds
    assert residual[24]["train_error"] <= residual[2]["train_error"]
    assert residual[24]["train_error"] < 0.05
    assert example["degradation"]["plain"]["degrades"] is True
    assert example["degradation"]["plain"]["best_depth"] < 24
    assert example["degradation"]["residual"]["degrades"] is False


def test_the_first_epochs_gradient_vanishes_in_the_plain_network_only(
        example: dict[str, Any]) -> None:
    plain = by_depth(example, "plain")[24]["grad_norms"]
    residual = by_depth(example, "residual")[24]["grad_norms"]
    names = [layer["name"] for layer in plain["layers"]]
    assert names == [f"blocks.{i}.linear" for i in range(24)] + ["head"]
    assert plain["layers"][0]["norm"] < 1e-4 < 0.01 < plain["layers"][-1]["norm"]
    assert residual["layers"][0]["norm"] > 0.1


def point(depth_: int, residual: bool, train_acc: float,
          status: JobStatus = JobStatus.SUCCEEDED) -> Child:
    summary = summary_of(train={"loss": 1.0, "accuracy": train_acc},
                         test={"loss": 1.0, "accuracy": train_acc - 0.1})
    return Child(DepthRole(depth=depth_, residual=residual), {}, status,
                 summary if status == JobStatus.SUCCEEDED else None,
                 error=None if status == JobStatus.SUCCEEDED else "boom",
                 job_id=f"d{depth_}{residual}")


def test_degradation_is_the_deepest_error_above_the_best_and_failures_are_named() -> None:
    result = depth([point(8, False, 0.9), point(2, False, 0.95), point(2, True, 0.9),
                    point(8, True, 0.92), point(16, True, 0.0, JobStatus.FAILED)])
    assert result["error"] == "1 - accuracy"
    assert [p["depth"] for p in result["plain"]] == [2, 8]
    assert result["plain"][1]["train_error"] == pytest.approx(0.1)
    assert result["plain"][1]["test_error"] == pytest.approx(0.2)
    assert result["plain"][0]["grad_norms"] is None  # the summaries here recorded none
    plain, residual = result["degradation"]["plain"], result["degradation"]["residual"]
    assert (plain["best_depth"], plain["deepest"], plain["degrades"]) == (2, 8, True)
    assert plain["rise"] == pytest.approx(0.05)
    assert (residual["best_depth"], residual["degrades"]) == (8, False)
    assert [f["role"] for f in result["failures"]] == [{"depth": 16, "residual": True}]


@pytest.mark.parametrize(("task", "metrics", "error"), [
    ("regression", {"loss": 0.1, "rmse": 0.4}, "rmse"),
    ("reconstruction", {"loss": 0.4, "mse": 0.4}, "loss"),
])
def test_error_without_classes_is_the_rmse_else_the_loss(task: str, metrics: dict[str, float],
                                                         error: str) -> None:
    child = Child(DepthRole(depth=2, residual=False), {}, JobStatus.SUCCEEDED,
                  summary_of(task=task, train=metrics, test=metrics))
    result = depth([child])
    assert result["error"] == error and result["plain"][0]["test_error"] == 0.4
    assert result["residual"] == [] and result["degradation"]["residual"] is None


def test_no_child_succeeded_is_a_result_the_plots_still_read() -> None:
    result = depth([point(2, False, 0.0, JobStatus.FAILED)])
    assert result["error"] is None and result["plain"] == result["residual"] == []
    for plot in EXPERIMENT_PLOTS["depth"].values():
        assert plot.draw(plot.result.model_validate(result), "svg").startswith(b"<?xml")


def test_each_depth_plans_a_plain_and_a_residual_child_recording_grad_norms() -> None:
    exp = EXPERIMENT.validate_python(json.loads(EXAMPLE.read_text()))
    plans = first_stage(exp)
    assert child_count(exp) == len(plans) == 6
    assert [(p.role.to_json(), p.spec.model.hidden, p.spec.model.residual)  # type: ignore[union-attr]
            for p in plans[:2]] == [({"depth": 2, "residual": False}, [32, 32], False),
                                    ({"depth": 2, "residual": True}, [32, 32], True)]
    assert all(p.spec.training.record_grad_norms for p in plans)


@pytest.mark.parametrize(("change", "message"), [
    ({"base": {"model": {"kind": "cnn"}}}, "base.model.kind"),
    ({"depths": [4, 4]}, "repeats a depth"),
    ({"depths": [4]}, "at least 2"),
    ({"depths": [0, 4]}, "greater than or equal to 1"),
])
def test_a_design_that_cannot_run_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EXPERIMENT.validate_python({"kind": "depth", "depths": [2, 4], **change})
