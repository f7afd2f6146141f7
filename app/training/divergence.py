"""Divergence without NaN: a training loss far above what a constant prediction achieves.

A step size far too large need not overflow: Adam bounds each step, so its loss can sit at
1e8 with chance accuracy and never become NaN. The reference is the job's own loss of a
trivial predictor on the training targets. It is a pure function of the data, so a resumed
run recomputes it rather than storing it. A network that merely fails to learn stays near
that reference; only an exploding one is many times above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app import spec as s
from app.training.losses import LossFn
from app.training.shapes import LossSpec

# How many times the trivial predictor's loss an epoch's mean training loss may reach.
# Mixup, cutmix, label smoothing and weight noise raise the training loss by a small
# factor at most; a step size that explodes the loss does so by orders of magnitude.
EXPLOSION_FACTOR = 100.0


@dataclass(frozen=True)
class Trivial:
    """The loss of always predicting the same thing, and what that thing is."""

    loss: float
    predictor: str


def trivial_loss(loss: LossSpec, y_train: torch.Tensor, n_classes: int,
                 loss_fn: LossFn) -> Trivial:
    """The reference an exploding loss is measured against, under the job's own loss."""
    if isinstance(loss, s.MSE | s.MAE | s.Huber):
        return _regression(isinstance(loss, s.MSE), y_train, loss_fn)
    counts = torch.bincount(y_train, minlength=n_classes).double()
    # Laplace: a class absent from the training rows still gets a finite loss
    prior = (counts + 1) / (counts.sum() + n_classes)
    if isinstance(loss, s.BCE):
        fitted = torch.log(prior[1] / prior[0]).reshape(1, 1)
        name = "the base rate"
    else:
        fitted = prior.log().reshape(1, -1)
        name = "the class prior"
    weights = getattr(loss, "class_weights", None)
    candidates = [
        Trivial(_constant_loss(fitted, counts, weights, loss_fn), name),
        # the uninformed output: an imbalanced prior's loss is small, but a fresh network
        # starts near this one, so the threshold never sits below a network's first steps
        Trivial(_constant_loss(torch.zeros_like(fitted), counts, weights, loss_fn),
                "uniform probabilities"),
    ]
    return max(candidates, key=lambda t: t.loss)


def _regression(mean: bool, y: torch.Tensor, loss_fn: LossFn) -> Trivial:
    """The net fits standardized targets: the mean (MSE) or the median (MAE, Huber), per
    column for reconstruction's (rows, features) targets."""
    center = y.mean(dim=0) if mean else y.median(dim=0).values
    out = center.expand(y.shape)
    return Trivial(float(loss_fn(out, y)), "the mean" if mean else "the median")


def _constant_loss(out: torch.Tensor, counts: torch.Tensor, weights: list[float] | None,
                   loss_fn: LossFn) -> float:
    """The loss of one constant output over rows with these class counts.

    With a constant output each row's loss depends only on its class, so the loss is
    evaluated once per class and averaged the way the loss averages its rows (a class
    weighted mean for class_weights), without a (rows x classes) tensor."""
    device = out.device
    per_class = torch.stack([
        loss_fn(out.float(), torch.tensor([c], device=device)) for c in range(counts.numel())
    ]).double()
    w = counts * (torch.tensor(weights, dtype=torch.float64, device=device)
                  if weights is not None else 1.0)
    return float((w * per_class).sum() / w.sum())


def explosion(mean_loss: float, trivial: Trivial) -> str | None:
    """How the epoch's loss compares with the reference, when it exploded; else None."""
    # constant regression targets leave no scale to compare with (NaN is still caught)
    if trivial.loss <= 0 or mean_loss <= EXPLOSION_FACTOR * trivial.loss:
        return None
    return (f"is more than {EXPLOSION_FACTOR:g}x the loss of always predicting "
            f"{trivial.predictor} ({trivial.loss:.3g})")
