"""Few labels (``data.labels``): the training rows whose labels a job may use.

A stratified subset of the training split chosen by a seed, so a semi-supervised
comparison (pretrained on every training row without labels, then fine-tuned on these,
against the same model trained on these alone) sees exactly the same labelled rows.
"""

from __future__ import annotations

import numpy as np

from app import spec as s
from app.training.shapes import labelled_rows


def within_class_rank(classes: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same class."""
    by_class = np.argsort(classes, kind="stable")
    ordered = classes[by_class]
    first = np.searchsorted(ordered, ordered, side="left")
    rank = np.empty(len(classes), dtype=np.int64)
    rank[by_class] = np.arange(len(classes)) - first
    return rank


def labelled_subset(train: np.ndarray, y: np.ndarray, labels: s.Labels,
                    classification: bool, n_classes: int) -> np.ndarray:
    """Sorted row indices: ``shapes.labelled_rows`` of ``train``, drawn by ``labels.seed``.

    Classification keeps the class proportions: rows are taken in the order of their rank
    within their class over the class's size (ties in the seeded shuffle's order), so the
    first rows taken are one of every class present, then each class in proportion."""
    n = labelled_rows(labels, len(train), n_classes if classification else 0)
    shuffled = np.random.default_rng(labels.seed).permutation(train)
    if not classification:
        return np.sort(shuffled[:n])
    classes = y[shuffled].astype(np.int64)
    share = within_class_rank(classes) / np.bincount(classes)[classes]
    order = np.lexsort((np.arange(len(shuffled)), share))
    return np.sort(shuffled[order[:n]])
