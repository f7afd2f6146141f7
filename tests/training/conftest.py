"""Pure-core tests run torch on one thread.

The suite's models are tiny; with several intra-op threads on a small, shared
machine, OpenMP's spin-waiting makes the same test vary from 0.4 s to 20 s.
One thread keeps every test's runtime predictable (results are still compared
within one process, so nothing depends on the thread count).
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global RNG state (no order-dependent flakiness)."""
    torch.manual_seed(0)
