"""The metric names the API accepts as monitors are exactly the ones the loop logs."""

from __future__ import annotations

from typing import Any

import pytest

from app.training.loop import flatten
from app.training.metric_names import EVAL, epoch_metric_names, metric_mode
from app.training.sink import MemorySink
from tests.training.helpers import make_spec, trainer

REGRESSION: dict[str, Any] = {
    "data": {"source": {"synthetic": "make_regression", "n_samples": 120}},
    "loss": {"kind": "mse"}}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("val", [0.2, 0.0])
def test_the_logged_names_are_what_the_loop_emits(task: str, val: float) -> None:
    over = REGRESSION if task == "regression" else {}
    spec = make_spec(**over, training={"epochs": 1})
    spec = make_spec(spec.model_dump(mode="json"), data={"split": {"val": val}})
    sink = MemorySink()
    summary = trainer(spec, sink).run().summary
    assert summary is not None and summary.task == task
    assert set(flatten(sink.reports[0].metrics)) == epoch_metric_names(task, val > 0)
    assert tuple(summary.train) == tuple(summary.test) == EVAL[task]
    assert (summary.val is not None) == (val > 0)


def test_which_way_is_better() -> None:
    assert [metric_mode(m, "auto") for m in ("val_accuracy", "val_r2", "val_loss",
                                              "train_rmse")] == ["max", "max", "min", "min"]
    assert metric_mode("val_loss", "max") == "max"
