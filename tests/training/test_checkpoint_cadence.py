"""Which epoch ends write a checkpoint: the time rule (checkpoint_every_seconds), the epoch
rule (checkpoint_every), always the last epoch and any stop; and the best weights travel in
every checkpoint, so a best epoch needs no checkpoint of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from app.training.blobs import carried_best_epoch
from app.training.checkpoint import Cadence, TrainState
from app.training.sink import EpochReport, MemorySink
from tests.training.helpers import (
    MOONS,
    assert_same_weights,
    make_spec,
    metrics_without_timing,
    trainer,
    weights,
)

EPOCHS = 8


def written(sink: MemorySink) -> list[int]:
    return [r.epoch for r in sink.reports if r.checkpoint is not None]


@dataclass
class FakeClock:
    """Seconds that pass only when the sink says an epoch took them."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class TickingSink(MemorySink):
    clock: FakeClock | None = None
    seconds_per_epoch: float = 0.0

    def epoch_end(self, report: EpochReport) -> None:
        super().epoch_end(report)
        assert self.clock is not None
        self.clock.now += self.seconds_per_epoch


def run_with_clock(training: dict[str, Any], seconds_per_epoch: float) -> MemorySink:
    """A run whose epochs each take ``seconds_per_epoch`` on the cadence's clock."""
    clock = FakeClock()
    sink = TickingSink(clock=clock, seconds_per_epoch=seconds_per_epoch)
    spec = make_spec(MOONS, training={"epochs": EPOCHS, **training})
    t = trainer(spec, sink)
    t.cadence = Cadence(spec.training.checkpoint_every, spec.training.checkpoint_seconds, clock)
    assert t.run().status == "completed"
    return sink


def test_the_time_rule_writes_when_the_seconds_have_passed_and_at_the_end() -> None:
    sink = run_with_clock({"checkpoint_every_seconds": 10.0}, seconds_per_epoch=4.0)
    # judged at epoch ends 0, 4, 8, 12 (due: written, count restarts), 16, 20, 24 (due), 28
    assert written(sink) == [4, 7, 8]
    assert len(sink.reports) == 8  # metric rows every epoch all the same


def test_the_default_is_thirty_seconds() -> None:
    # judged at epoch ends 0, 10, 20, 30 (due), 40, 50, 60 (due), 70
    assert written(run_with_clock({}, seconds_per_epoch=10.0)) == [4, 7, 8]


def test_seconds_zero_writes_every_epoch() -> None:
    assert written(run_with_clock({"checkpoint_every_seconds": 0}, 0.0)) == list(range(1, 9))


def test_epochs_alone_replace_the_time_rule() -> None:
    # a 1000 s epoch would make the default time rule due at every epoch end
    assert written(run_with_clock({"checkpoint_every": 3}, 1000.0)) == [3, 6, 8]


def test_epochs_and_seconds_together_write_when_either_is_due() -> None:
    sink = run_with_clock({"checkpoint_every": 3, "checkpoint_every_seconds": 10.0}, 4.0)
    assert written(sink) == [3, 6, 8]  # the epochs rule restarts the time count too (8 s)
    sink = run_with_clock({"checkpoint_every": 5, "checkpoint_every_seconds": 10.0}, 4.0)
    assert written(sink) == [4, 5, 8]  # at 12 s, then the 5th epoch


def test_a_long_interval_writes_only_the_last_epoch_on_the_real_clock() -> None:
    sink = MemorySink()
    assert trainer(make_spec(MOONS, training={"epochs": EPOCHS, "checkpoint_every_seconds": 1e9}),
                   sink).run().status == "completed"
    assert written(sink) == [8]


def test_early_stopping_and_a_stop_request_write_a_checkpoint() -> None:
    spec = make_spec(MOONS, training={"epochs": 40, "checkpoint_every_seconds": 1e9},
                     regularization={"early_stopping": {"patience": 1, "min_delta": 0.05}})
    sink = MemorySink()
    summary = trainer(spec, sink).run().summary
    assert summary is not None and summary.early_stopped
    assert summary.stopped_epoch is not None and summary.stopped_epoch < 40
    assert written(sink) == [summary.stopped_epoch]
    stopped = trainer(spec, MemorySink(stop_after=10)).run()
    assert stopped.status == "stopped" and stopped.checkpoint is not None


def test_which_epochs_are_written_changes_nothing_in_training() -> None:
    """The cadence only reads the clock: packing a checkpoint draws no random numbers."""
    spec_every = make_spec(MOONS, training={"epochs": EPOCHS, "checkpoint_every_seconds": 0},
                           model={"dropout": 0.3})
    spec_none = make_spec(MOONS, training={"epochs": EPOCHS, "checkpoint_every_seconds": 1e9},
                          model={"dropout": 0.3})
    a, b = MemorySink(), MemorySink()
    ta = trainer(spec_every, a)  # (a Trainer seeds torch's global RNG: one at a time)
    summary_a = ta.run().summary
    tb = trainer(spec_none, b)
    assert summary_a == tb.run().summary
    assert metrics_without_timing(a.reports) == metrics_without_timing(b.reports)
    assert_same_weights(weights(ta.model), weights(tb.model))
    assert len(written(a)) == 8 and len(written(b)) == 1


@pytest.mark.parametrize("early_stopping", [None, {"patience": 100, "restore_best": False}])
def test_the_last_checkpoint_carries_the_best_epochs_weights(
        early_stopping: dict[str, Any] | None) -> None:
    """Without restore_best too: the best weights are kept for the `best` download only,
    and the run still ends with its last epoch's weights."""
    over: dict[str, Any] = {"model": {"dropout": 0.3}, "optimizer": {"lr": 0.05}}
    if early_stopping is not None:
        over["regularization"] = {"early_stopping": early_stopping}
    every, once = MemorySink(), MemorySink()
    t_every = trainer(make_spec(MOONS, training={"epochs": 12, "checkpoint_every_seconds": 0},
                                **over), every)
    summary = t_every.run().summary
    t_once = trainer(make_spec(MOONS, training={"epochs": 12, "checkpoint_every_seconds": 1e9},
                               **over), once)
    t_once.run()
    assert summary is not None and summary.best_epoch is not None
    best = summary.best_epoch
    assert best < 12, "the scenario needs a best epoch that is not the last"
    assert written(once) == [12]
    last = once.latest_checkpoint
    assert last is not None and carried_best_epoch(last) == best
    at_best = every.reports[best - 1].checkpoint
    assert at_best is not None
    carried = TrainState.from_blob(last).best_weights
    assert carried is not None
    assert_same_weights(carried, TrainState.from_blob(at_best).model)
    assert not summary.restored_best_weights
    assert_same_weights(weights(t_once.model), TrainState.from_blob(last).model)
