"""An experiment's plots, one set per kind, drawn from its stored result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.plots import results as r
from app.plots.render import Format, draw, series

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAN = float("nan")  # a missing value: matplotlib leaves a gap
LEADERBOARD_ROWS = 20  # the best trials shown; the rest are counted in the title
WORDS = {"loss": "Loss (lower is better)", "accuracy": "Accuracy (fraction predicted right)",
         "rmse": "RMSE (typical error, in the target's units)",
         "mae": "Mean absolute error", "r2": "R² (1 is a perfect fit)"}


def words(metric: str) -> str:
    return WORDS.get(metric, metric.replace("_", " "))


def _number(value: float | None) -> float:
    return NAN if value is None else value


def main_of(metrics: dict[str, Any]) -> str:
    return "accuracy" if "accuracy" in metrics else "rmse"


def short(params: dict[str, Any]) -> str:
    """A trial's parameters as one short label."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items())[:60]


# ------------------------------------------------------------ cross-validation


def folds(res: r.CrossValidationResult, fmt: Format) -> bytes:
    metrics = sorted(res.val)

    def build(axes: list[Axes]) -> None:
        labels = [f"fold {f.fold + 1}" + (f" (repeat {f.repeat + 1})" if f.repeat else "")
                  for f in res.folds]
        for ax, metric in zip(axes, metrics, strict=True):
            stats = res.val[metric]
            values = [f.val.get(metric, NAN) for f in res.folds]
            series(ax.bar(range(len(values)), values, color="#8fb3d9", label="each fold"),
                   f"folds_{metric}")
            series(ax.axhspan(stats.mean - stats.std, stats.mean + stats.std, alpha=0.2,
                              color="orange", label="mean ± one standard deviation"),
                   f"std_{metric}")
            series(ax.axhline(stats.mean, color="orange", label=f"mean {stats.mean:.4g}"),
                   f"mean_{metric}")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
            ax.set_xlabel("Fold (held out in turn as validation data)")
            ax.set_ylabel(f"Validation {words(metric)}")

    return draw(fmt, build, panels=len(metrics),
                title="Cross-validation: the score of each fold, with their mean and spread")


# ---------------------------------------------------------------------- sweep


def trials(res: r.SweepResult, fmt: Format) -> bytes:
    best = res.leaderboard[0].trial if res.leaderboard else None
    full = [t for t in res.trials if t.objective is not None and t.pruned is None]
    stopped = [t for t in res.trials if t.objective is not None and t.pruned is not None]

    def build(axes: list[Axes]) -> None:
        ax = axes[0]
        if full:
            series(ax.scatter([t.trial for t in full], [_number(t.objective) for t in full],
                              label="ran its full budget"), "completed")
        if stopped:
            series(ax.scatter([t.trial for t in stopped], [_number(t.objective) for t in stopped],
                              marker="x", color="red", label="stopped early (median rule)"),
                   "stopped")
        if best is not None:
            top = next(t for t in res.trials if t.trial == best)
            series(ax.scatter([best], [_number(top.objective)], marker="*", s=200, color="gold",
                              edgecolors="black", label=f"best: {short(top.params)}"), "best")
        ax.set_xlabel("Trial number")
        ax.set_ylabel(f"Objective: {res.objective.metric.replace('_', ' ')}")

    failed = sum(t.failed for t in res.trials)
    note = f" ({failed} failed, not shown)" if failed else ""
    return draw(fmt, build, title=f"Sweep: the objective of each trial{note}")


def leaderboard(res: r.SweepResult, fmt: Format) -> bytes:
    shown = res.leaderboard[:LEADERBOARD_ROWS]

    def build(axes: list[Axes]) -> None:
        ax = axes[0]
        rows = list(reversed(shown))  # the best at the top
        if rows:
            series(ax.barh(range(len(rows)), [t.objective for t in rows], color="#8fb3d9"),
                   "leaderboard")
        ax.set_yticks(range(len(rows)), [f"#{t.trial}: {short(t.params)}" for t in rows])
        ax.set_xlabel(f"Objective: {res.objective.metric.replace('_', ' ')}")
        ax.set_ylabel("Trial (its parameters)")

    more = len(res.leaderboard) - len(shown)
    note = f" (the best {len(shown)} of {len(res.leaderboard)})" if more else ""
    return draw(fmt, build, title=f"Sweep leaderboard: full-budget trials, best first{note}")


# -------------------------------------------------------------------- bagging


def members(res: r.BaggingResult, fmt: Format) -> bytes:
    metric = main_of(res.member_test)

    def build(axes: list[Axes]) -> None:
        ax = axes[0]
        values = [m.test.get(metric, NAN) for m in res.members]
        series(ax.bar(range(len(values)), values, color="#8fb3d9", label="each member"),
               "members")
        if metric in res.member_test:
            mean = res.member_test[metric].mean
            series(ax.axhline(mean, color="grey", linestyle="--",
                              label=f"members' mean {mean:.4g}"), "member_mean")
        if res.ensemble_test and metric in res.ensemble_test:
            value = res.ensemble_test[metric]
            series(ax.axhline(value, color="green", label=f"the ensemble {value:.4g}"),
                   "ensemble")
        if res.oob_estimate and metric in res.oob_estimate:
            value = res.oob_estimate[metric]
            series(ax.axhline(value, color="purple", linestyle=":",
                              label=f"out-of-bag estimate {value:.4g}"), "out_of_bag")
        ax.set_xticks(range(len(values)), [f"member {m.member + 1}" for m in res.members])
        ax.set_xlabel("Ensemble member (trained on its own bootstrap sample)")
        ax.set_ylabel(f"Test {words(metric)}")

    return draw(fmt, build, title="Bagging: each member against the averaged ensemble")


# ------------------------------------------------------------------- boosting


def rounds(res: r.BoostingResult, fmt: Format) -> bytes:
    metric = main_of(res.rounds[0].ensemble_test) if res.rounds else "accuracy"
    numbers = [x.round + 1 for x in res.rounds]

    def build(axes: list[Axes]) -> None:
        scores, weights = axes
        series(scores.plot(numbers, [x.ensemble_test.get(metric, NAN) for x in res.rounds],
                           marker="o", label="the ensemble so far (test rows)"), "ensemble")
        if any(x.learner_test for x in res.rounds):
            series(scores.plot(numbers, [(x.learner_test or {}).get(metric, NAN)
                                         for x in res.rounds], marker="s", linestyle="--",
                               label="this round's learner alone"), "learner")
        if any(x.train_residual_rmse is not None for x in res.rounds):
            series(scores.plot(numbers, [_number(x.train_residual_rmse) for x in res.rounds],
                               marker="s", linestyle="--",
                               label="residual left on the training rows (RMSE)"),
                   "train_residual")
        scores.set_xlabel("Boosting round")
        scores.set_ylabel(f"Test {words(metric)}")
        series(weights.bar(numbers, [x.learner_weight for x in res.rounds], color="#8fb3d9"),
               "learner_weight")
        weights.set_xlabel("Boosting round")
        weights.set_ylabel("Learner weight (its say in the vote)"
                           if metric == "accuracy" else "Learner step (shrinkage)")

    return draw(fmt, build, panels=2,
                title="Boosting: the ensemble's score and each learner's weight per round")


# -------------------------------------------------------------- bias-variance


def decomposition(res: r.BiasVarianceResult, fmt: Format) -> bytes:
    xs = list(range(len(res.curve)))
    squared = res.loss == "squared"

    def line(ax: Axes, values: list[float | None], name: str, label: str, **style: Any) -> None:
        series(ax.plot(xs, [_number(v) for v in values], marker="o", label=label, **style),
               name)

    def build(axes: list[Axes]) -> None:
        ax = axes[0]
        line(ax, [c.expected_loss for c in res.curve], "expected_loss",
             "expected loss (what a new model scores on average)", linewidth=2.5)
        if squared and all(c.bias2 is not None for c in res.curve):
            line(ax, [c.bias2 for c in res.curve], "bias2", "bias² (systematic error)")
            line(ax, [c.noise_empirical for c in res.curve], "noise",
                 "noise (error no model can remove)", linestyle=":")
        elif squared:
            line(ax, [c.bias2_plus_noise for c in res.curve], "bias2_plus_noise",
                 "bias² + noise (not separable without the true function)")
        else:
            line(ax, [c.bias for c in res.curve], "bias", "bias (the usual vote is wrong)")
        line(ax, [c.variance for c in res.curve], "variance",
             "variance (how much models trained on other samples disagree)")
        ax.set_xticks(xs, [str(c.value) for c in res.curve])
        ax.set_xlabel(f"{res.parameter} (the setting varied)")
        ax.set_ylabel("Squared error" if squared else "Zero-one loss (fraction wrong)")

    return draw(fmt, build, title="Bias-variance decomposition of the test error")


# ----------------------------------------------------------------- batch size


def sharpness(res: r.BatchSizeResult, fmt: Format) -> bytes:
    xs = list(range(len(res.curve)))
    panels = [("gap", "Generalization gap", "Test loss minus training loss",
               [-c.generalization_gap.get("loss", NAN) for c in res.curve]),
              ("hessian", "Curvature at the minimum", "Top Hessian eigenvalue",
               [c.hessian_top_eigenvalue for c in res.curve]),
              ("epsilon_sharpness", "Sharpness", "Loss rise within a small step (ε)",
               [c.epsilon_sharpness for c in res.curve])]

    def build(axes: list[Axes]) -> None:
        for ax, (name, title, label, values) in zip(axes, panels, strict=True):
            series(ax.plot(xs, values, marker="o"), name)
            ax.set_xticks(xs, [str(c.batch_size) for c in res.curve])
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("Batch size (rows per step)")
            ax.set_ylabel(label)

    return draw(fmt, build, panels=3,
                title="Batch size: generalization gap and sharpness of the minimum found")


# ------------------------------------------------------------- optimizers


def optimizer_label(optimizer: dict[str, Any]) -> str:
    return f"{optimizer.get('kind', 'optimizer')} (lr {optimizer.get('lr', '?')})"


def optimizer_curves(res: r.OptimizerComparisonResult, fmt: Format) -> bytes:
    metric = next((m for m in ("accuracy", "rmse")
                   if any(f"val_{m}" in run.curves or f"train_{m}" in run.curves
                          for run in res.runs)), "accuracy")

    def build(axes: list[Axes]) -> None:
        for ax, name in zip(axes, ("loss", metric), strict=True):
            for i, run in enumerate(res.runs):
                color = f"C{i % 10}"
                for split, style in (("train", "-"), ("val", "--")):
                    values = run.curves.get(f"{split}_{name}")
                    if values:
                        words_split = "training" if split == "train" else "validation"
                        series(ax.plot(range(1, len(values) + 1), values, color=color,
                                       linestyle=style, label=f"{optimizer_label(run.optimizer)}"
                                       f", {words_split}"), f"run{i}-{split}_{name}")
            ax.set_xlabel("Epoch (one pass over the training data)")
            ax.set_ylabel(words(name))

    return draw(fmt, build, panels=2, title="Optimizers side by side: solid lines on the "
                "training data, dashed on the validation data")


# ---------------------------------------------------------------------- depth

VARIANTS = {"plain": ("plain (no skips)", "-", "C3"),
            "residual": ("residual (identity skips)", "--", "C0")}
SMALLEST_NORM = 1e-12  # a vanished gradient (exactly 0 in float32) drawn at this floor


def depth_errors(res: r.DepthResult, fmt: Format) -> bytes:
    what = {"1 - accuracy": "fraction wrong", "rmse": "RMSE"}.get(res.error or "", "loss")

    def build(axes: list[Axes]) -> None:
        for ax, split, words_split in zip(axes, ("train", "test"), ("training", "test"),
                                          strict=True):
            for variant, (label, style, color) in VARIANTS.items():
                points: list[r.DepthPoint] = getattr(res, variant)
                if points:
                    series(ax.plot([p.depth for p in points],
                                   [getattr(p, f"{split}_error") for p in points], marker="o",
                                   linestyle=style, color=color, label=label),
                           f"{variant}_{split}")
            ax.set_xticks(sorted({p.depth for p in res.plain + res.residual}))
            ax.set_title(f"Error on the {words_split} data", fontsize=10)
            ax.set_xlabel("Depth (hidden layers)")
            ax.set_ylabel(f"{words_split.capitalize()} error ({what})")

    return draw(fmt, build, panels=2, title="Depth: past some depth a plain network fits "
                "even its training data worse; a residual one should not")


def depth_gradients(res: r.DepthResult, fmt: Format) -> bytes:
    deepest = {variant: next((p for p in reversed(getattr(res, variant)) if p.grad_norms),
                             None) for variant in VARIANTS}

    def build(axes: list[Axes]) -> None:
        ax = axes[0]
        for variant, (label, style, color) in VARIANTS.items():
            point = deepest[variant]
            if point is None or point.grad_norms is None:
                continue
            norms = [max(layer.norm, SMALLEST_NORM) for layer in point.grad_norms.layers]
            series(ax.plot(range(1, len(norms) + 1), norms, marker=".", linestyle=style,
                           color=color, label=f"{label}, depth {point.depth}"), variant)
        ax.set_yscale("log")
        ax.set_xlabel("Layer (1 is next to the input; the last is the output layer)")
        ax.set_ylabel("Gradient norm, first epoch's mean (log scale)")

    return draw(fmt, build, title="Depth: each layer's gradient in the first epoch")


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class ExperimentPlot:
    """How to read a kind's result and draw one plot of it."""

    result: type[BaseModel]
    draw: Callable[[Any, Format], bytes]


EXPERIMENT_PLOTS: dict[str, dict[str, ExperimentPlot]] = {
    "cross_validation": {"folds": ExperimentPlot(r.CrossValidationResult, folds)},
    "sweep": {"trials": ExperimentPlot(r.SweepResult, trials),
              "leaderboard": ExperimentPlot(r.SweepResult, leaderboard)},
    "bagging": {"members": ExperimentPlot(r.BaggingResult, members)},
    "boosting": {"rounds": ExperimentPlot(r.BoostingResult, rounds)},
    "bias_variance": {"decomposition": ExperimentPlot(r.BiasVarianceResult, decomposition)},
    "batch_size": {"sharpness": ExperimentPlot(r.BatchSizeResult, sharpness)},
    "optimizer_comparison": {"curves": ExperimentPlot(r.OptimizerComparisonResult,
                                                      optimizer_curves)},
    "depth": {"errors": ExperimentPlot(r.DepthResult, depth_errors),
              "gradients": ExperimentPlot(r.DepthResult, depth_gradients)},
}
