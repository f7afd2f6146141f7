"""Per-layer gradient norms over the first epoch (``training.record_grad_norms``).

A layer is a module that owns parameters (``blocks.3.linear``, ``head``); its norm is the
L2 norm of all its parameters' gradients together, taken after backward and before
gradient clipping (the gradient the network produced, not the one the optimizer was
allowed to use). Each step's norms are averaged over the first epoch's steps rather than
taken at the first step alone: one step is one batch at the initial weights, as noisy as
that batch, while the epoch's mean is the gradient the optimizer worked with while
training began, which is where a deep plain network's vanishing gradient shows. The sums
stay on the device (one host read at the epoch's end) and travel in the checkpoint, so a
run resumed inside the first epoch or after it reports the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.training.results import GradNorms, LayerGradNorm


def layer_of(parameter_name: str) -> str:
    """``blocks.3.linear.weight`` -> ``blocks.3.linear``: the module that owns it."""
    return parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


@dataclass
class GradNormRecorder:
    """Sums of each layer's gradient norm over the first epoch's steps, then their means."""

    params: list[nn.Parameter]
    slot: list[int]  # params[i] belongs to layers[slot[i]]
    layers: list[str]  # input to output, in the model's parameter order
    sums: torch.Tensor
    steps: int = 0
    result: GradNorms | None = None  # set when the first epoch ends

    @classmethod
    def for_model(cls, model: nn.Module, device: torch.device) -> GradNormRecorder:
        layers: list[str] = []
        params, slot = [], []
        for name, p in model.named_parameters():
            layer = layer_of(name)
            if layer not in layers:
                layers.append(layer)
            params.append(p)
            slot.append(layers.index(layer))
        return cls(params, slot, layers, torch.zeros(len(layers), device=device))

    def record(self) -> None:
        """Add this step's per-layer norms (call after backward, before clipping)."""
        if self.result is not None:
            return
        present = [(i, p.grad) for i, p in zip(self.slot, self.params, strict=True)
                   if p.grad is not None]  # frozen parameters have none
        if present:
            # one fused kernel for every tensor's norm (what clip_grad_norm_ uses)
            norms = torch._foreach_norm([g.detach() for _, g in present])
            squares = torch.stack(norms).float() ** 2
            index = torch.tensor([i for i, _ in present], device=self.sums.device)
            per_layer = torch.zeros_like(self.sums).index_add_(0, index, squares)
            self.sums += per_layer.sqrt()
        self.steps += 1

    def end_first_epoch(self) -> None:
        """Turn the sums into the reported means (once; later epochs record nothing)."""
        if self.result is not None or self.steps == 0:
            return
        means = (self.sums / self.steps).tolist()
        self.result = GradNorms(steps=self.steps, layers=[
            LayerGradNorm(name=n, norm=v) for n, v in zip(self.layers, means, strict=True)])

    def state(self) -> dict[str, Any]:
        """JSON for the checkpoint (float32 sums round-trip exactly through JSON)."""
        return {"steps": self.steps, "sums": self.sums.tolist(),
                "result": self.result.model_dump() if self.result else None}

    def load(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.sums = torch.tensor(state["sums"], dtype=self.sums.dtype, device=self.sums.device)
        self.result = GradNorms.model_validate(state["result"]) if state["result"] else None
