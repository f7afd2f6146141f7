"""Plot verbs: which plots a job or an experiment has, and one drawn as SVG or PNG.

The rows are read through the job and experiment services (another tenant's id is a 404
like a missing one); ``app/plots`` draws. A plot of something that has nothing to show yet
is a 409 that says what it waits for (no metrics before the first epoch, no confusion
matrix before the job succeeds, no experiment plot before its result), never an empty
picture a reader could take for a result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app import repository as repo
from app import spec
from app.errors import Conflict, NotFound
from app.models import Experiment, Job
from app.plots.experiments import EXPERIMENT_PLOTS
from app.plots.jobs import CURVE_METRICS, CURVE_PLOTS, JobCurves, confusion_plot, plot_names
from app.plots.render import Format
from app.services import experiments as experiment_service
from app.services import jobs as job_service
from app.training.metric_names import default_monitor
from app.training.results import Summary

SPLITS = ("train", "val")


@dataclass(frozen=True)
class PlotLink:
    name: str
    svg: str
    png: str


def _links(base: str, names: Sequence[str]) -> list[PlotLink]:
    return [PlotLink(n, f"{base}/plots/{n}.svg", f"{base}/plots/{n}.png") for n in names]


def _unknown(what: str, name: str, names: Sequence[str]) -> NotFound:
    return NotFound(f"{what} has no plot '{name}'; its plots are: {', '.join(names)}",
                    fields=[{"loc": "name", "message": f"one of {', '.join(names)}"}])


# ---------------------------------------------------------------------- jobs


def job_plots(session: Session, tenant_id: str, job_id: str) -> list[PlotLink]:
    job = job_service.get(session, tenant_id, job_id)
    return _links(f"/v1/jobs/{job.id}", plot_names(job.task))


def job_plot(session: Session, tenant_id: str, job_id: str, name: str, fmt: Format) -> bytes:
    job = job_service.get(session, tenant_id, job_id)
    names = plot_names(job.task)
    if name not in names:
        raise _unknown(f"job '{job_id}'", name, names)
    summary = Summary.model_validate(job.summary) if job.summary else None
    if name == "confusion_matrix":
        if summary is None or summary.confusion_matrix is None:
            raise Conflict(f"job '{job_id}' has no confusion matrix yet (status {job.status}): "
                           "it is computed on the test rows when the job succeeds")
        return confusion_plot(job_curves(job, summary, {}, summary.monitor), fmt)
    stopping = spec.JobSpec.model_validate(job.spec).regularization.early_stopping
    wanted = {*CURVE_METRICS[name], "loss"} | ({stopping.monitor.split("_", 1)[1]}
                                              if stopping else set())
    curves = _curves(session, job, sorted(wanted))
    if not any(key.endswith(CURVE_METRICS[name]) for key in curves):
        raise Conflict(f"job '{job_id}' has no metrics yet (status {job.status}): its curves "
                       "start after its first epoch")
    monitor = (summary.monitor if summary else stopping.monitor if stopping
               else default_monitor(has_val=any(k.startswith("val_") for k in curves)))
    return CURVE_PLOTS[name](job_curves(job, summary, curves, monitor), fmt)


def job_curves(job: Job, summary: Summary | None, curves: dict[str, list[tuple[int, float]]],
               monitor: str) -> JobCurves:
    """The best epoch is the summary's once the job ended; else the best so far by
    ``monitor`` (what the run itself judges by: early stopping's, or the default)."""
    return JobCurves(name=job.name, task=job.task, curves=curves, monitor=monitor,
                     best_epoch=summary.best_epoch if summary else None,
                     confusion_matrix=summary.confusion_matrix if summary else None)


def _curves(session: Session, job: Job,
            metrics: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``split_name`` -> (epoch, value) in epoch order. One row per (epoch, split, name)
    (upserted), so the job's epochs bound the rows read."""
    limit = max(job.total_epochs, 1) * len(metrics) * len(SPLITS)
    rows = repo.metrics_page(session, job.id, after=0, limit=limit, names=metrics,
                             splits=SPLITS)
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in sorted(rows, key=lambda r: r.epoch):
        curves.setdefault(f"{row.split}_{row.name}", []).append((row.epoch, row.value))
    return curves


# ---------------------------------------------------------------- experiments


def experiment_plots(session: Session, tenant_id: str, experiment_id: str) -> list[PlotLink]:
    exp = experiment_service.get(session, tenant_id, experiment_id)
    return _links(f"/v1/experiments/{exp.id}", list(EXPERIMENT_PLOTS[exp.kind]))


def experiment_plot(session: Session, tenant_id: str, experiment_id: str, name: str,
                    fmt: Format) -> bytes:
    exp: Experiment = experiment_service.get(session, tenant_id, experiment_id)
    plots = EXPERIMENT_PLOTS[exp.kind]
    if name not in plots:
        raise _unknown(f"{exp.kind} experiment '{experiment_id}'", name, list(plots))
    if exp.result is None:
        raise Conflict(f"experiment '{experiment_id}' has no result yet (status {exp.status})"
                       ": its plots are drawn from the result when it ends")
    plot = plots[name]
    return plot.draw(plot.result.model_validate(exp.result), fmt)
