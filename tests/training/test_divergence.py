"""A diverging run stops with a message that says where and with which lr."""

from __future__ import annotations

import re

import pytest
import torch

from app.training import checkpoint as ckpt
from app.training.loop import TrainingDiverged
from app.training.sink import MemorySink
from tests.training.helpers import make_spec, trainer

MESSAGE = re.compile(r"diverged: loss became (NaN|infinite) at epoch (\d+) step (\d+) "
                     r"with lr=([0-9.e+-]+); ")


@pytest.mark.parametrize("case", [
    {"data": {"source": {"builtin": "diabetes"}}, "loss": {"kind": "mse"}},
    {"data": {"source": {"builtin": "digits"}}},
], ids=["regression", "classification"])
def test_huge_sgd_step_raises_training_diverged(case: dict[str, object]) -> None:
    spec = make_spec(optimizer={"kind": "sgd", "lr": 1000.0},
                     training={"epochs": 3, "batch_size": 16}, **case)
    with pytest.raises(TrainingDiverged) as info:
        trainer(spec).run()
    match = MESSAGE.match(str(info.value))
    assert match is not None, str(info.value)
    epoch, step, lr = int(match[2]), int(match[3]), float(match[4])
    assert epoch == 1 and lr == 1000.0
    # the named step is the first whose loss is not finite: stop right after it and look
    sink = MemorySink(stop_after=step + 1)
    outcome = trainer(spec, sink).run()
    assert outcome.status == "stopped" and outcome.checkpoint is not None
    tensors, state = ckpt.unpack(outcome.checkpoint)
    assert (state["epoch"], state["step"]) == (0, step)
    losses = tensors["epoch.loss"][:step]
    assert torch.isfinite(losses[: step - 1]).all()
    assert not torch.isfinite(losses[step - 1])


def test_divergence_names_the_lr_in_use_at_that_step() -> None:
    """With a per-step schedule (warm-up) the message's lr is the failing step's lr."""
    spec = make_spec(optimizer={"kind": "sgd", "lr": 1e4},
                     schedule={"kind": "constant", "warmup_epochs": 3},
                     training={"epochs": 3, "batch_size": 8})
    t = trainer(spec)
    with pytest.raises(TrainingDiverged) as info:
        t.run()
    match = MESSAGE.match(str(info.value))
    assert match is not None, str(info.value)
    epoch, step, lr = int(match[2]), int(match[3]), float(match[4])
    used = 1e4 * min(1.0, ((epoch - 1) + step / t.steps) / 3)
    assert lr == pytest.approx(used, rel=1e-5)
    assert lr < 1e4
