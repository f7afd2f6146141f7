"""Metrics against scikit-learn, regression metrics in the target's original units."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from app.training.data import load_arrays, prepare, split_indices
from app.training.metrics import confusion_matrix, macro_f1, predict
from tests.training.helpers import CPU, make_spec, trainer


@pytest.mark.parametrize("seed", range(6))
def test_confusion_matrix_and_macro_f1_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes = 6
    y = rng.integers(0, 5, 200)  # class 5 never occurs in the truth ...
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
    if seed % 2:
        pred[pred == 3] = 2  # ... and sometimes a true class is never predicted
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(y), n_classes)
    np.testing.assert_array_equal(cm.numpy(), skm.confusion_matrix(y, pred,
                                                                   labels=range(n_classes)))
    with np.errstate(all="ignore"):
        expected = skm.f1_score(y, pred, average="macro", zero_division=0)
    assert macro_f1(cm) == pytest.approx(expected, rel=1e-12)


def test_regression_metrics_are_in_original_units() -> None:
    spec = make_spec(data={"source": {"builtin": "diabetes"}}, loss={"kind": "mse"},
                     model={"hidden": [16]}, optimizer={"kind": "adam", "lr": 0.01},
                     training={"epochs": 5})
    arrays = load_arrays(spec.data.source)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    data = prepare(spec.data, arrays, CPU)
    assert float(data.target.std[0]) > 10  # standardized targets: units really differ
    t = trainer(spec, data=data)
    summary = t.run().summary
    for split, rows, x in (("test", idx.test, data.x_test), ("val", idx.val, data.x_val),
                           ("train", idx.train, data.x_train)):
        out = predict(t.model, x, contextlib.nullcontext).squeeze(1).double().numpy()
        pred = out * float(data.target.std[0]) + float(data.target.mean[0])
        truth = arrays.y[rows].astype(np.float64)
        got = getattr(summary, split)
        assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(truth, pred)),
                                            rel=1e-4)
        assert got["mae"] == pytest.approx(skm.mean_absolute_error(truth, pred), rel=1e-4)
        assert got["r2"] == pytest.approx(skm.r2_score(truth, pred), rel=1e-4, abs=1e-4)
    assert summary.generalization_gap["rmse"] == pytest.approx(
        summary.train["rmse"] - summary.test["rmse"])


def test_classification_summary_matches_sklearn() -> None:
    spec = make_spec(data={"source": {"builtin": "iris"}, "split": {"test": 0.4}},
                     training={"epochs": 2})
    t = trainer(spec)
    summary = t.run().summary
    pred = predict(t.model, t.data.x_test, contextlib.nullcontext).argmax(1).numpy()
    y = t.data.y_test.numpy()
    assert summary.test["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert summary.confusion_matrix == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    with np.errstate(all="ignore"):
        expected = skm.f1_score(y, pred, average="macro", zero_division=0)
    assert summary.macro_f1 == pytest.approx(expected)


def test_binary_logit_metrics_threshold_at_zero() -> None:
    spec = make_spec(loss={"kind": "bce"}, training={"epochs": 2})
    t = trainer(spec)
    summary = t.run().summary
    out = predict(t.model, t.data.x_test, contextlib.nullcontext).squeeze(1)
    assert out.ndim == 1
    pred = (out > 0).long().numpy()
    y = t.data.y_test.numpy()
    assert summary.test["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert summary.confusion_matrix == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
