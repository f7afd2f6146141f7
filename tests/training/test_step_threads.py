"""A small MLP step runs on one CPU thread (two sleeping OpenMP threads cost it twice the
time); larger steps and other model kinds keep the threads the worker gives them; the
count is restored after the run."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.training import runner
from app.training.runner import step_threads
from app.training.sink import MemorySink
from tests.training.helpers import make_spec, trainer


@pytest.mark.parametrize(("over", "threads"), [
    ({}, 1),  # 16 hidden units, batch 32: tiny
    ({"model": {"kind": "mlp", "hidden": [512, 512]},
      "data": {"source": {"synthetic": "make_classification", "n_samples": 2000,
                          "n_features": 100}},
      "training": {"batch_size": 256}}, 4),  # ~300 k parameters x 256 rows
    ({"data": {"source": {"builtin": "digits"}, "input_shape": [1, 8, 8]},
      "model": {"kind": "cnn", "channels": [4]}}, 4),  # convolutions: not judged here
])
def test_the_step_size_picks_the_threads(over: dict[str, Any], threads: int) -> None:
    assert step_threads(trainer(make_spec(**over)), 4) == threads


def test_one_available_thread_stays_one() -> None:
    assert step_threads(trainer(make_spec()), 1) == 1


def test_a_run_uses_the_picked_threads_and_restores_the_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    run = runner.Trainer.run

    def recording(self: runner.Trainer, resume: bytes | None = None) -> Any:
        seen.append(torch.get_num_threads())
        return run(self, resume)

    monkeypatch.setattr(runner.Trainer, "run", recording)
    before = torch.get_num_threads()
    try:
        outcome = runner.run_spec(make_spec(), MemorySink(), cpu_threads=2)
        assert outcome.status == "completed" and seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
