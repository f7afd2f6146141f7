"""Planning without building: a design's child count and a grid's combinations are computed
from list lengths, and only the combinations used are ever built."""

from __future__ import annotations

import itertools
from typing import Any, get_args

import pytest
from pydantic import TypeAdapter

from app import experiment_spec as e
from app.training.experiments.plan import child_count, first_stage, grid, grid_point, grid_size

EXPERIMENT: TypeAdapter[Any] = TypeAdapter(e.Experiment)
BASE = {"data": {"source": {"synthetic": "moons", "n_samples": 200}},
        "model": {"kind": "mlp", "hidden": [4]}, "training": {"epochs": 2, "batch_size": 32}}
DESIGNS: list[dict[str, Any]] = [
    {"kind": "cross_validation", "k": 3, "repeats": 2},
    {"kind": "sweep", "parameters": {"optimizer.lr": [0.1, 0.01], "model.hidden": [[4], [8]]}},
    {"kind": "sweep", "parameters": {"optimizer.lr": [0.1, 0.01, 0.001]}, "trials": 2,
     "objective": {"cv_folds": 3}},
    {"kind": "sweep", "method": "random", "trials": 4,
     "parameters": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}}},
    {"kind": "bagging", "n_models": 3},
    {"kind": "boosting", "rounds": 4},
    {"kind": "bias_variance", "values": [[2], [4], [8]], "replicates": 2},
    {"kind": "batch_size", "batch_sizes": [8, 16, "full"]},
    {"kind": "optimizer_comparison", "optimizers": [{"kind": "sgd"}, {"kind": "adam"}]},
    {"kind": "depth", "depths": [1, 3, 6], "width": 4},
]


@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: str(d["kind"]))
def test_child_count_is_the_first_stage_without_building_it(design: dict[str, Any]) -> None:
    exp = EXPERIMENT.validate_python({**design, "base": BASE})
    assert child_count(exp) == len(first_stage(exp))


def test_every_kind_has_a_design_here() -> None:
    kinds = {get_args(m.model_fields["kind"].annotation)[0]
             for m in get_args(get_args(e.Experiment)[0])}
    assert {str(d["kind"]) for d in DESIGNS} == kinds


def test_grid_points_are_itertools_product_order() -> None:
    params: dict[str, list[Any]] = {"a": [1, 2, 3], "b": ["x", "y"], "c": [[0], [1], [2], [3]]}
    combos = [dict(zip(params, c, strict=True)) for c in itertools.product(*params.values())]
    assert grid_size(params) == len(combos) == 24
    assert [grid_point(params, i) for i in range(24)] == combos
    assert grid(params) == combos and grid(params, trials=24) == combos


def test_a_budget_samples_distinct_combinations_by_seed_in_grid_order() -> None:
    params = {"a": list(range(10)), "b": list(range(10)), "c": list(range(10))}
    picked = grid(params, trials=5, seed=3)
    order = [(p["a"], p["b"], p["c"]) for p in picked]
    assert len(set(order)) == 5 and order == sorted(order)
    assert grid(params, trials=5, seed=3) == picked
    assert grid(params, trials=5, seed=4) != picked


def test_a_budget_on_an_astronomical_grid_builds_only_the_budget() -> None:
    params = {f"k{i}": list(range(50)) for i in range(e.MAX_SWEEP_PARAMETERS)}
    assert grid_size(params) == 50**e.MAX_SWEEP_PARAMETERS > 2**63
    picked = grid(params, trials=3, seed=0)
    assert len(picked) == 3 and all(set(p) == set(params) for p in picked)
