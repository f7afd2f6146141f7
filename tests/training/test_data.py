"""Data: splits, train-only standardization, and test rows that never steer training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from app.training.data import DataError, load_arrays, prepare, split_indices
from app.training.sink import MemorySink
from tests.training.helpers import (
    CPU,
    assert_same_weights,
    make_spec,
    metrics_without_timing,
    trainer,
    weights,
)


def test_feature_statistics_come_from_training_rows_only() -> None:
    spec = make_spec(data={"source": {"builtin": "wine"}, "split": {"val": 0.2, "test": 0.3}})
    arrays = load_arrays(spec.data.source)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    data = prepare(spec.data, arrays, CPU)
    x = arrays.x.astype(np.float64)
    np.testing.assert_allclose(data.features.mean, x[idx.train].mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.features.std, x[idx.train].std(0), rtol=1e-4)
    # ... and not from all rows (the two differ on this split, so the check can fail)
    assert (np.abs(data.features.mean - x.mean(0)) / x.std(0)).max() > 0.02
    # the training features are standardized; validation and test rows use train statistics
    xt = data.x_train.double()
    torch.testing.assert_close(xt.mean(0), torch.zeros(13, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(xt.std(0, unbiased=False), torch.ones(13, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    expected_test = (x[idx.test] - x[idx.train].mean(0)) / x[idx.train].std(0)
    np.testing.assert_allclose(data.x_test.numpy(), expected_test, rtol=1e-4, atol=1e-4)
    assert data.x_test.double().mean(0).abs().max() > 1e-3


def test_regression_targets_standardized_with_training_statistics() -> None:
    spec = make_spec(data={"source": {"builtin": "diabetes"}}, loss={"kind": "mse"})
    arrays = load_arrays(spec.data.source)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    data = prepare(spec.data, arrays, CPU)
    y = arrays.y.astype(np.float64)
    np.testing.assert_allclose(data.target.mean, [y[idx.train].mean()], rtol=1e-5)
    np.testing.assert_allclose(data.target.std, [y[idx.train].std()], rtol=1e-5)
    np.testing.assert_allclose(data.y_test.numpy(),
                               (y[idx.test] - y[idx.train].mean()) / y[idx.train].std(),
                               rtol=1e-4, atol=1e-5)
    raw = make_spec(data={"source": {"builtin": "diabetes"}, "standardize_target": False},
                    loss={"kind": "mse"})
    raw_data = prepare(raw.data, arrays, CPU)
    np.testing.assert_array_equal(raw_data.y_test.numpy(), arrays.y[idx.test])


def test_without_standardize_features_are_untouched() -> None:
    spec = make_spec(data={"source": {"builtin": "iris"}, "standardize": False})
    arrays = load_arrays(spec.data.source)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    data = prepare(spec.data, arrays, CPU)
    np.testing.assert_array_equal(data.x_train.numpy(), arrays.x[idx.train])


@pytest.mark.parametrize("val", [0.0, 0.2])
def test_splits_are_disjoint_and_cover_every_row(val: float) -> None:
    spec = make_spec(data={"source": {"builtin": "digits"}, "split": {"val": val, "test": 0.3}})
    arrays = load_arrays(spec.data.source)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    parts = [set(idx.train.tolist()), set(idx.val.tolist()), set(idx.test.tolist())]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert np.array_equal(np.sort(np.concatenate([idx.train, idx.val, idx.test])),
                          np.arange(len(arrays.y)))
    assert (len(idx.val) > 0) == (val > 0)


def test_stratified_split_keeps_class_proportions() -> None:
    spec = make_spec(data={"source": {"builtin": "digits"}, "split": {"val": 0.2, "test": 0.3}})
    arrays = load_arrays(spec.data.source)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    overall = np.bincount(arrays.y, minlength=10) / len(arrays.y)
    for part in (idx.train, idx.val, idx.test):
        counts = np.bincount(arrays.y[part], minlength=10)
        # each class within one row of its exact share (a random split misses by ~7 rows)
        assert np.abs(counts - overall * len(part)).max() <= 1.0 + 1e-9, counts


def test_split_is_a_function_of_its_seed() -> None:
    arrays = load_arrays(make_spec().data.source)
    a = split_indices(arrays.y, make_spec(data={"split": {"seed": 3}}).data.split, arrays.info)
    b = split_indices(arrays.y, make_spec(data={"split": {"seed": 3}}).data.split, arrays.info)
    c = split_indices(arrays.y, make_spec(data={"split": {"seed": 4}}).data.split, arrays.info)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.test, c.test)


def test_test_rows_never_influence_training_or_selection() -> None:
    """Scramble every test row (values and labels): training must not notice at all."""
    spec = make_spec(
        data={"source": {"synthetic": "moons", "n_samples": 240, "noise": 0.3},
              "split": {"val": 0.2, "test": 0.25, "stratify": False}},
        model={"hidden": [32, 32]},
        optimizer={"kind": "adam", "lr": 0.05},
        regularization={"early_stopping": {"patience": 2}},
        training={"epochs": 40})
    arrays = load_arrays(spec.data.source)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    rng = np.random.default_rng(0)
    x2, y2 = arrays.x.copy(), arrays.y.copy()
    x2[idx.test] = rng.normal(50.0, 30.0, x2[idx.test].shape).astype(np.float32)
    y2[idx.test] = 1 - y2[idx.test]
    scrambled = dataclasses.replace(arrays, x=x2, y=y2)
    idx2 = split_indices(scrambled.y, spec.data.split, scrambled.info)
    assert np.array_equal(idx.test, idx2.test)  # the split itself is fixed

    runs = []
    for arr in (arrays, scrambled):
        sink = MemorySink()
        t = trainer(spec, sink, prepare(spec.data, arr, CPU))
        outcome = t.run()
        runs.append((outcome.summary, metrics_without_timing(sink.reports), weights(t.model)))
    (s1, m1, w1), (s2, m2, w2) = runs
    assert s1.early_stopped, "the check needs early stopping to have selected an epoch"
    assert (s1.best_epoch, s1.stopped_epoch) == (s2.best_epoch, s2.stopped_epoch)
    assert m1 == m2
    assert_same_weights(w1, w2)
    assert s1.val == s2.val and s1.train == s2.train
    assert s1.test["accuracy"] != s2.test["accuracy"]  # the scrambling was real


@pytest.mark.parametrize(("builtin", "shape"), [("digits", [1, 7, 7]), ("digits", [2, 30]),
                                                ("iris", [3, 2])])
def test_input_shape_must_hold_every_feature(builtin: str, shape: list[int]) -> None:
    spec = make_spec(data={"source": {"builtin": builtin}, "input_shape": shape})
    with pytest.raises(DataError, match=r"input_shape .* holds \d+ values but each row has"):
        prepare(spec.data, load_arrays(spec.data.source), CPU)


def test_input_shape_that_fits_is_used() -> None:
    spec = make_spec(data={"source": {"builtin": "digits"}, "input_shape": [4, 16]})
    assert prepare(spec.data, load_arrays(spec.data.source), CPU).input_shape == (4, 16)
    own = make_spec(data={"source": {"builtin": "digits"}})
    assert prepare(own.data, load_arrays(own.data.source), CPU).input_shape == (1, 8, 8)
