"""How an experiment's members combine into one model: the rule the aggregator scores the
reported ensemble with, and the rule ``POST /v1/experiments/{id}/predict`` serves. One module,
numpy only (the API imports it and must not load torch), so the two cannot drift.

Members' outputs enter at the precision the experiment recorded them (``RECORDED_DECIMALS``):
the aggregator reads the rounded predictions a child stored, so the served ensemble rounds its
members' outputs the same way, and a tie after rounding goes the way the report's went.
Every argmax takes the lowest class index on a tie, as numpy's does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECORDED_DECIMALS = 6  # app/training/report.py rounds recorded predictions to this

Vote = tuple[float, np.ndarray]  # (learner weight, that member's outputs)


def as_recorded(outputs: np.ndarray) -> np.ndarray:
    """A member's outputs as a child's summary records them: rounded in their own dtype (the
    report rounds float32 probabilities, and float64 values), then as float64 (JSON)."""
    return np.round(np.asarray(outputs), RECORDED_DECIMALS).astype(np.float64)


def soft_vote(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Bagging: the mean of the members' class probabilities, or of their values."""
    return np.asarray(np.mean(np.stack([np.asarray(o) for o in outputs]), axis=0))


def labels(probabilities: np.ndarray) -> np.ndarray:
    """The predicted class per row; a tie goes to the lowest class index."""
    return np.asarray(np.argmax(probabilities, axis=1))


def samme_scores(votes: Sequence[Vote], n_classes: int) -> np.ndarray:
    """SAMME: per row and class, the sum of the weights alpha_t of the rounds whose learner
    predicts that class. ``votes``: (alpha_t, the round's predicted labels)."""
    total = np.zeros((len(votes[0][1]), n_classes))
    for alpha, predicted in votes:
        total[np.arange(len(predicted)), predicted] += alpha
    return total


def samme_shares(votes: Sequence[Vote], n_classes: int) -> np.ndarray:
    """Each class's share of the total learner weight (SAMME's alphas are positive: a round
    no better than chance stops the boosting and never votes); its argmax is SAMME's label."""
    return samme_scores(votes, n_classes) / sum(alpha for alpha, _ in votes)


def gradient_sum(rounds: Sequence[Vote]) -> np.ndarray:
    """Gradient boosting: sum_t rate_t * h_t(x) (round 0 fits the targets at rate 1, each
    later round the residuals at the learning rate), added up in round order."""
    total = np.zeros(len(rounds[0][1]))
    for rate, values in rounds:
        total += rate * np.asarray(values)
    return total
