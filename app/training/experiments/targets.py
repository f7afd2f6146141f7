"""The targets an aggregation scores against, recomputed from the base spec's split."""

from __future__ import annotations

import numpy as np
from sklearn import datasets as skd

from app import spec as s
from app.training.data import FUNCTIONS, ArrayLoader, load_arrays, split_indices
from app.training.experiments.aggregate import Targets


def _truth(source: object, x_test: np.ndarray) -> tuple[np.ndarray | None, float | None]:
    """Noise-free f(x) on the test rows and the noise variance, for generators that know."""
    if isinstance(source, s.FunctionSource):
        return FUNCTIONS[source.fn](x_test[:, 0].astype(np.float64)), source.noise**2
    if isinstance(source, s.MakeRegressionSource):
        _, _, coef = skd.make_regression(
            source.n_samples, n_features=source.n_features,
            n_informative=min(source.n_informative, source.n_features), noise=source.noise,
            random_state=source.seed, coef=True)
        return x_test.astype(np.float64) @ coef, source.noise**2
    return None, None


def load_targets(spec: s.JobSpec, uploaded: ArrayLoader | None = None,
                 task: s.Task | None = None) -> Targets:
    arrays = load_arrays(spec.data.source, uploaded, task)
    idx = split_indices(arrays.y, spec.data.split, arrays.info)
    dev = np.sort(np.concatenate([idx.train, idx.val]))
    truth, noise = _truth(spec.data.source, arrays.x[idx.test])
    return Targets(arrays.info.task, arrays.info.n_classes, arrays.y[dev], arrays.y[idx.test],
                   truth, noise)
