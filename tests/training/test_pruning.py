"""Early termination of sweep trials: the median stopping rule against hand computations,
and the trainer ending a run the way early stopping does when its sink asks."""

from __future__ import annotations

import pytest

from app import experiment_spec as e
from app.training.checkpoint import TrainState
from app.training.experiments.aggregate import leaderboard, trial_scores
from app.training.experiments.plan import Child
from app.training.experiments.prune import median_stop
from app.training.experiments.roles import TrialRole
from app.training.results import Pruned
from app.training.sink import MemorySink
from tests.training.helpers import make_spec, summary_of, trainer

# Three completed trials' val_loss curves; running means at epoch 2: 1.5, 2.5, 0.75
COMPLETED = [[2.0, 1.0, 0.5], [3.0, 2.0, 1.0], [1.0, 0.5, 0.25]]


def stop(own: list[float], completed: list[list[float]] = COMPLETED, *, maximize: bool = False,
         grace: int = 1, min_completed: int = 1) -> bool:
    return median_stop(own, completed, maximize=maximize, grace_epochs=grace,
                       min_completed=min_completed) is not None


def test_median_rule_compares_the_best_so_far_with_the_median_of_running_means() -> None:
    decision = median_stop([1.8, 1.6], COMPLETED, maximize=False, grace_epochs=1,
                           min_completed=1)
    assert decision is not None
    assert (decision.epoch, decision.best, decision.median, decision.peers) == (2, 1.6, 1.5, 3)
    assert "1.6" in decision.reason("val_loss") and "median 1.5" in decision.reason("val_loss")
    assert not stop([1.8, 1.4])  # its best beats the median
    assert not stop([1.4, 1.8])  # the best so far counts, not the latest value
    assert not stop([1.5, 1.5])  # "strictly worse": a tie goes on


def test_median_rule_for_a_metric_to_maximize() -> None:
    accuracy = [[0.5, 0.7], [0.6, 0.8], [0.7, 0.9]]  # running means at 2: 0.6, 0.7, 0.8
    assert stop([0.5, 0.65], accuracy, maximize=True)
    assert not stop([0.5, 0.71], accuracy, maximize=True)


def test_grace_epochs_and_min_completed_hold_the_rule_back() -> None:
    hopeless = [9.0, 9.0, 9.0]
    assert stop(hopeless[:1])
    assert not stop(hopeless[:2], grace=3)
    assert stop(hopeless, grace=3)
    assert not stop(hopeless, min_completed=4)
    assert not stop(hopeless, [], min_completed=1)


def test_trials_shorter_than_the_epoch_take_no_part() -> None:
    short = [[0.1], [0.1], [5.0, 5.0, 5.0]]  # two early-stopped after one epoch
    assert not stop([1.0, 1.0, 1.0], short)  # only the 5.0 trial reached epoch 3
    assert stop([1.0, 1.0, 1.0], [*short[:2], [0.5, 0.5, 0.5]])
    assert not stop([1.0, 1.0, 1.0], short, min_completed=2)


def test_the_trainer_ends_a_pruned_run_like_early_stopping() -> None:
    spec = make_spec({"data": {"source": {"synthetic": "moons", "n_samples": 200}},
                      "training": {"epochs": 8, "batch_size": 32, "seed": 0}})
    sink = MemorySink(prune_at=3)
    outcome = trainer(spec, sink).run()
    assert outcome.status == "completed" and len(sink.reports) == 3
    summary = outcome.summary
    assert summary.epochs_completed == 3 and summary.stopped_epoch == 3
    assert summary.pruned == Pruned(epoch=3, reason="asked to stop at epoch 3")
    assert summary.early_stopped is False and summary.test
    assert summary.to_json()["pruned"] == {"epoch": 3, "reason": "asked to stop at epoch 3"}
    last = sink.reports[-1].checkpoint
    assert last is not None, "the stopping epoch is checkpointed"
    assert TrainState.from_blob(last).pruned == summary.pruned.model_dump()
    resumed_sink = MemorySink()
    resumed = trainer(spec, resumed_sink).run(resume=last)
    assert resumed_sink.reports == [] and resumed.summary.pruned == summary.pruned


def test_stopped_trials_are_listed_but_never_ranked() -> None:
    def child(trial: int, val: float, pruned: dict[str, object] | None) -> Child:
        return Child(role=TrialRole(trial=trial, params={"optimizer.lr": trial}), spec={},
                     status="succeeded", summary=summary_of(val={"loss": val}, best_epoch=2,
                                                            epochs_completed=2, pruned=pruned))

    rows = trial_scores([child(0, 0.5, None), child(1, 0.1, {"epoch": 2, "reason": "r"}),
                         child(2, 0.4, None)], "val_loss")
    assert [r["trial"] for r in leaderboard(rows, "val_loss", "auto")] == [2, 0]
    assert rows[1]["pruned"] == {"epoch": 2, "reason": "r"}


def test_early_termination_needs_one_curve_per_trial() -> None:
    with pytest.raises(ValueError, match="one validation curve per trial"):
        e.Sweep(kind="sweep", parameters={"optimizer.lr": [0.1, 0.01]},
                objective=e.Objective(cv_folds=3), early_termination=e.MedianStopping())
