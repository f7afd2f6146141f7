"""Checkpoints as one safetensors blob: tensors plus a JSON state in its metadata.

``TrainState`` is the whole state of a run, and the only code that knows the blob's key
names. Loading never unpickles: safetensors holds raw tensors and the state is JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app.training.blobs import STATE_KEY, WEIGHTS, CorruptBlob, read_metadata, sha256, weights_only

VERSION = 1


def pack(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> bytes:
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return st_save(cpu, metadata={STATE_KEY: json.dumps(state)})


def unpack(blob: bytes, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor],
                                                                    dict[str, Any]]:
    if expected_sha256 is not None and sha256(blob) != expected_sha256:
        raise CorruptBlob("checkpoint checksum mismatch")
    try:
        state = json.loads(read_metadata(blob)[STATE_KEY])
        tensors = st_load(blob)
    except CorruptBlob:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptBlob(f"checkpoint unreadable: {exc}") from exc
    return tensors, state


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def strip_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and a JSON part."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for items in (tensors.items(), meta["scalars"].items()):
        for name, value in items:
            pid, key = name.split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class EpochProgress:
    """The epoch being trained: its row order, the per-step losses and correct counts
    (on the device, read once at the epoch end), the next step, and its wall time."""

    perm: torch.Tensor
    loss: torch.Tensor
    correct: torch.Tensor
    step: int = 0
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0  # set when its last step is done

    @classmethod
    def start(cls, rows: int, steps: int, gen: torch.Generator,
              device: torch.device) -> EpochProgress:
        return cls(torch.randperm(rows, generator=gen, device=device),
                   torch.zeros(steps, device=device), torch.zeros(steps, device=device))

    def keep(self, first: int, losses: list[torch.Tensor],
             corrects: list[torch.Tensor]) -> None:
        """Store the steps from ``first`` on: their losses and (classification) counts."""
        if losses:
            self.loss[first:first + len(losses)] = torch.stack(losses)
        if corrects:
            self.correct[first:first + len(corrects)] = torch.stack(corrects)

    def to(self, device: torch.device) -> EpochProgress:
        return EpochProgress(self.perm.to(device), self.loss.to(device),
                             self.correct.to(device), self.step)


@dataclass
class Cadence:
    """When an epoch end writes a checkpoint: every ``epochs`` epochs and/or once
    ``seconds`` have passed since the last one (either rule may be off). The clock only
    picks which epochs are written; nothing in the training state depends on it."""

    epochs: int | None
    seconds: float | None
    clock: Callable[[], float] = time.monotonic
    last: float = field(init=False)

    def __post_init__(self) -> None:
        self.last = self.clock()  # a run (or a resumed one) starts from a checkpoint

    def due(self, epoch: int) -> bool:
        by_epochs = self.epochs is not None and epoch % self.epochs == 0
        by_time = self.seconds is not None and self.clock() - self.last >= self.seconds
        return by_epochs or by_time

    def written(self) -> None:
        self.last = self.clock()


@dataclass
class Best:
    """The best epoch so far by the monitored metric, and the patience count after it."""

    value: float | None = None
    epoch: int = -1
    wait: int = 0


@dataclass
class TrainState:
    """Everything a run depends on; a run restored from it ends bit-identical on CPU.
    Tensors are the caller's (``from_blob`` gives CPU tensors)."""

    epoch: int  # completed epochs
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # a torch optimizer state_dict
    lr: float
    schedule: dict[str, Any]
    best: Best
    best_weights: dict[str, torch.Tensor] | None  # the best epoch's (best.epoch)
    rng_torch: torch.Tensor
    rng_gen: torch.Tensor
    rng_cuda: torch.Tensor | None
    np_rng: dict[str, Any]
    progress: EpochProgress | None = None  # set when saved mid-epoch
    stopped_early_at: int | None = None
    pruned: dict[str, Any] | None = None  # {"epoch", "reason"} when a sweep's rule ended it
    grad_norms: dict[str, Any] | None = None  # GradNormRecorder.state(), when recorded

    @property
    def step(self) -> int:
        return self.progress.step if self.progress is not None else 0

    def weights_only(self) -> dict[str, torch.Tensor]:
        return self.model

    def to_blob(self) -> bytes:
        optim_tensors, optim_meta = flatten_optimizer(self.optimizer)
        tensors = (with_prefix(WEIGHTS, self.model) | with_prefix("optim", optim_tensors)
                   | {"rng.torch": self.rng_torch, "rng.gen": self.rng_gen})
        if self.rng_cuda is not None:
            tensors["rng.cuda"] = self.rng_cuda
        if self.best_weights is not None:
            tensors |= with_prefix("best", self.best_weights)
        if self.progress is not None:
            tensors |= {"epoch.perm": self.progress.perm, "epoch.loss": self.progress.loss,
                        "epoch.correct": self.progress.correct}
        best = self.best
        state = {"version": VERSION, "epoch": self.epoch, "step": self.step, "optim": optim_meta,
                 "schedule": self.schedule, "tracker": {"best": best.value,
                                                        "best_epoch": best.epoch,
                                                        "wait": best.wait},
                 "np_rng": self.np_rng, "stopped_early_at": self.stopped_early_at,
                 "pruned": self.pruned, "grad_norms": self.grad_norms, "lr": self.lr}
        return pack(tensors, state)

    @classmethod
    def from_blob(cls, blob: bytes, expected_sha256: str | None = None) -> TrainState:
        tensors, state = unpack(blob, expected_sha256)
        progress = None
        if "epoch.perm" in tensors:
            progress = EpochProgress(tensors["epoch.perm"], tensors["epoch.loss"],
                                     tensors["epoch.correct"], state["step"])
        tracker = state["tracker"]
        return cls(
            epoch=state["epoch"], model=weights_only(tensors),
            optimizer=unflatten_optimizer(strip_prefix("optim", tensors), state["optim"]),
            lr=state["lr"], schedule=state["schedule"],
            best=Best(tracker["best"], tracker["best_epoch"], tracker["wait"]),
            best_weights=strip_prefix("best", tensors) or None,
            rng_torch=tensors["rng.torch"], rng_gen=tensors["rng.gen"],
            rng_cuda=tensors.get("rng.cuda"), np_rng=state["np_rng"], progress=progress,
            stopped_early_at=state["stopped_early_at"],
            pruned=state.get("pruned"),  # absent in checkpoints written before pruning
            grad_norms=state.get("grad_norms"))  # and before grad norms
