"""Serve a checkpoint's weights as a standalone safetensors file (numpy, no torch)."""

from __future__ import annotations

from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from app.errors import ApiError
from app.training.blobs import CorruptBlob, verify, weights_only


class CorruptStored(ApiError):
    status, code = 409, "corrupt_checkpoint"


def weights_file(blob: bytes, expected_sha256: str, *, job_id: str, epoch: int) -> bytes:
    """The model's weights in a training-state blob, verified against its sha256."""
    try:
        verify(blob, expected_sha256)
    except CorruptBlob as exc:
        raise CorruptStored(f"checkpoint of job {job_id} at epoch {epoch} failed its checksum "
                            "and is not served") from exc
    return np_save(weights_only(np_load(blob)), metadata={"job_id": job_id, "epoch": str(epoch),
                                      "format": "pt"})
