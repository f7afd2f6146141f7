"""A diverging run stops with a message that says where and with which lr: a NaN or
infinite loss, or a finite one far above the loss of a constant prediction."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch

from app import spec as s
from app.training import checkpoint as ckpt
from app.training.divergence import EXPLOSION_FACTOR, trivial_loss
from app.training.loop import TrainingDiverged
from app.training.losses import build_loss
from app.training.sink import MemorySink
from tests.training.helpers import CPU, make_spec, trainer

MESSAGE = re.compile(r"diverged: loss became (NaN|infinite) at epoch (\d+) step (\d+) "
                     r"with lr=([0-9.e+-]+); ")


@pytest.mark.parametrize("case", [
    {"data": {"source": {"builtin": "diabetes"}}, "loss": {"kind": "mse"}},
    {"data": {"source": {"builtin": "digits"}}},
], ids=["regression", "classification"])
def test_huge_sgd_step_raises_training_diverged(case: dict[str, Any]) -> None:
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


# ----------------------------------------------------- exploding without NaN

EXPLODED = re.compile(r"diverged: training loss ([0-9.e+-]+) at epoch (\d+) with lr=([0-9.e+-]+) "
                      r"is more than ([0-9.]+)x the loss of always predicting (.+) "
                      r"\(([0-9.e+-]+)\); lower the learning rate")
DIGITS: dict[str, Any] = {"data": {"source": {"builtin": "digits"}},
                          "training": {"epochs": 3, "batch_size": 32}}


def test_adam_at_a_huge_lr_explodes_without_nan_and_fails_diverged() -> None:
    """Adam bounds each step, so lr=1000 never overflows: the loss sits at ~1e8 instead."""
    spec = make_spec(optimizer={"kind": "adam", "lr": 1000.0}, **DIGITS)
    with pytest.raises(TrainingDiverged) as info:
        trainer(spec).run()
    match = EXPLODED.match(str(info.value))
    assert match is not None, str(info.value)
    loss, epoch, lr, factor, reference = (float(match[1]), int(match[2]), float(match[3]),
                                          float(match[4]), float(match[6]))
    assert factor == EXPLOSION_FACTOR and lr == 1000.0 and epoch == 1
    assert math.isfinite(loss) and loss > factor * reference
    # ten nearly balanced classes: no constant beats uniform probabilities, log 10
    assert match[5] == "uniform probabilities" and reference == pytest.approx(math.log(10), 1e-2)


@pytest.mark.parametrize("case", [
    {"data": {"source": {"builtin": "digits"}}, "optimizer": {"kind": "sgd", "lr": 3.0}},
    {"data": {"source": {"builtin": "diabetes"}}, "loss": {"kind": "mse"},
     "optimizer": {"kind": "sgd", "lr": 1000.0}},
    {"data": {"source": {"builtin": "diabetes"}}, "loss": {"kind": "mae"},
     "optimizer": {"kind": "adam", "lr": 1000.0}},
], ids=["sgd-classification", "sgd-regression", "adam-regression"])
def test_a_huge_step_fails_diverged_with_or_without_nan(case: dict[str, Any]) -> None:
    spec = make_spec(training={"epochs": 3, "batch_size": 16}, **case)
    with pytest.raises(TrainingDiverged) as info:
        trainer(spec).run()
    assert MESSAGE.match(str(info.value)) or EXPLODED.match(str(info.value)), str(info.value)


@pytest.mark.parametrize("lr", [1e-6, 1.0])
def test_a_deep_plain_network_that_fails_to_learn_has_not_diverged(lr: float) -> None:
    """Ten sigmoid layers barely move (vanishing gradients): a failure to learn, which the
    curves show, not a divergence."""
    spec = make_spec(model={"kind": "mlp", "hidden": [32] * 10, "activation": "sigmoid"},
                     optimizer={"kind": "sgd", "lr": lr}, **DIGITS)
    sink = MemorySink()
    outcome = trainer(spec, sink).run()
    assert outcome.status == "completed" and outcome.summary is not None
    losses = [r.metrics["train"]["loss"] for r in sink.reports]
    assert all(loss == pytest.approx(math.log(10), rel=0.1) for loss in losses), losses
    assert sink.reports[-1].metrics["train"]["accuracy"] < 0.3  # it did not learn


@pytest.mark.parametrize("loss", [
    {"kind": "cross_entropy", "label_smoothing": 0.2, "class_weights": [1, 5, 0.5]},
    {"kind": "cross_entropy", "class_weights": [0.1, 1, 9]},
    {"kind": "nll", "class_weights": [3, 1, 1]},
    {"kind": "bce", "pos_weight": 4.0},
    {"kind": "mse"}, {"kind": "mae"}, {"kind": "huber", "delta": 0.3},
], ids=lambda loss: str(loss["kind"]))
def test_trivial_loss_is_the_jobs_own_loss_of_a_constant_prediction(
        loss: dict[str, object]) -> None:
    """Per-class evaluation (no rows x classes tensor) equals the loss over every row."""
    gen = torch.Generator().manual_seed(0)
    spec = s.JobSpec.model_validate({"data": {"source": {"builtin": "digits"}}, "loss": loss})
    regression = loss["kind"] in ("mse", "mae", "huber")
    n_classes = 2 if loss["kind"] == "bce" else 3
    shares = torch.tensor([0.7, 0.2, 0.1][:n_classes])
    y = (torch.randn(500, generator=gen) * 2 + 1 if regression
         else torch.multinomial(shares, 500, True, generator=gen))
    loss_fn = build_loss(spec.loss, n_classes, CPU)
    trivial = trivial_loss(spec.loss, y, n_classes, loss_fn)
    if regression:
        center = y.mean() if loss["kind"] == "mse" else y.median()
        outs = [center.expand(500, 1)]
    else:
        counts = torch.bincount(y, minlength=n_classes).double()
        prior = (counts + 1) / (counts.sum() + n_classes)
        fitted = (prior[1] / prior[0]).log().reshape(1, 1) if loss["kind"] == "bce" else prior.log()
        outs = [fitted.float().expand(500, -1), torch.zeros(500, fitted.numel())]
    direct = max(float(loss_fn(out.reshape(500, -1), y)) for out in outs)
    assert trivial.loss == pytest.approx(direct, rel=1e-5)


def test_mixup_and_label_smoothing_at_a_sane_lr_are_not_divergence() -> None:
    """Both raise the training loss above the plain one, far below the factor."""
    spec = make_spec(loss={"kind": "cross_entropy", "label_smoothing": 0.3},
                     regularization={"mixup": {"alpha": 1.0}},
                     optimizer={"kind": "adam", "lr": 0.01}, **DIGITS)
    sink = MemorySink()
    assert trainer(spec, sink).run().status == "completed"
    assert sink.reports[-1].metrics["train"]["loss"] < math.log(10)
