"""Which child jobs an experiment starts with. Pure Python (no torch): the API plans the
first stage at submission, so a design that cannot run is refused before anything is queued.
"""

from __future__ import annotations

import copy
import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app import experiment_spec as e
from app import spec as s
from app.spec import JobSpec
from app.statuses import JobStatus
from app.training.experiments.roles import (
    BatchSizeRole,
    DepthRole,
    FinalRole,
    FoldRole,
    MemberRole,
    OptimizerRole,
    Role,
    RoundRole,
    SettingRole,
    TrialRole,
)
from app.training.results import Summary


@dataclass
class ChildPlan:
    role: Role  # stored in jobs.role as role.to_json() (fold, trial, round, ...)
    spec: JobSpec


@dataclass
class Child:
    """A child job as the aggregation sees it."""

    role: Role
    spec: dict[str, Any]
    status: JobStatus
    summary: Summary | None = None
    error: str | None = None
    job_id: str = ""
    curves: dict[str, list[float]] = field(default_factory=dict)  # split_name -> per epoch


def with_value(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of a spec dict with the dotted ``path`` set to ``value``. Setting a
    block's ``kind`` to another kind resets that block (set its parameters after it)."""
    out = copy.deepcopy(spec)
    node = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"'{path}' goes through a non-object at '{key}'")
    if keys[-1] == "kind" and node.get("kind") != value:
        node.clear()  # another kind of block: its parameters start from their defaults
    node[keys[-1]] = value
    return out


def child_spec(base: JobSpec, name: str, changes: dict[str, Any]) -> JobSpec:
    raw = base.model_dump(mode="json")
    for path, value in changes.items():
        raw = with_value(raw, path, value)
    raw["name"] = name[:200]
    return JobSpec.model_validate(raw)


def grid_size(parameters: dict[str, Any]) -> int:
    """How many combinations a grid has, computed without building any."""
    return math.prod(len(values) for values in parameters.values())


def grid_point(parameters: dict[str, Any], index: int) -> dict[str, Any]:
    """Combination ``index`` in ``itertools.product`` order (the last key varies fastest)."""
    point: dict[str, Any] = {}
    for name in reversed(list(parameters)):
        index, digit = divmod(index, len(parameters[name]))
        point[name] = parameters[name][digit]
    return {name: point[name] for name in parameters}


def grid(parameters: dict[str, Any], trials: int | None = None,
         seed: int = 0) -> list[dict[str, Any]]:
    """Every combination in a stable order; with a budget below the grid's size, a seeded
    sample of ``trials`` distinct combinations (still in grid order). Only the combinations
    returned are ever built, so the grid's size costs nothing."""
    size = grid_size(parameters)
    if trials is None or trials >= size:
        indices: Sequence[int] = range(size)
    else:
        indices = sorted(distinct_indices(size, trials, random.Random(seed)))
    return [grid_point(parameters, i) for i in indices]


def distinct_indices(size: int, k: int, rng: random.Random) -> set[int]:
    """k distinct indices below ``size`` (k < size). Not ``random.sample``: a grid's size can
    pass 2**63, which ``range`` cannot index. With k <= 200 the redraws stay few."""
    picked: set[int] = set()
    while len(picked) < k:
        picked.add(rng.randrange(size))
    return picked


def sample(dist: Any, rng: random.Random) -> Any:
    if isinstance(dist, list):
        return rng.choice(dist)
    if isinstance(dist, e.LogUniform):
        lo, hi = dist.log_uniform
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if isinstance(dist, e.Uniform):
        return rng.uniform(*dist.uniform)
    return rng.randint(*dist.int_uniform)


def trial_count(sweep: e.Sweep) -> int:
    if sweep.method == "grid":
        size = grid_size(sweep.parameters)
        return min(size, sweep.trials) if sweep.trials else size
    return sweep.trials or 0


def child_count(exp: Any) -> int:
    """How many children the first stage has, known before any is built."""
    match exp:
        case e.CrossValidation():
            return exp.k * exp.repeats
        case e.Sweep():
            return trial_count(exp) * (exp.objective.cv_folds or 1)
        case e.Bagging():
            return exp.n_models
        case e.Boosting():
            return 1
        case e.BiasVariance():
            return len(exp.values) * exp.replicates
        case e.BatchSize():
            return len(exp.batch_sizes)
        case e.OptimizerComparison():
            return len(exp.optimizers)
        case e.Depth():
            return 2 * len(exp.depths)
    raise ValueError(f"unknown experiment kind {exp!r}")


def child_bytes_bound(exp: Any) -> int:
    """At most how many bytes of JSON one child's spec holds: the base plus the largest
    free-form value of each list the design varies (sizes only; no child is built)."""
    lists: list[list[Any]] = []
    if isinstance(exp, e.Sweep):
        lists = [v for v in exp.parameters.values() if isinstance(v, list)]
    elif isinstance(exp, e.BiasVariance):
        lists = [exp.values]
    elif isinstance(exp, e.Depth):
        lists = [[[exp.width] * max(exp.depths)]]
    size = len(json.dumps(exp.base.model_dump(mode="json")))
    return size + sum(max(len(json.dumps(v)) for v in values) for values in lists)


def sweep_trials(sweep: e.Sweep) -> list[dict[str, Any]]:
    if sweep.method == "grid":
        return grid(sweep.parameters, sweep.trials, sweep.seed)
    rng = random.Random(sweep.seed)
    return [{k: sample(v, rng) for k, v in sweep.parameters.items()}
            for _ in range(sweep.trials or 0)]


def folds(base: JobSpec, prefix: str, k: int, repeats: int, seed: int, stratify: bool,
          trial: TrialRole | None, changes: dict[str, Any] | None = None) -> list[ChildPlan]:
    plans = []
    for repeat in range(repeats):
        for index in range(k):
            rows = {"kind": "fold", "k": k, "index": index, "repeat": repeat, "seed": seed,
                    "stratify": stratify}
            spec = child_spec(base, f"{prefix}-r{repeat}f{index}",
                              {**(changes or {}), "data.rows": rows})
            role: Role = (FoldRole(repeat=repeat, fold=index) if trial is None else
                          TrialRole(trial=trial.trial, params=trial.params, repeat=repeat,
                                    fold=index))
            plans.append(ChildPlan(role, spec))
    return plans


def first_stage(exp: Any) -> list[ChildPlan]:
    """The children an experiment starts with (sequential designs add more later)."""
    base, name = exp.base, exp.name
    match exp:
        case e.CrossValidation():
            return folds(base, name, exp.k, exp.repeats, exp.seed, exp.stratify, None)
        case e.Sweep():
            return sweep_stage(exp)
        case e.Bagging():
            return [ChildPlan(MemberRole(member=i), child_spec(base, f"{name}-bag{i}", {
                "data.rows": {"kind": "bootstrap", "seed": exp.seed + i},
                "training.record_predictions": True})) for i in range(exp.n_models)]
        case e.Boosting():
            return [boosting_round(exp, 0, None, None)]
        case e.BiasVariance():
            return [ChildPlan(SettingRole(setting=s, value=v, replicate=b), child_spec(
                base, f"{name}-s{s}b{b}", {exp.parameter: v, "training.record_predictions": True,
                                           "data.rows": {"kind": "bootstrap",
                                                         "seed": exp.seed + b}}))
                    for s, v in enumerate(exp.values) for b in range(exp.replicates)]
        case e.BatchSize():
            sharp = exp.sharpness.model_dump(mode="json")
            until = exp.until.model_dump(mode="json") if exp.until is not None else None
            return [ChildPlan(BatchSizeRole(batch_size=b), child_spec(
                base, f"{name}-bs{b}", {"training.batch_size": b, "training.sharpness": sharp,
                                        "training.until": until}))
                for b in exp.batch_sizes]
        case e.OptimizerComparison():
            return [ChildPlan(OptimizerRole(optimizer=o.kind, index=i), child_spec(
                base, f"{name}-{o.kind}{i}", {"optimizer": o.model_dump(mode="json")}))
                for i, o in enumerate(exp.optimizers)]
        case e.Depth():
            return depth_stage(exp)
    raise ValueError(f"unknown experiment kind {exp!r}")


def depth_stage(exp: e.Depth) -> list[ChildPlan]:
    """At each depth, the plain network and the residual one; each records the first
    epoch's gradient norms, where a plain network's vanishing gradient shows."""
    return [ChildPlan(DepthRole(depth=d, residual=r), child_spec(
        exp.base, f"{exp.name}-d{d}-{'residual' if r else 'plain'}", {
            "model.hidden": [exp.width] * d, "model.residual": r,
            "training.record_grad_norms": True}))
        for d in exp.depths for r in (False, True)]


def sweep_stage(exp: e.Sweep) -> list[ChildPlan]:
    plans: list[ChildPlan] = []
    for t, params in enumerate(sweep_trials(exp)):
        role = TrialRole(trial=t, params=params)
        if exp.objective.cv_folds:
            plans += folds(exp.base, f"{exp.name}-t{t}", exp.objective.cv_folds, 1, exp.seed,
                           True, role, params)
        else:
            plans.append(ChildPlan(role, child_spec(exp.base, f"{exp.name}-t{t}",
                                                              params)))
    return plans


def boosting_round(exp: e.Boosting, round_: int, weights: list[float] | None,
                   offset: list[float] | None) -> ChildPlan:
    """Round ``round_``: SAMME resamples by the weights; gradient boosting fits residuals."""
    changes: dict[str, Any] = {"training.record_predictions": True}
    if offset is not None:
        changes["data.target_offset"] = offset
    elif exp.base.loss.kind in ("cross_entropy", "nll", "bce"):
        changes["data.rows"] = {"kind": "bootstrap", "seed": exp.seed + round_,
                                "weights": weights}
    spec = child_spec(exp.base, f"{exp.name}-round{round_}", changes)
    return ChildPlan(RoundRole(round=round_), spec)


def final_retrain(exp: e.Sweep, best: dict[str, Any]) -> ChildPlan:
    """The best configuration on train + val, for as many epochs as it needed."""
    changes = dict(best["params"])
    changes["data.split.val"] = 0.0
    spec = child_spec(exp.base, f"{exp.name}-final", changes)
    if spec.regularization.early_stopping is not None:
        epochs = max(1, round(statistics.fmean(best["best_epochs"])))
        spec = child_spec(spec, spec.name, {"regularization.early_stopping": None,
                                            "training.epochs": epochs})
    if isinstance(spec.schedule, s.ReduceOnPlateau):
        spec = child_spec(spec, spec.name, {"schedule": {"kind": "constant"}})
    return ChildPlan(FinalRole(final=True, params=best["params"]), spec)
