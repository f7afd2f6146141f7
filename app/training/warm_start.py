"""Warm start (``model.init_from``): another job's weights into a new model, a fresh output
layer when asked, and frozen parameters. The API checked names and shapes at submission
(``shapes.state_shapes``); a blob that no longer matches is refused here as a DataError."""

from __future__ import annotations

import torch
from safetensors.torch import load as st_load
from torch import nn

from app import spec as s
from app.training.blobs import CorruptBlob, verify, weights_only
from app.training.errors import DataError

HEAD = "head."  # every model kind names its output layer so


def source_weights(blob: bytes, pinned_sha256: str | None) -> dict[str, torch.Tensor]:
    """The model weights a checkpoint holds, after checking it is the one pinned at submit."""
    if pinned_sha256 is None:
        raise DataError("model.init_from has no pinned sha256: submit the job through the API")
    try:
        verify(blob, pinned_sha256)
        return weights_only(st_load(blob))
    except CorruptBlob as exc:
        raise DataError("model.init_from: the source checkpoint is not the one pinned at "
                        "submission") from exc


def _loaded(model: nn.Module, weights: dict[str, torch.Tensor],
            init: s.InitFrom) -> dict[str, torch.Tensor]:
    """The entries to load: all of the model's, the head aside when it is reinitialized."""
    wanted = {k: v for k, v in model.state_dict().items()
              if not (init.head == "reinit" and k.startswith(HEAD))}
    wrong = [k for k, v in wanted.items() if k not in weights or weights[k].shape != v.shape]
    if wrong:
        raise DataError(f"model.init_from: the checkpoint does not fit this model at {wrong[:5]}")
    return {k: weights[k] for k in wanted}


def warm_start(model: nn.Module, weights: dict[str, torch.Tensor], init: s.InitFrom) -> None:
    """Load the source's weights (keeping a fresh head for reinit) and freeze the prefixes."""
    model.load_state_dict(_loaded(model, weights, init), strict=False)
    frozen = tuple(init.freeze)
    for name, parameter in model.named_parameters():
        if frozen and name.startswith(frozen):
            parameter.requires_grad_(False)
