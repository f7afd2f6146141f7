"""Turning finished children into an experiment's next stage or its result.

``advance(exp, children, targets)`` returns either more children to run (sequential
designs: boosting rounds, the sweep's final retrain) or the result: the numbers and the
series a person would plot. Failed children are named in ``failures``, never waited on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from app import experiment_spec as e
from app import spec as s
from app.statuses import JobStatus
from app.training.experiments.ensemble import gradient_sum, labels, samme_scores, soft_vote
from app.training.experiments.plan import Child, ChildPlan, boosting_round, final_retrain
from app.training.experiments.roles import (
    BatchSizeRole,
    DepthRole,
    FinalRole,
    FoldRole,
    MemberRole,
    OptimizerRole,
    RoundRole,
    SettingRole,
    TrialRole,
)
from app.training.metric_names import metric_mode
from app.training.resample import bootstrap_draws, out_of_bag
from app.training.results import Summary
from app.training.until import reached

R = TypeVar("R", bound=BaseModel)


@dataclass
class Targets:
    """The development and test targets of the base spec's split (original units)."""

    task: str
    n_classes: int
    y_dev: np.ndarray
    y_test: np.ndarray
    truth_test: np.ndarray | None = None  # noise-free f(x) on test rows, when known
    noise_variance: float | None = None  # the generator's noise variance, when known


TargetLoader = Callable[[s.JobSpec], Targets]


@dataclass
class Step:
    children: list[ChildPlan] | None = None
    result: dict[str, Any] | None = None


def failures(children: list[Child]) -> list[dict[str, Any]]:
    return [{"job_id": c.job_id, "role": c.role.to_json(), "status": c.status,
             "error": c.error} for c in children if c.status != JobStatus.SUCCEEDED]


def ok(children: list[Child], kind: type[R]) -> list[tuple[Child, R, Summary]]:
    """The succeeded children of one role kind, with their role and summary."""
    return [(c, c.role, c.summary) for c in children
            if c.status == JobStatus.SUCCEEDED and c.summary is not None
            and isinstance(c.role, kind)]


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    names = sorted({k for r in rows for k in r})
    return {n: mean_std([r[n] for r in rows if n in r]) for n in names}


# ------------------------------------------------------------ cross-validation


def cross_validation(children: list[Child]) -> dict[str, Any]:
    done = sorted(ok(children, FoldRole), key=lambda d: (d[1].repeat, d[1].fold))
    folds = [{"repeat": role.repeat, "fold": role.fold, "job_id": c.job_id,
              "val": summary.val or {}, "best_epoch": summary.best_epoch}
             for c, role, summary in done]
    return {"folds": folds, "val": summarize([summary.val or {} for _, _, summary in done]),
            "failures": failures(children)}


# ---------------------------------------------------------------------- sweep


def trial_scores(children: list[Child], metric: str) -> list[dict[str, Any]]:
    """One row per trial: its objective (mean over folds when cross-validated)."""
    trials: dict[int, dict[str, Any]] = {}
    for c in children:
        role = c.role
        if not isinstance(role, TrialRole):
            continue
        row = trials.setdefault(role.trial, {"trial": role.trial, "params": role.params,
                                             "scores": [], "best_epochs": [], "failed": False,
                                             "pruned": None})
        if c.status == JobStatus.SUCCEEDED and c.summary is not None:
            row["scores"].append(c.summary.metric(metric))
            row["best_epochs"].append(c.summary.epochs_needed)
            row["pruned"] = c.summary.pruned.model_dump() if c.summary.pruned else None
        else:
            row["failed"] = True
    for row in trials.values():
        row["objective"] = statistics.fmean(row["scores"]) if row["scores"] and not row[
            "failed"] else None
    return [trials[t] for t in sorted(trials)]


def leaderboard(rows: list[dict[str, Any]], metric: str, direction: str) -> list[dict[str, Any]]:
    """Full-budget trials ranked by the objective only; test metrics play no part. Trials
    stopped early are left out: a configuration is never chosen on a shortened run."""
    scored = [r for r in rows if r["objective"] is not None and r["pruned"] is None]
    maximize = metric_mode(metric, direction) == "max"
    return sorted(scored, key=lambda r: r["objective"], reverse=maximize)


def sweep(exp: e.Sweep, children: list[Child]) -> Step:
    metric = exp.objective.metric
    rows = trial_scores(children, metric)
    board = leaderboard(rows, metric, exp.objective.direction)
    final = [c for c in children if isinstance(c.role, FinalRole)]
    if board and exp.retrain_best and not final:
        return Step(children=[final_retrain(exp, board[0])])
    result: dict[str, Any] = {
        "objective": exp.objective.model_dump(), "trials": rows, "leaderboard": [
            {"trial": r["trial"], "params": r["params"], "objective": r["objective"]}
            for r in board], "best": board[0]["params"] if board else None,
        "failures": failures(children)}
    if exp.early_termination is not None:
        result["early_termination"] = early_termination(exp.early_termination, rows, children)
    if final and final[0].summary is not None:
        result["final"] = {"job_id": final[0].job_id, "test": final[0].summary.test,
                           "epochs": final[0].summary.epochs_completed}
    return Step(result=result)


def early_termination(rule: e.MedianStopping, rows: list[dict[str, Any]],
                      children: list[Child]) -> dict[str, Any]:
    """Which trials the rule stopped, and the epochs it saved against every trial's budget."""
    trials = ok(children, TrialRole)
    run = sum(summary.epochs_completed for _, _, summary in trials)
    budget = sum(s.JobSpec.model_validate(c.spec).training.epochs for c, _, _ in trials)
    return {**rule.model_dump(),
            "stopped": [{"trial": r["trial"], "params": r["params"], **r["pruned"]}
                        for r in rows if r["pruned"] is not None],
            "epochs_run": run, "epochs_budget": budget}


# -------------------------------------------------------------------- bagging


def score(pred: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """accuracy for class probabilities; rmse/mae for values."""
    if task == "classification":
        return {"accuracy": float(np.mean(pred.argmax(axis=1) == y))}
    err = pred - y
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def bagging(exp: e.Bagging, children: list[Child], targets: Targets) -> dict[str, Any]:
    done = sorted(ok(children, MemberRole), key=lambda d: d[1].member)
    n_dev = len(targets.y_dev)
    preds = [np.asarray(summary.prediction("test")) for _, _, summary in done]
    members = [score(p, targets.y_test, targets.task) for p in preds]
    oob_sum: np.ndarray | None = None
    oob_count = np.zeros(n_dev)
    for _, role, summary in done:
        dev_pred = np.asarray(summary.prediction("dev"))
        draws = bootstrap_draws(n_dev, s.BootstrapRows(seed=exp.seed + role.member))
        oob = out_of_bag(n_dev, draws)
        oob_sum = np.zeros_like(dev_pred) if oob_sum is None else oob_sum
        oob_sum[oob] += dev_pred[oob]
        oob_count[oob] += 1
    result: dict[str, Any] = {"members": [{"member": role.member, "job_id": c.job_id,
                                           "test": m} for (c, role, _), m in zip(done, members,
                                                                                 strict=True)],
                              "member_test": summarize(members), "failures": failures(children)}
    if preds:
        result["ensemble_test"] = score(soft_vote(preds), targets.y_test, targets.task)
    if oob_sum is not None and (oob_count > 0).any():
        covered = oob_count > 0
        oob_pred = oob_sum[covered] / (oob_count[covered][:, None] if oob_sum.ndim > 1
                                       else oob_count[covered])
        result["oob_estimate"] = score(oob_pred, targets.y_dev[covered], targets.task)
        result["oob_rows"] = int(covered.sum())
    return result


# ------------------------------------------------------------------- boosting


def samme_update(weights: np.ndarray, wrong: np.ndarray,
                 n_classes: int) -> tuple[np.ndarray, float, float]:
    """One SAMME step: (new normalized weights, learner weight alpha, weighted error)."""
    w = weights / weights.sum()
    err = float(np.clip(np.sum(w * wrong), 1e-10, 1 - 1e-10))
    alpha = math.log((1 - err) / err) + math.log(n_classes - 1)
    updated = w * np.exp(alpha * wrong)
    return updated / updated.sum(), alpha, err


def samme_predict(votes: list[tuple[float, np.ndarray]], n_classes: int) -> np.ndarray:
    """argmax_k sum_t alpha_t [h_t(x) = k]."""
    return labels(samme_scores(votes, n_classes))


def boosting(exp: e.Boosting, children: list[Child], targets: Targets) -> Step:
    if any(c.status != JobStatus.SUCCEEDED for c in children):
        return Step(result={"rounds": [], "failures": failures(children)})
    rounds = sorted(ok(children, RoundRole), key=lambda d: d[1].round)
    if targets.task == "classification":
        return _samme(exp, rounds, targets)
    return _gradient(exp, rounds, targets)


Rounds = list[tuple[Child, RoundRole, Summary]]


def _samme(exp: e.Boosting, rounds: Rounds, targets: Targets) -> Step:
    k = targets.n_classes
    weights = np.full(len(targets.y_dev), 1.0 / len(targets.y_dev))
    votes: list[tuple[float, np.ndarray]] = []
    history = []
    stopped = None
    for c, role, summary in rounds:
        wrong = (np.asarray(summary.prediction("dev")).argmax(axis=1)
                 != targets.y_dev).astype(float)
        new_weights, alpha, err = samme_update(weights, wrong, k)
        if err >= 1 - 1 / k:  # no better than chance: SAMME stops here
            stopped = role.round
            break
        weights = new_weights
        votes.append((alpha, labels(np.asarray(summary.prediction("test")))))
        accuracy = float(np.mean(samme_predict(votes, k) == targets.y_test))
        history.append({"round": role.round, "job_id": c.job_id, "learner_weight": alpha,
                        "weighted_error": err, "ensemble_test": {"accuracy": accuracy},
                        "learner_test": summary.test})
    if stopped is None and len(rounds) < exp.rounds:
        return Step(children=[boosting_round(exp, len(rounds), weights.tolist(), None)])
    return Step(result={"algorithm": "samme", "rounds": history, "stopped_at_round": stopped,
                        "failures": []})


def _gradient(exp: e.Boosting, rounds: Rounds, targets: Targets) -> Step:
    f_dev = np.zeros(len(targets.y_dev))
    tests: list[tuple[float, np.ndarray]] = []
    history = []
    for c, role, summary in rounds:
        rate = 1.0 if role.round == 0 else exp.learning_rate
        f_dev += rate * np.asarray(summary.prediction("dev"))
        tests.append((rate, np.asarray(summary.prediction("test"))))
        f_test = gradient_sum(tests)
        history.append({"round": role.round, "job_id": c.job_id, "learner_weight": rate,
                        "ensemble_test": score(f_test, targets.y_test, "regression"),
                        "train_residual_rmse": float(np.sqrt(np.mean((targets.y_dev - f_dev)
                                                                     ** 2)))})
    if len(rounds) < exp.rounds:
        return Step(children=[boosting_round(exp, len(rounds), None, f_dev.tolist())])
    return Step(result={"algorithm": "gradient_boosting", "rounds": history, "failures": []})


# ---------------------------------------------------------------- bias-variance


def squared_decomposition(preds: np.ndarray, y: np.ndarray, truth: np.ndarray | None,
                          noise: float | None) -> dict[str, float]:
    """preds: (replicates, rows). E[(h - y)^2] = bias^2 + variance + noise.

    When the generator knows the noise-free truth f, bias^2 is measured against f and the
    noise is reported twice: ``noise`` is the generator's variance, ``noise_empirical`` is
    mean (y - f)^2 on these very test rows, and ``sum`` uses the empirical one. On a finite
    test set the identity then misses only by the cross term 2 mean((h_bar - f)(f - y)),
    which is zero in expectation (test noise is independent of the models) but not on the
    rows; ``identity_residual`` = expected_loss - sum is exactly that term. Without the truth,
    bias^2 and noise are reported only together and the identity is exact."""
    mean = preds.mean(axis=0)
    expected = float(np.mean((preds - y) ** 2))
    variance = float(np.mean(preds.var(axis=0)))
    out = {"expected_loss": expected, "variance": variance}
    if truth is not None and noise is not None:
        out |= {"bias2": float(np.mean((mean - truth) ** 2)), "noise": noise,
                "noise_empirical": float(np.mean((y - truth) ** 2))}
        out["sum"] = out["bias2"] + variance + out["noise_empirical"]
    else:
        out["bias2_plus_noise"] = float(np.mean((mean - y) ** 2))
        out["sum"] = variance + out["bias2_plus_noise"]
    out["identity_residual"] = expected - out["sum"]
    return out


def zero_one_decomposition(labels: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Domingos (2000) for 0-1 loss with noise taken as 0. labels: (replicates, rows)."""
    reps, rows = labels.shape
    main = np.array([np.bincount(labels[:, j]).argmax() for j in range(rows)])
    bias = (main != y).astype(float)
    var = np.mean(labels != main, axis=0)
    return {"expected_loss": float(np.mean(labels != y)), "bias": float(bias.mean()),
            "variance": float(var.mean()),
            "variance_unbiased": float(np.mean(var * (1 - bias))),
            "variance_biased": float(np.mean(var * bias)), "replicates": reps}


def bias_variance(exp: e.BiasVariance, children: list[Child], targets: Targets) -> dict[str, Any]:
    curve = []
    for setting, value in enumerate(exp.values):
        members = [summary for _, role, summary in ok(children, SettingRole)
                   if role.setting == setting]
        if len(members) < 2:
            continue
        preds = np.stack([np.asarray(summary.prediction("test")) for summary in members])
        if targets.task == "regression":
            terms = squared_decomposition(preds, targets.y_test, targets.truth_test,
                                          targets.noise_variance)
        else:
            terms = zero_one_decomposition(preds.argmax(axis=2), targets.y_test)
        curve.append({"value": value, "replicates": len(members), **terms})
    loss = "squared" if targets.task == "regression" else "zero_one"
    return {"parameter": exp.parameter, "loss": loss, "curve": curve,
            "failures": failures(children)}


# ------------------------------------------------------- batch size, optimizers


# Final training losses further apart than this factor are not "equal fit" (Keskar et al.
# compare minima of runs that fit the training data alike).
COMPARABLE_FIT = 2.0


def batch_size(exp: e.BatchSize, children: list[Child]) -> dict[str, Any]:
    def order(done: tuple[Child, BatchSizeRole, Summary]) -> float:
        b = done[1].batch_size
        return math.inf if b == "full" else float(b)

    curve = [{"batch_size": role.batch_size, "job_id": c.job_id,
              "epochs": summary.epochs_completed, "fit": summary.train["loss"],
              "generalization_gap": summary.generalization_gap,
              "test": summary.test, "train": summary.train, **sharpness_of(summary)}
             | ({"reached": _reached(exp.until, c)} if exp.until is not None else {})
             for c, role, summary in sorted(ok(children, BatchSizeRole), key=order)]
    return {"curve": curve, "warnings": fit_warnings(exp, curve),
            "failures": failures(children)}


def _reached(until: s.Until, child: Child) -> bool:
    """The loop's own rule on the child's last logged epoch."""
    return reached(until, {name: values[-1] for name, values in child.curves.items() if values})


def fit_warnings(exp: e.BatchSize, curve: list[dict[str, Any]]) -> list[str]:
    """Why a sharpness comparison across these runs may say nothing."""
    out = []
    missed = [p["batch_size"] for p in curve if p.get("reached") is False]
    if missed:
        out.append(f"batch sizes {missed} did not reach the target fit within "
                   f"{exp.base.training.epochs} epochs; raise base.training.epochs")
    fits = [p["fit"] for p in curve if p["fit"] > 0]
    if len(fits) > 1 and max(fits) > COMPARABLE_FIT * min(fits):
        out.append(f"the final training losses range from {min(fits):.3g} to {max(fits):.3g} "
                   f"(more than {COMPARABLE_FIT:g}x apart): the runs did not reach comparable "
                   "fit, so their sharpness is not compared at equal fit"
                   + ("" if exp.until else "; set until to train each to the same fit"))
    return out


def sharpness_of(summary: Summary) -> dict[str, float]:
    if summary.sharpness is None:
        raise ValueError("a batch-size child ran without its sharpness measure")
    return {"hessian_top_eigenvalue": summary.sharpness.hessian_top_eigenvalue,
            "epsilon_sharpness": summary.sharpness.epsilon_sharpness}


def optimizer_comparison(children: list[Child]) -> dict[str, Any]:
    done = sorted(ok(children, OptimizerRole), key=lambda d: d[1].index)
    runs = [{"optimizer": c.spec["optimizer"], "job_id": c.job_id, "curves": c.curves,
             "test": summary.test, "best_epoch": summary.best_epoch} for c, _, summary in done]
    epochs = max((len(v) for r in runs for v in r["curves"].values()), default=0)
    return {"epochs": list(range(1, epochs + 1)), "runs": runs, "failures": failures(children)}


# ---------------------------------------------------------------------- depth

# A variant "degrades" when its training error at the deepest depth exceeds its best by more
# than this fraction of the best plus DEGRADES_ABOVE (one seed's run-to-run noise is below).
DEGRADES_BY, DEGRADES_ABOVE = 0.1, 0.01


# What "error" means, by the metric a task logs: the fraction predicted wrong
# (classification), the RMSE (regression), or the loss (a reconstruction pretext task).
ERRORS = (("1 - accuracy", "accuracy"), ("rmse", "rmse"), ("loss", "loss"))


def error_name(metrics: dict[str, float]) -> str:
    return next(name for name, needs in ERRORS if needs in metrics)


def error_of(metrics: dict[str, float]) -> float:
    name = error_name(metrics)
    return 1.0 - metrics["accuracy"] if name == "1 - accuracy" else metrics[name]


def depth_point(child: Child, role: DepthRole, summary: Summary) -> dict[str, Any]:
    norms = summary.grad_norms
    return {"depth": role.depth, "job_id": child.job_id,
            "train_error": error_of(summary.train), "test_error": error_of(summary.test),
            "train": summary.train,
            "test": summary.test, "epochs": summary.epochs_completed,
            "grad_norms": norms.model_dump(include={"steps", "layers"}) if norms else None}


def degradation(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How far the deepest network's training error sits above the variant's best."""
    if not points:
        return None
    best, deepest = min(points, key=lambda p: p["train_error"]), points[-1]
    rise = deepest["train_error"] - best["train_error"]
    return {"best_depth": best["depth"], "best_train_error": best["train_error"],
            "deepest": deepest["depth"], "deepest_train_error": deepest["train_error"],
            "rise": rise, "degrades": rise > DEGRADES_BY * best["train_error"] + DEGRADES_ABOVE}


def depth(children: list[Child]) -> dict[str, Any]:
    done = sorted(ok(children, DepthRole), key=lambda d: d[1].depth)
    variants = {name: [depth_point(c, role, summary) for c, role, summary in done
                       if role.residual == residual]
                for name, residual in (("plain", False), ("residual", True))}
    return {"error": error_name(done[0][2].train) if done else None, **variants,
            "degradation": {name: degradation(points) for name, points in variants.items()},
            "failures": failures(children)}


def advance(exp: Any, children: list[Child], targets: TargetLoader) -> Step:
    """The next stage, or the result, once every current child has ended."""
    match exp:
        case e.CrossValidation():
            return Step(result=cross_validation(children))
        case e.Sweep():
            return sweep(exp, children)
        case e.Bagging():
            return Step(result=bagging(exp, children, targets(exp.base)))
        case e.Boosting():
            return boosting(exp, children, targets(exp.base))
        case e.BiasVariance():
            return Step(result=bias_variance(exp, children, targets(exp.base)))
        case e.BatchSize():
            return Step(result=batch_size(exp, children))
        case e.OptimizerComparison():
            return Step(result=optimizer_comparison(children))
        case e.Depth():
            return Step(result=depth(children))
    raise ValueError(f"unknown experiment kind {exp!r}")
