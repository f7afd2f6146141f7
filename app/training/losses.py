"""Losses: a proxy of what we want, so each one's behaviour is explicit.

Classification always goes through log-softmax (``cross_entropy`` and ``nll``
never exponentiate raw logits, so large logits cannot overflow); ``bce`` uses
the log-sigmoid form for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from app import spec as s
from app.training.errors import DataError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _weights(values: list[float] | None, n_classes: int,
             device: torch.device) -> torch.Tensor | None:
    if values is None:
        return None
    if len(values) != n_classes:
        raise DataError(f"loss.class_weights has {len(values)} entries for {n_classes} classes")
    return torch.tensor(values, dtype=torch.float32, device=device)


def build_loss(spec: s.CrossEntropy | s.NLL | s.BCE | s.MSE | s.MAE | s.Huber,
               n_classes: int, device: torch.device) -> LossFn:
    """A function (model output, target) -> mean loss."""
    match spec:
        case s.CrossEntropy():
            w = _weights(spec.class_weights, n_classes, device)
            smoothing = spec.label_smoothing
            return lambda out, y: F.cross_entropy(out, y, weight=w, label_smoothing=smoothing)
        case s.NLL():
            w = _weights(spec.class_weights, n_classes, device)
            return lambda out, y: F.nll_loss(F.log_softmax(out, dim=1), y, weight=w)
        case s.BCE():
            pos = torch.tensor(spec.pos_weight, device=device)
            return lambda out, y: F.binary_cross_entropy_with_logits(
                out.squeeze(1), y.to(out.dtype), pos_weight=pos)
        # the outputs as the targets are shaped: (rows,) for regression, (rows, features)
        # for reconstruction
        case s.MSE():
            return lambda out, y: F.mse_loss(out.reshape(y.shape), y)
        case s.MAE():
            return lambda out, y: F.l1_loss(out.reshape(y.shape), y)
        case s.Huber():
            delta = spec.delta
            return lambda out, y: F.huber_loss(out.reshape(y.shape), y, delta=delta)
    raise ValueError(f"unknown loss {spec!r}")
