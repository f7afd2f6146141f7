"""How sharp is the minimum a run ended in? (Keskar et al., 2017: large batches find
sharper minima.) Both measures use the training loss with the model in eval mode."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

Closure = Callable[[], torch.Tensor]  # the training loss at the model's current weights


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def total(terms: list[torch.Tensor]) -> torch.Tensor:
    """0 + t0 + t1 + ..., in order (what ``sum`` computes, typed as a tensor)."""
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    return out


def hessian_vector_product(closure: Closure, params: list[torch.Tensor],
                           vector: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v by double backward (Pearlmutter's trick), never forming H. Attention runs its
    math kernel here: the fused ones (flash attention, the CPU's too) have no second
    derivative."""
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(closure(), params, create_graph=True)
        dot = total([(g * v).sum() for g, v in zip(grads, vector, strict=True)])
        return list(torch.autograd.grad(dot, params))


def top_hessian_eigenvalue(model: nn.Module, closure: Closure, iterations: int,
                           seed: int = 0) -> float:
    """The largest-magnitude eigenvalue of the loss Hessian by power iteration."""
    params = _params(model)
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, device=p.device) for p in params]
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(total([(x * x).sum() for x in v]))
        v = [x / norm for x in v]
        hv = hessian_vector_product(closure, params, v)
        eigenvalue = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eigenvalue


def epsilon_sharpness(model: nn.Module, closure: Closure, epsilon: float, steps: int) -> float:
    """100 * (max L(w + d) - L(w)) / (1 + L(w)) over the box |d_i| <= eps (|w_i| + 1),
    maximized by projected sign-gradient ascent; the weights are restored afterwards."""
    params = _params(model)
    original = [p.detach().clone() for p in params]
    box = [epsilon * (w.abs() + 1) for w in original]
    with torch.no_grad():
        base = float(closure())
    best = base
    delta = [torch.zeros_like(w) for w in original]
    try:
        for _ in range(steps):
            loss = closure()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for d, g, b, p, w in zip(delta, grads, box, params, original, strict=True):
                    d.add_(0.5 * b * g.sign()).clamp_(min=-b, max=b)
                    p.copy_(w + d)
                best = max(best, float(closure()))
    finally:
        with torch.no_grad():
            for p, w in zip(params, original, strict=True):
                p.copy_(w)
    return 100.0 * (best - base) / (1.0 + base)
