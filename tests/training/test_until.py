"""training.until: the run stops at the first epoch that reaches the target fit, and is
otherwise the same run."""

from __future__ import annotations

from typing import Any

import pytest

from app import spec as s
from app.config import Limits
from app.training import shapes
from app.training.sink import MemorySink
from app.validation import SpecRejected, check_spec
from tests.training.helpers import make_spec, metrics_without_timing, trainer

RUN: dict[str, Any] = {"training": {"epochs": 12, "batch_size": 32, "seed": 0,
                                    "device": "cpu"}}


@pytest.mark.parametrize(("metric", "target"), [("loss", 0.4), ("accuracy", 0.85)])
def test_the_run_stops_at_the_first_epoch_that_reaches_the_target(metric: str,
                                                                  target: float) -> None:
    free = MemorySink()
    trainer(make_spec(RUN), free).run()
    series = free.series("train", metric)
    hit = next(i for i, v in enumerate(series) if (v <= target if metric == "loss"
                                                   else v >= target))
    assert 0 < hit < len(series) - 1  # the scenario: reached, well before the budget
    sink = MemorySink()
    outcome = trainer(make_spec(RUN, training={"until": {f"train_{metric}": target}}),
                      sink).run()
    assert outcome.summary is not None
    assert outcome.summary.epochs_completed == hit + 1 and outcome.summary.early_stopped
    assert metrics_without_timing(sink.reports) == metrics_without_timing(
        free.reports)[: hit + 1]


def test_until_takes_one_target_and_accuracy_needs_classification() -> None:
    for both_or_neither in ({"train_loss": 0.1, "train_accuracy": 0.9}, {}):
        with pytest.raises(ValueError, match="one of train_loss and train_accuracy"):
            s.Until.model_validate(both_or_neither)
    spec = make_spec(data={"source": {"synthetic": "function", "n_samples": 100}},
                     loss={"kind": "mse"}, training={"until": {"train_accuracy": 0.9}})
    with pytest.raises(SpecRejected) as refused:
        check_spec(spec, shapes.synthetic_info(spec.data.source),  # type: ignore[arg-type]
                   Limits())
    assert [p.loc for p in refused.value.problems] == [("training", "until", "train_accuracy")]
