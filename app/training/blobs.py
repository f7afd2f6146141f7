"""Torch-free helpers for stored blobs (the API serves checkpoints without torch)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

# A checkpoint's layout, as far as torch-free readers need it (``checkpoint.TrainState``
# owns the rest): its JSON state sits under STATE_KEY in the safetensors metadata, and
# the model's weights are the tensors named ``model.<parameter name>``.
STATE_KEY = "trainyard.state"
WEIGHTS = "model"


class CorruptBlob(ValueError):
    """A stored blob's checksum or format is wrong; it must not be used."""


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def verify(blob: bytes, expected: str) -> None:
    if sha256(blob) != expected:
        raise CorruptBlob("checksum mismatch")


def read_metadata(blob: bytes) -> dict[str, str]:
    """A safetensors header's __metadata__ (string to string), without loading tensors."""
    if len(blob) < 8:
        raise CorruptBlob("shorter than a safetensors header")
    size = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8 : 8 + size])
    except ValueError as exc:
        raise CorruptBlob("safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise CorruptBlob("safetensors header is not an object")
    return dict(header.get("__metadata__") or {})


def weights_only(tensors: Mapping[str, T]) -> dict[str, T]:
    """The model's weights among a checkpoint's tensors (torch or numpy), by their own names."""
    start = len(WEIGHTS) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(WEIGHTS + ".")}
