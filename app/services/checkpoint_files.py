"""Serve a checkpoint's weights as a standalone safetensors file (numpy, no torch)."""

from __future__ import annotations

from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from app.errors import ApiError
from app.training.blobs import BEST, WEIGHTS, CorruptBlob, carried_best_epoch, verify, weights_only


class CorruptStored(ApiError):
    status, code = 409, "corrupt_checkpoint"


def weights_file(blob: bytes, expected_sha256: str, *, job_id: str, epoch: int) -> bytes:
    """The model's weights in a training-state blob, verified against its sha256."""
    _verified(blob, expected_sha256, job_id, epoch)
    return np_save(weights_only(np_load(blob)), metadata={"job_id": job_id, "epoch": str(epoch),
                                      "format": "pt"})


def best_carried(blob: bytes, expected_sha256: str, *, job_id: str,
                 epoch: int) -> tuple[int, bytes] | None:
    """The best epoch whose weights a (verified) checkpoint carries, and a blob holding
    them as its model weights; None when it carries none (written before they always were)."""
    _verified(blob, expected_sha256, job_id, epoch)
    try:
        best_epoch = carried_best_epoch(blob)
    except (CorruptBlob, KeyError, ValueError, TypeError):
        return None  # a checksum-valid blob with no readable tracker: nothing to offer
    if best_epoch is None:
        return None
    best = weights_only(np_load(blob), BEST)
    return best_epoch, np_save({f"{WEIGHTS}.{k}": v for k, v in best.items()})


def _verified(blob: bytes, expected_sha256: str, job_id: str, epoch: int) -> None:
    try:
        verify(blob, expected_sha256)
    except CorruptBlob as exc:
        raise CorruptStored(f"checkpoint of job {job_id} at epoch {epoch} failed its checksum "
                            "and is not served") from exc
