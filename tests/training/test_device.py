"""Devices and precision. No GPU exists on this machine: CUDA paths are checked for their
refusal here; the same code runs on CUDA where `device: auto` finds one."""

from __future__ import annotations

import math

import pytest
import torch

from app.spec import JobSpec
from app.training.loop import resolve_device
from app.training.runner import run_spec
from app.training.sink import MemorySink

MOONS = {"data": {"source": {"synthetic": "moons", "n_samples": 400}},
         "model": {"kind": "mlp", "hidden": [32]}, "optimizer": {"kind": "adam", "lr": 0.01},
         "training": {"epochs": 8, "batch_size": 32}}


def test_bf16_autocast_trains_on_cpu() -> None:
    spec = JobSpec.model_validate({**MOONS, "training": {**MOONS["training"],
                                                         "precision": "bf16"}})
    out = run_spec(spec, MemorySink())
    assert math.isfinite(out.summary.test["loss"]) and out.summary.test["accuracy"] > 0.8


def test_auto_resolves_to_what_exists() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")
