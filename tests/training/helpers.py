"""Small shared builders for the pure-core tests (tiny data, few epochs)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from app import spec as s
from app.training.data import Prepared, load_arrays, prepare
from app.training.loop import Trainer
from app.training.results import Summary
from app.training.sink import EpochReport, MemorySink

CPU = torch.device("cpu")
TIMING = ("epoch_seconds", "samples_per_second")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (dicts merge, everything else replaces).

    A block naming a different kind or source replaces the base block instead of merging.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _switches(
                out[key], value):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _switches(old: dict[str, Any], new: dict[str, Any]) -> bool:
    for tag in ("kind", "builtin", "synthetic", "dataset"):
        if tag in new and old.get(tag) != new[tag]:
            return True
    return False


MOONS = {
    "data": {"source": {"synthetic": "moons", "n_samples": 200, "noise": 0.25}},
    "model": {"kind": "mlp", "hidden": [16]},
    "optimizer": {"kind": "adam", "lr": 0.01},
    "training": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu"},
}


def make_spec(base: dict[str, Any] | None = None, **over: Any) -> s.JobSpec:
    return s.JobSpec.model_validate(merge(base if base is not None else MOONS, over))


def prepared(spec: s.JobSpec) -> Prepared:
    return prepare(spec.data, load_arrays(spec.data.source), CPU, task=spec.task)


def trainer(spec: s.JobSpec, sink: MemorySink | None = None,
            data: Prepared | None = None) -> Trainer:
    return Trainer(spec, data if data is not None else prepared(spec), sink or MemorySink(), CPU)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def metrics_without_timing(reports: list[EpochReport]) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for r in reports:
        m = {split: {k: v for k, v in vals.items() if k not in TIMING}
             for split, vals in r.metrics.items()}
        out.append((r.epoch, m))
    return out


def summary_of(**fields: Any) -> Summary:
    """A child's summary as the aggregation reads it: the given fields over neutral ones."""
    base: dict[str, Any] = {
        "task": "classification", "epochs_completed": 1, "best_epoch": None,
        "monitor": "val_loss", "best_value": None, "early_stopped": False,
        "stopped_epoch": None, "parameters": 1, "rows": {"train": 1, "val": 1, "test": 1},
        "seed": 0, "device": "cpu", "versions": {}, "train": {}, "test": {},
        "generalization_gap": {}}
    return Summary.model_validate(base | fields)
