"""Regularization: everything that trades training fit for generalization.

Each helper is a small pure function of tensors and a generator, so a test can
check it against the formula it names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from app import spec as s
from app.training.metric_names import default_monitor, metric_mode


def penalty(params: list[torch.Tensor], l1: float, l2: float) -> torch.Tensor | None:
    """l1 * sum|w| + l2 * sum w^2 over the decayed tensors (None when both are zero)."""
    if l1 == 0 and l2 == 0:
        return None
    total = torch.zeros((), device=params[0].device)
    if l2:
        total = total + l2 * sum(p.pow(2).sum() for p in params)
    if l1:
        total = total + l1 * sum(p.abs().sum() for p in params)
    return total


def add_input_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def mask_features(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Each value kept with probability 1 - fraction, else 0 (the standardized mean)."""
    keep = torch.rand(x.shape, generator=gen, device=x.device) >= fraction
    return x * keep


def mixup(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """x' = lam * x + (1 - lam) * x[perm] (Zhang et al., 2018)."""
    return lam * x + (1 - lam) * x[perm]


def cutmix(x: torch.Tensor, shape: tuple[int, ...], lam: float, perm: torch.Tensor,
           rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """Paste a box from x[perm] covering ~(1 - lam) of every spatial axis product.

    Returns the mixed batch and the exact kept fraction (the ratio for the targets).
    """
    spatial = shape[1:]
    view = x.view(x.shape[0], *shape)
    cut = math.sqrt(1 - lam) if len(spatial) == 2 else 1 - lam
    box = []
    for size in spatial:
        length = round(size * cut)
        centre = int(rng.integers(0, size))
        lo, hi = max(0, centre - length // 2), min(size, centre + length - length // 2)
        box.append(slice(lo, hi))
    mixed = view.clone()
    index = (slice(None), slice(None), *box)
    mixed[index] = view[perm][index]
    area = math.prod(b.stop - b.start for b in box)
    return mixed.view(x.shape), 1 - area / math.prod(spatial)


def shift_and_flip(x: torch.Tensor, shape: tuple[int, ...], aug: s.Augment,
                   gen: torch.Generator) -> torch.Tensor:
    """Random per-sample shifts (zero-padded crops) of up to ``aug.shift`` and flips."""
    n, spatial = x.shape[0], shape[1:]
    view = x.view(n, *shape)
    if aug.shift:
        k = aug.shift
        padded = torch.nn.functional.pad(view, [k, k] * len(spatial))
        ones = [1] * len(spatial)
        index: list[torch.Tensor] = [torch.arange(n, device=x.device).view(n, 1, *ones),
                                     torch.arange(shape[0], device=x.device).view(1, -1, *ones)]
        for axis, size in enumerate(spatial):
            offset = torch.randint(0, 2 * k + 1, (n,), generator=gen, device=x.device)
            pos = offset[:, None] + torch.arange(size, device=x.device)
            dims = [n, 1] + [1] * len(spatial)
            dims[2 + axis] = size
            index.append(pos.view(dims))
        view = padded[tuple(index)]
    if aug.flip:
        flip = torch.rand(n, generator=gen, device=x.device) < 0.5
        view = torch.where(flip.view(n, *[1] * len(shape)), view.flip(-1), view)
    return view.reshape(x.shape)


class WeightNoise:
    """Gradient at noisy weights: add N(0, std^2) before forward, remove it after backward."""

    def __init__(self, params: list[torch.Tensor], std: float, gen: torch.Generator) -> None:
        self.params, self.std, self.gen = params, std, gen
        self.noise: list[torch.Tensor] = []
        self.clean: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self) -> None:
        self.noise = [self.std * torch.randn(p.shape, generator=self.gen, device=p.device)
                      for p in self.params]
        self.clean = [p.clone() for p in self.params]  # (w + n) - n != w in floating point
        torch._foreach_add_(self.params, self.noise)

    @torch.no_grad()
    def remove(self) -> None:
        torch._foreach_copy_(self.params, self.clean)
        self.clean = []


@dataclass
class BestTracker:
    """The best epoch by one metric, improved on by at least ``min_delta``. Always on: the
    summary reports it, checkpoints mark it, and restore_best and early stopping use it."""

    monitor: str
    maximize: bool
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1

    @classmethod
    def for_spec(cls, es: s.EarlyStopping | None, has_val: bool) -> BestTracker:
        if es is None:
            monitor = default_monitor(has_val)
            return cls(monitor, metric_mode(monitor, "auto") == "max")
        return cls(es.monitor, metric_mode(es.monitor, es.mode) == "max", es.min_delta)

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        delta = self.min_delta
        return value > self.best + delta if self.maximize else value < self.best - delta

    def update(self, epoch: int, value: float) -> bool:
        """Record one epoch; True when it is the new best."""
        if not self.improved(value):
            return False
        self.best, self.best_epoch = value, epoch
        return True


@dataclass
class Patience:
    """Early stopping: stop after ``patience`` epochs in a row without a new best."""

    patience: int
    wait: int = 0

    def update(self, improved: bool) -> bool:
        """Record one epoch; True when training should stop."""
        if improved:
            self.wait = 0
            return False
        self.wait += 1
        return self.wait >= self.patience


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BatchRegularizer:
    """What a run does to each training batch: shifts and flips, input noise, mixup or
    cutmix, and the loss against the mixed targets. Draws from the run's generators."""

    spec: s.Regularization
    input_shape: tuple[int, ...]
    values: bool  # targets are values (regression, reconstruction): mixed like the inputs
    loss_fn: LossFn
    gen: torch.Generator
    np_rng: np.random.Generator

    def is_identity(self) -> bool:
        """No transform of the batch and no mixing: ``inputs`` returns it as is and ``loss``
        is the loss function's."""
        reg = self.spec
        return (reg.augment is None and reg.input_noise == 0 and reg.input_mask == 0
                and reg.mixup is None and reg.cutmix is None)

    def inputs(self, xb: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """The transformed batch, with the mixing ratio and partner rows when mixing."""
        reg = self.spec
        if reg.augment is not None:
            xb = shift_and_flip(xb, self.input_shape, reg.augment, self.gen)
        if reg.input_noise > 0:
            xb = add_input_noise(xb, reg.input_noise, self.gen)
        if reg.input_mask > 0:
            xb = mask_features(xb, reg.input_mask, self.gen)
        if (mix := reg.mixup or reg.cutmix) is not None:
            return self.mix(xb, mix.alpha)
        return xb, 1.0, None

    def mix(self, xb: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float, torch.Tensor]:
        lam = float(self.np_rng.beta(alpha, alpha))
        partner = torch.randperm(xb.shape[0], generator=self.gen, device=xb.device)
        if self.spec.mixup is not None:
            return mixup(xb, lam, partner), lam, partner
        mixed, kept = cutmix(xb, self.input_shape, lam, partner, self.np_rng)
        return mixed, kept, partner

    def loss(self, out: torch.Tensor, yb: torch.Tensor, lam: float,
             partner: torch.Tensor | None) -> torch.Tensor:
        if partner is None:
            return self.loss_fn(out, yb)
        if self.values:
            return self.loss_fn(out, lam * yb + (1 - lam) * yb[partner])
        return lam * self.loss_fn(out, yb) + (1 - lam) * self.loss_fn(out, yb[partner])
