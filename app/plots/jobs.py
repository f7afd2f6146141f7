"""A job's plots: learning curves (loss, the main metric, the learning rate, the gradient
norm), training against validation, the best epoch marked; the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.plots.render import Format, draw, series
from app.training.metric_names import metric_mode

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Curve = list[tuple[int, float]]  # (epoch, value), in epoch order
EPOCH_AXIS = "Epoch (one pass over the training data)"
SPLIT_WORDS = {"train": "training data", "val": "validation data"}


@dataclass(frozen=True)
class JobCurves:
    """What a job's plots read: its logged curves and, once it ended, its summary's facts."""

    name: str
    task: str
    curves: dict[str, Curve]  # "split_name" (val_loss) -> points
    monitor: str  # what the best epoch is judged by
    best_epoch: int | None  # the summary's, or the best so far while it trains
    confusion_matrix: list[list[int]] | None = None

    def best_so_far(self) -> int | None:
        """The best epoch of the monitored curve (the summary's when the job ended)."""
        if self.best_epoch is not None:
            return self.best_epoch
        points = [p for p in self.curves.get(self.monitor, []) if p[1] == p[1]]  # not NaN
        if not points:
            return None
        pick = max if metric_mode(self.monitor, "auto") == "max" else min
        return pick(points, key=lambda p: p[1])[0]


def main_metric(task: str) -> str:
    return {"classification": "accuracy", "reconstruction": "mse"}.get(task, "rmse")


METRIC_WORDS = {
    "loss": "Loss (lower is better)",
    "accuracy": "Accuracy (fraction of rows predicted right)",
    "rmse": "RMSE: typical error, in the target's units",
    "mse": "MSE per standardized input feature",
    "lr": "Learning rate (the step size)",
    "grad_norm": "Gradient norm (size of the last step's gradient)",
}


def _curves(ax: Axes, data: JobCurves, metric: str) -> None:
    for split in ("train", "val"):
        points = data.curves.get(f"{split}_{metric}")
        if points:
            epochs, values = zip(*points, strict=True)
            line = ax.plot(epochs, values, marker="o", markersize=3,
                           linestyle="-" if split == "train" else "--",
                           label=f"on the {SPLIT_WORDS[split]}")
            series(line, f"{split}_{metric}")
    best = data.best_so_far()
    if best is not None and metric in ("loss", main_metric(data.task)):
        marker = ax.axvline(best, color="grey", linestyle=":",
                            label=f"best epoch ({best}, by {data.monitor})")
        marker.set_gid("marker-best-epoch")
    ax.set_xlabel(EPOCH_AXIS)
    ax.set_ylabel(METRIC_WORDS[metric])


def _confusion(ax: Axes, data: JobCurves) -> None:
    matrix = data.confusion_matrix or []
    image = ax.imshow(matrix, cmap="Blues")
    series(image, "confusion_matrix")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, label="Test rows")


def curve_plot(metric: str, title: str) -> Callable[[JobCurves, Format], bytes]:
    def plot(data: JobCurves, fmt: Format) -> bytes:
        return draw(fmt, lambda axes: _curves(axes[0], data, metric),
                    title=f"{title}: {data.name}")

    return plot


def confusion_plot(data: JobCurves, fmt: Format) -> bytes:
    return draw(fmt, lambda axes: _confusion(axes[0], data),
                title=f"Confusion matrix on the test rows: {data.name}")


def metric_plot(data: JobCurves, fmt: Format) -> bytes:
    metric = main_metric(data.task)
    what = {"accuracy": "Accuracy", "mse": "Reconstruction error (MSE)"}.get(
        metric, "Prediction error (RMSE)")
    return curve_plot(metric, f"{what} per epoch")(data, fmt)


JobPlot = Callable[[JobCurves, Format], bytes]
CURVE_PLOTS: dict[str, JobPlot] = {
    "loss": curve_plot("loss", "Loss per epoch, training against validation"),
    "metric": metric_plot,
    "lr": curve_plot("lr", "Learning rate per epoch"),
    "grad_norm": curve_plot("grad_norm", "Gradient norm at the end of each epoch"),
}


def plot_names(task: str) -> list[str]:
    """The plots a job of this task has (the confusion matrix: classification only)."""
    return [*CURVE_PLOTS, *(["confusion_matrix"] if task == "classification" else [])]


# The metric names each curve plot reads (the service fetches only these).
CURVE_METRICS = {"loss": ("loss",), "metric": ("accuracy", "rmse", "mse"), "lr": ("lr",),
                 "grad_norm": ("grad_norm",)}
