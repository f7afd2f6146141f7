"""Torch-free helpers for stored blobs (the API serves checkpoints without torch)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# A checkpoint's layout, as far as torch-free readers need it (``checkpoint.TrainState``
# owns the rest): its JSON state sits under STATE_KEY in the safetensors metadata, and
# the model's weights are the tensors named ``model.<parameter name>``.
STATE_KEY = "trainyard.state"
WEIGHTS = "model"
BEST = "best"  # the best epoch's weights, ``best.<parameter name>``


class CorruptBlob(ValueError):
    """A stored blob's checksum or format is wrong; it must not be used."""


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def verify(blob: bytes, expected: str) -> None:
    if sha256(blob) != expected:
        raise CorruptBlob("checksum mismatch")


def read_metadata(blob: bytes) -> dict[str, str]:
    """A safetensors header's __metadata__ (string to string), without loading tensors."""
    return dict(read_header(blob).get("__metadata__") or {})


def carried_best_epoch(blob: bytes) -> int | None:
    """The best epoch whose weights a checkpoint carries (tensors ``best.*``), if any."""
    header = read_header(blob)
    if not any(k.startswith(BEST + ".") for k in header):
        return None
    epoch = json.loads(header["__metadata__"][STATE_KEY])["tracker"]["best_epoch"]
    return int(epoch) if epoch > 0 else None


def read_header(blob: bytes) -> dict[str, Any]:
    """A safetensors header: tensor names to dtype/shape/offsets, and __metadata__."""
    if len(blob) < 8:
        raise CorruptBlob("shorter than a safetensors header")
    size = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8 : 8 + size])
    except ValueError as exc:
        raise CorruptBlob("safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise CorruptBlob("safetensors header is not an object")
    return header


def weights_only(tensors: Mapping[str, T], prefix: str = WEIGHTS) -> dict[str, T]:
    """The model's weights among a checkpoint's tensors (torch or numpy), by their own names
    (``prefix=BEST``: the best epoch's)."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
