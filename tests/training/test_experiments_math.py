"""The maths behind experiments, checked against hand computations and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from app import experiment_spec as e
from app import spec as s
from app.statuses import JobStatus
from app.training.data import load_arrays, split_indices
from app.training.experiments.aggregate import (
    leaderboard,
    samme_predict,
    samme_update,
    squared_decomposition,
    trial_scores,
    zero_one_decomposition,
)
from app.training.experiments.plan import Child, grid, sweep_trials
from app.training.experiments.roles import TrialRole
from app.training.resample import resample
from app.training.runner import run_spec
from app.training.sharpness import epsilon_sharpness, top_hessian_eigenvalue
from app.training.sink import MemorySink
from tests.training.helpers import summary_of


def dev_rows(source: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    data = s.Data.model_validate({"source": source})
    arrays = load_arrays(data.source)
    idx = split_indices(arrays.y, data.split, arrays.info)
    return np.sort(np.concatenate([idx.train, idx.val])), arrays.y


def test_folds_are_disjoint_cover_the_dev_rows_and_keep_class_shares() -> None:
    dev, y = dev_rows({"builtin": "digits"})
    k = 5
    vals = [resample(dev, y[dev], s.FoldRows(k=k, index=i, seed=3))[1] for i in range(k)]
    assert sum(len(v) for v in vals) == len(dev)
    assert np.array_equal(np.sort(np.concatenate(vals)), dev)
    overall = np.bincount(y[dev], minlength=10) / len(dev)
    for i, val in enumerate(vals):
        train, _ = resample(dev, y[dev], s.FoldRows(k=k, index=i, seed=3))
        assert not set(train) & set(val)
        share = np.bincount(y[val], minlength=10) / len(val)
        assert np.abs(share - overall).max() < 0.03
    repeat = resample(dev, y[dev], s.FoldRows(k=k, index=0, seed=3, repeat=1))[1]
    assert not np.array_equal(repeat, vals[0]), "a repeat reshuffles the folds"


def test_out_of_bag_rows_are_exactly_those_not_drawn() -> None:
    dev, _y = dev_rows({"synthetic": "moons", "n_samples": 400})
    train, oob = resample(dev, None, s.BootstrapRows(seed=5))
    assert len(train) == len(dev) and len(set(train)) < len(dev)
    assert set(oob) == set(dev) - set(train)


def test_weighted_bootstrap_follows_the_weights() -> None:
    dev = np.arange(100)
    weights = [0.0] * 50 + [1.0] * 50
    train, _ = resample(dev, None, s.BootstrapRows(seed=1, weights=weights))
    assert train.min() >= 50


def test_grid_enumerates_exactly_the_grid() -> None:
    params = {"optimizer.lr": [0.1, 0.01, 0.001], "model.hidden": [[8], [16]],
              "training.batch_size": [32, 64]}
    combos = grid(params)
    assert len(combos) == 12 and len({str(c) for c in combos}) == 12
    assert {c["optimizer.lr"] for c in combos} == {0.1, 0.01, 0.001}
    sweep = e.Sweep(kind="sweep", parameters={"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}},
                    method="random", trials=20, seed=3)
    lrs = [t["optimizer.lr"] for t in sweep_trials(sweep)]
    assert len(lrs) == 20 and all(1e-4 <= v <= 1e-1 for v in lrs)
    assert sweep_trials(sweep) == sweep_trials(sweep), "seeded"


def test_sweep_selects_by_validation_never_by_test() -> None:
    def child(trial: int, val: float, test: float) -> Child:
        return Child(role=TrialRole(trial=trial, params={"optimizer.lr": trial}), spec={},
                     status=JobStatus.SUCCEEDED, summary=summary_of(val={"accuracy": val},
                                                            test={"accuracy": test},
                                                            best_epoch=3, epochs_completed=5))

    kids = [child(0, 0.80, 0.99), child(1, 0.90, 0.70), child(2, 0.85, 0.95)]
    board = leaderboard(trial_scores(kids, "val_accuracy"), "val_accuracy", "auto")
    assert [r["trial"] for r in board] == [1, 2, 0]
    with pytest.raises(ValueError, match="validation metric"):
        e.Objective(metric="test_accuracy")


def test_samme_matches_a_hand_computation() -> None:
    weights = np.full(4, 0.25)
    wrong = np.array([0.0, 1.0, 0.0, 0.0])
    new, alpha, err = samme_update(weights, wrong, n_classes=3)
    assert err == pytest.approx(0.25)
    assert alpha == pytest.approx(math.log(0.75 / 0.25) + math.log(2))
    raw = np.array([0.25, 0.25 * math.exp(alpha), 0.25, 0.25])
    assert np.allclose(new, raw / raw.sum())
    votes = [(1.0, np.array([0, 1])), (2.5, np.array([2, 1])), (1.0, np.array([0, 0]))]
    assert samme_predict(votes, 3).tolist() == [2, 1]


def test_squared_decomposition_adds_up_with_known_noise() -> None:
    rng = np.random.default_rng(0)
    truth = np.sin(np.linspace(-3, 3, 400))
    sigma = 0.3
    y = truth + rng.normal(0, sigma, truth.shape)
    preds = truth + 0.2 + rng.normal(0, 0.1, (50, truth.size))  # bias 0.2, variance 0.01
    terms = squared_decomposition(preds, y, truth, sigma**2)
    assert terms["bias2"] == pytest.approx(0.04, rel=0.1)
    assert terms["variance"] == pytest.approx(0.01, rel=0.1)
    assert terms["sum"] == pytest.approx(terms["expected_loss"], rel=0.05)
    # the residual is exactly the bias-noise cross term of these rows, nothing else
    cross = 2 * np.mean((preds.mean(axis=0) - truth) * (truth - y))
    assert terms["identity_residual"] == pytest.approx(cross, abs=1e-12)
    assert terms["noise_empirical"] == pytest.approx(np.mean((y - truth) ** 2))


def test_squared_decomposition_by_hand() -> None:
    """2 replicates x 2 rows, every term worked out on paper."""
    truth = np.array([0.0, 1.0])
    preds = np.array([[0.0, 2.0], [2.0, 2.0]])  # mean (1, 2); variance (1, 0) -> 0.5
    # noise (-0.5, +0.5) is orthogonal to the bias (1, 1): the cross term is 0
    y = np.array([-0.5, 1.5])
    terms = squared_decomposition(preds, y, truth, 0.09)
    # (h - y)^2: replicate 1 (0.25, 0.25), replicate 2 (6.25, 0.25) -> 7 / 4
    assert terms["expected_loss"] == pytest.approx(1.75)
    assert terms["bias2"] == pytest.approx(1.0)
    assert terms["variance"] == pytest.approx(0.5)
    assert terms["noise"] == pytest.approx(0.09)  # the generator's, reported beside
    assert terms["noise_empirical"] == pytest.approx(0.25)
    assert terms["sum"] == pytest.approx(1.75)
    assert terms["identity_residual"] == pytest.approx(0.0, abs=1e-15)
    # the nominal noise would have missed by 0.25 - 0.09
    assert terms["bias2"] + terms["variance"] + terms["noise"] == pytest.approx(1.59)

    # noise (+0.5, -0.5) now points against the bias (2, 0): cross term 2 * mean(-1, 0) = -1
    y = np.array([0.5, 0.5])
    terms = squared_decomposition(np.array([[1.0, 1.0], [3.0, 1.0]]), y, truth, 0.09)
    assert terms["expected_loss"] == pytest.approx((0.25 + 0.25 + 6.25 + 0.25) / 4)
    assert (terms["bias2"], terms["variance"], terms["noise_empirical"]) == pytest.approx(
        (2.0, 0.5, 0.25))
    assert terms["identity_residual"] == pytest.approx(-1.0)

    # without the truth, bias^2 and noise come together and the identity is exact
    terms = squared_decomposition(preds, np.array([-0.5, 1.5]), None, None)
    assert terms["bias2_plus_noise"] == pytest.approx((1.5**2 + 0.5**2) / 2)
    assert terms["identity_residual"] == pytest.approx(0.0, abs=1e-15)


def test_zero_one_decomposition_of_a_known_case() -> None:
    labels = np.array([[0, 1], [0, 1], [1, 1], [0, 0]])  # 4 replicates, 2 rows
    y = np.array([0, 0])
    terms = zero_one_decomposition(labels, y)
    assert terms["bias"] == pytest.approx(0.5)  # main predictions 0 (right) and 1 (wrong)
    assert terms["variance"] == pytest.approx((0.25 + 0.25) / 2)
    assert terms["expected_loss"] == pytest.approx(4 / 8)


def test_variance_grows_with_model_size_on_a_small_training_set() -> None:
    def variance(hidden: list[int]) -> float:
        preds = []
        for b in range(4):
            spec = s.JobSpec.model_validate({
                "data": {"source": {"synthetic": "function", "n_samples": 60, "noise": 0.3},
                         "rows": {"kind": "bootstrap", "seed": b}},
                "model": {"hidden": hidden, "activation": "tanh"}, "loss": {"kind": "mse"},
                "optimizer": {"kind": "adam", "lr": 0.02},
                "training": {"epochs": 60, "batch_size": 16, "seed": b,
                             "record_predictions": True}})
            summary = run_spec(spec, MemorySink()).summary
            assert summary is not None and summary.predictions is not None
            preds.append(summary.predictions["test"])
        return float(np.mean(np.var(np.asarray(preds), axis=0)))

    assert variance([256, 256]) > 2 * variance([])


def test_power_iteration_matches_the_exact_top_eigenvalue() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(32, 3), torch.randn(32)
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        w1, b1, w2, b2 = (c.view(sh) for c, sh in zip(chunks, shapes, strict=True))
        h = torch.tanh(x @ w1.T + b1)
        return ((h @ w2.T + b2).squeeze(1) - y).pow(2).mean()

    flat = torch.cat([p.detach().flatten() for p in params])
    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(  # type: ignore[no-untyped-call]
        loss_of, flat))
    exact = eigenvalues[eigenvalues.abs().argmax()].item()

    def closure() -> torch.Tensor:
        return (model(x).squeeze(1) - y).pow(2).mean()

    assert top_hessian_eigenvalue(model, closure, iterations=200) == pytest.approx(exact,
                                                                                   rel=1e-3)


def test_epsilon_sharpness_is_nonnegative_and_restores_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(64, 3), torch.randn(64)
    before = [p.detach().clone() for p in model.parameters()]

    def closure() -> torch.Tensor:
        return (model(x).squeeze(1) - y).pow(2).mean()

    small = epsilon_sharpness(model, closure, 1e-4, 5)
    large = epsilon_sharpness(model, closure, 1e-2, 5)
    assert 0 <= small < large
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
