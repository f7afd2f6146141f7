"""Synthetic sequence data: the order of two motifs (``spec.MotifOrderSource``).

A pure function of the source's parameters and seed, like every generator.
"""

from __future__ import annotations

import numpy as np

from app import spec as s

MOTIF_SCALE = 2.0  # each motif's norm, against background noise of std ``noise`` per value


def motif_order(src: s.MotifOrderSource) -> tuple[np.ndarray, np.ndarray]:
    """Rows of shape (n, C * L), feature-major; y = 1 when motif A precedes motif B."""
    rng = np.random.default_rng(src.seed)
    n, c, length = src.n_samples, src.n_features, src.length
    motifs = rng.normal(size=(2, c))
    motifs *= MOTIF_SCALE / np.linalg.norm(motifs, axis=1, keepdims=True)
    x = rng.normal(0.0, src.noise, size=(n, c, length))
    first = rng.integers(0, length, n)
    second = (first + rng.integers(1, length, n)) % length  # another step, uniformly
    rows = np.arange(n)
    x[rows, :, first] += motifs[0]
    x[rows, :, second] += motifs[1]
    return x.reshape(n, c * length), (first < second).astype(np.int64)
