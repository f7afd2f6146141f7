"""Resampling the development rows (train + val): k-fold partitions and bootstraps.

Pure functions of the rows and a seed, so an experiment's aggregation can recompute
exactly which rows each child trained on (e.g. the out-of-bag rows of a bagged model).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from app import spec as s
from app.training.errors import DataError


def fold_members(labels: np.ndarray | None, n: int, rows: s.FoldRows) -> np.ndarray:
    """Positions (into the development rows) of fold ``rows.index``."""
    seed = rows.seed + 1000 * rows.repeat
    if labels is not None and rows.stratify:
        splitter: KFold | StratifiedKFold = StratifiedKFold(rows.k, shuffle=True,
                                                            random_state=seed)
        folds = list(splitter.split(np.zeros(n), labels))
    else:
        folds = list(KFold(rows.k, shuffle=True, random_state=seed).split(np.zeros(n)))
    return np.sort(folds[rows.index][1])


def bootstrap_draws(n: int, rows: s.BootstrapRows) -> np.ndarray:
    """n positions drawn with replacement (weighted if the spec gives weights)."""
    rng = np.random.default_rng(rows.seed)
    p = None
    if rows.weights is not None:
        w = np.asarray(rows.weights, dtype=np.float64)
        p = w / w.sum()
    return rng.choice(n, size=n, replace=True, p=p)


def out_of_bag(n: int, draws: np.ndarray) -> np.ndarray:
    """Positions never drawn."""
    return np.setdiff1d(np.arange(n), draws)


def resample(dev: np.ndarray, labels: np.ndarray | None,
             rows: s.FoldRows | s.BootstrapRows) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows) as row indices, from the sorted development rows."""
    n = len(dev)
    if isinstance(rows, s.FoldRows):
        if rows.k > n:
            raise DataError(f"data.rows.k={rows.k} exceeds the {n} development rows")
        fold = fold_members(labels, n, rows)
        return np.delete(dev, fold), dev[fold]
    if rows.weights is not None and len(rows.weights) != n:
        raise DataError(f"data.rows.weights has {len(rows.weights)} entries for {n} "
                         "development rows")
    draws = bootstrap_draws(n, rows)
    return dev[draws], dev[out_of_bag(n, draws)]
