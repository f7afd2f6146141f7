"""Evaluation metrics, computed on the device and brought to the host in one sync."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.training.data import Prepared

EVAL_CHUNK = 8192  # default rows per eval forward pass; the Trainer sizes its own (shapes.py)

Autocast = Callable[[], AbstractContextManager[Any]]  # bf16 autocast, or a null context
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def global_norm(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The 2-norm of all the tensors together (0 for none)."""
    if not tensors:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def predicted_labels(out: torch.Tensor, binary_logit: bool) -> torch.Tensor:
    """The class a model's outputs predict: one logit above 0 (bce), else the argmax."""
    return (out.squeeze(1) > 0).long() if binary_logit else out.argmax(dim=1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, autocast: Autocast,
            chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """Model outputs for every row, in eval mode (dropout off, running BN statistics),
    ``chunk`` rows per forward pass (bounds activation memory)."""
    was_training = model.training
    model.eval()
    try:
        with autocast():
            outs = [model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    finally:
        model.train(was_training)
    return torch.cat(outs).float() if outs else torch.empty(0, 1, device=x.device)


def classification_metrics(out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
                           binary_logit: bool) -> dict[str, torch.Tensor]:
    pred = predicted_labels(out, binary_logit)
    return {"loss": loss, "accuracy": (pred == y).float().mean()}


def regression_metrics(out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
                       data: Prepared) -> dict[str, torch.Tensor]:
    """rmse, mae and r2 in the target's original units."""
    scale = float(data.target.std[0])
    err = (out.squeeze(1) - y) * scale
    y_orig = y * scale
    ss_tot = ((y_orig - y_orig.mean()) ** 2).sum().clamp_min(1e-12)
    return {"loss": loss, "rmse": err.pow(2).mean().sqrt(), "mae": err.abs().mean(),
            "r2": 1 - err.pow(2).sum() / ss_tot}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: Prepared,
             loss_fn: LossFn, autocast: Autocast, binary_logit: bool,
             chunk: int = EVAL_CHUNK) -> dict[str, torch.Tensor]:
    """Loss and the task's metrics as device tensors (the caller syncs once)."""
    out = predict(model, x, autocast, chunk)
    loss = loss_fn(out, y)
    if data.info.task == "classification":
        return classification_metrics(out, y, loss, binary_logit)
    if data.info.task == "reconstruction":
        return {"loss": loss, "mse": (out - y).pow(2).mean()}
    return regression_metrics(out, y, loss, data)


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    flat = y * n_classes + pred
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)


def macro_f1(confusion: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 (classes absent from both truth and prediction skipped)."""
    cm = confusion.double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)
    present = denom > 0
    f1 = 2 * tp[present] / denom[present]
    return float(f1.mean()) if present.any() else 0.0


@dataclass
class Evaluator:
    """One model evaluated on its run's data, ``rows`` rows per forward pass."""

    model: nn.Module
    data: Prepared
    loss_fn: LossFn
    autocast: Autocast
    binary_logit: bool
    rows: int

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        return predict(self.model, x, self.autocast, self.rows)

    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return evaluate(self.model, x, y, self.data, self.loss_fn, self.autocast,
                        self.binary_logit, self.rows)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        return predicted_labels(self.outputs(x), self.binary_logit)
