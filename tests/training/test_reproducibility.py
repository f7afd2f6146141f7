"""Same spec and seed on CPU: bit-identical metrics and weights; another seed differs."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import sklearn
import torch

from app.training.runner import run_spec
from app.training.sink import MemorySink
from tests.training.helpers import (
    assert_same_weights,
    make_spec,
    metrics_without_timing,
    trainer,
    weights,
)

NOISY: dict[str, Any] = {  # every source of randomness the loop has
    "data": {"source": {"synthetic": "moons", "n_samples": 160, "noise": 0.3}},
    "model": {"hidden": [16, 16], "dropout": 0.2, "norm": "batch"},
    "optimizer": {"kind": "adam", "lr": 0.01},
    "schedule": {"kind": "cosine", "warmup_epochs": 1},
    "regularization": {"mixup": {"alpha": 0.3}, "input_noise": 0.05, "weight_noise": 0.01,
                       "early_stopping": {"patience": 10}},
    "training": {"epochs": 4, "batch_size": 16, "seed": 0, "device": "cpu"},
}


def _run(seed: int) -> tuple[list[Any], dict[str, torch.Tensor], dict[str, Any]]:
    sink = MemorySink()
    t = trainer(make_spec(NOISY, training={"seed": seed}), sink)
    summary = t.run().summary
    return metrics_without_timing(sink.reports), weights(t.model), summary


def test_same_seed_is_bit_identical_and_another_seed_differs() -> None:
    m1, w1, s1 = _run(0)
    m2, w2, s2 = _run(0)
    assert m1 == m2  # exact float equality of every reported metric
    assert_same_weights(w1, w2)
    assert s1 == s2
    m3, w3, _ = _run(1)
    assert m3 != m1
    assert not torch.equal(w1["head.weight"], w3["head.weight"])


def test_runner_reproduces_and_summary_records_seed_versions_device() -> None:
    spec = make_spec(NOISY, training={"seed": 5})
    sinks = [MemorySink(), MemorySink()]
    outcomes = [run_spec(spec, sink) for sink in sinks]
    assert metrics_without_timing(sinks[0].reports) == metrics_without_timing(sinks[1].reports)
    assert outcomes[0].summary == outcomes[1].summary
    summary = outcomes[0].summary
    assert summary.seed == 5
    assert summary.device == "cpu"
    assert summary.versions == {"python": platform.python_version(),
                                   "torch": torch.__version__, "numpy": np.__version__,
                                   "scikit_learn": sklearn.__version__}
    # the final checkpoints agree byte for byte in their tensors
    a, b = (s.latest_checkpoint for s in sinks)
    assert a is not None and b is not None
    from app.training import checkpoint as ckpt

    ta, tb = ckpt.unpack(a)[0], ckpt.unpack(b)[0]
    assert_same_weights(ta, tb)
