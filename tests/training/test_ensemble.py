"""The combining rules an experiment's model is served with, and the aggregator reports with:
ties, the recorded precision, the weights."""

from __future__ import annotations

import numpy as np

from app.training.experiments.aggregate import samme_predict, score
from app.training.experiments.ensemble import (
    as_recorded,
    gradient_sum,
    labels,
    samme_scores,
    samme_shares,
    soft_vote,
)


def test_a_soft_vote_tie_goes_to_the_lowest_class_as_the_aggregator_scores_it() -> None:
    members = [np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.2, 0.8]])]
    assert labels(soft_vote(members)).tolist() == [0, 1]
    assert score(soft_vote(members), np.array([0, 1]), "classification") == {"accuracy": 1.0}


def test_members_enter_at_the_recorded_precision_so_a_rounded_tie_stays_a_tie() -> None:
    """Unrounded, class 1 wins by 4e-8; the children's summaries hold 6 decimals, where the
    two are equal and the aggregator's argmax picks class 0. The served ensemble agrees."""
    raw = np.array([[0.49999998, 0.50000002]], dtype=np.float32)
    assert labels(soft_vote([raw, raw])).tolist() == [1]
    recorded = as_recorded(raw)
    assert recorded.dtype == np.float64 and recorded.tolist() == [[0.5, 0.5]]
    assert labels(soft_vote([recorded, recorded])).tolist() == [0]


def test_float32_probabilities_round_as_the_report_rounds_them() -> None:
    """The report rounds float32 softmax outputs in float32, then JSON holds that float32."""
    p = np.array([[0.1234565, 0.8765435]], dtype=np.float32)
    expected = np.round(p, 6).tolist()  # what report.predictions stores
    assert as_recorded(p).tolist() == expected


def test_samme_weighs_each_rounds_labels_by_its_alpha() -> None:
    votes = [(1.0, np.array([0, 1])), (2.5, np.array([2, 1])), (1.0, np.array([0, 0]))]
    assert labels(samme_scores(votes, 3)).tolist() == [2, 1] == samme_predict(votes, 3).tolist()
    shares = samme_shares(votes, 3)
    assert np.allclose(shares.sum(axis=1), 1) and np.allclose(shares[0], [2 / 4.5, 0, 2.5 / 4.5])
    tie = [(1.0, np.array([1])), (1.0, np.array([0]))]
    assert labels(samme_scores(tie, 2)).tolist() == [0]


def test_gradient_boosting_sums_rounds_times_their_rates_in_order() -> None:
    rounds = [(1.0, np.array([1.0, 2.0])), (0.5, np.array([0.4, -0.2])),
              (0.5, np.array([0.2, 0.1]))]
    assert gradient_sum(rounds).tolist() == [1.0 + 0.5 * 0.4 + 0.5 * 0.2,
                                             2.0 + 0.5 * -0.2 + 0.5 * 0.1]
