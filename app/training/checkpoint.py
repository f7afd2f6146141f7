"""Checkpoints as one safetensors blob: tensors plus a JSON state in its metadata.

Loading never unpickles: safetensors holds raw tensors and the state is JSON.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app.training.blobs import CorruptBlob, read_metadata, sha256

STATE_KEY = "trainyard.state"


CorruptCheckpoint = CorruptBlob  # the checksum or format is wrong; never load it


def pack(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> bytes:
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return st_save(cpu, metadata={STATE_KEY: json.dumps(state)})


def unpack(blob: bytes, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor],
                                                                    dict[str, Any]]:
    if expected_sha256 is not None and sha256(blob) != expected_sha256:
        raise CorruptCheckpoint("checkpoint checksum mismatch")
    try:
        state = json.loads(read_metadata(blob)[STATE_KEY])
        tensors = st_load(blob)
    except CorruptBlob:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptCheckpoint(f"checkpoint unreadable: {exc}") from exc
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
