"""Jobs side by side: per-epoch curves aligned by epoch, summaries, and the spec paths
that differ. Read-only; every id goes through the tenant like any other read."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app import lifecycle_repository as store
from app.errors import Unprocessable
from app.services.jobs import get as get_job
from app.training.metric_names import epoch_metric_names
from app.training.results import Summary

MAX_JOBS = 10
MAX_METRICS = 8
DEFAULT_METRICS = ("train_loss", "val_loss")
# Every per-epoch metric any job can log, as ``split_name``.
KNOWN_METRICS = frozenset(epoch_metric_names("classification", True)
                          | epoch_metric_names("regression", True))


class ComparedJob(BaseModel):
    id: str
    name: str
    status: str
    task: str
    summary: Summary | None


class Curve(BaseModel):
    epochs: list[int] = Field(description="Every epoch any compared job logged this metric.")
    values: dict[str, list[float | None]] = Field(
        description="Job id -> its value at each of `epochs`; null where it has none "
                    "(stopped earlier, still running, or never logs this metric).")


class SpecDifference(BaseModel):
    path: str = Field(examples=["optimizer.lr"])
    values: dict[str, Any] = Field(description="Job id -> its value at this dotted path; "
                                   "a job whose spec lacks the path is left out.")


class Comparison(BaseModel):
    jobs: list[ComparedJob]
    curves: dict[str, Curve] = Field(description="`split_metric` -> aligned curve.")
    spec_differences: list[SpecDifference] = Field(
        description="Only the dotted paths whose values are not the same in every job.")


def _refuse(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", fields=[{"loc": field, "message": message}])


def parse_list(raw: str, field: str, cap: int) -> list[str]:
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if len(items) > cap:
        raise _refuse(field, f"at most {cap} (got {len(items)})")
    if len(set(items)) != len(items):
        raise _refuse(field, "an entry is repeated")
    return items


def parse_metrics(raw: str | None) -> list[str]:
    names = parse_list(raw, "metrics", MAX_METRICS) if raw else list(DEFAULT_METRICS)
    unknown = [name for name in names if name not in KNOWN_METRICS]
    if unknown:
        raise _refuse("metrics", f"unknown {unknown}; known: {sorted(KNOWN_METRICS)}")
    return names


def compare(session: Session, tenant_id: str, job_ids_raw: str,
            metrics_raw: str | None) -> Comparison:
    ids = parse_list(job_ids_raw, "jobs", MAX_JOBS)
    if len(ids) < 2:
        raise _refuse("jobs", "name at least two job ids, comma-separated")
    metrics = parse_metrics(metrics_raw)
    jobs = [get_job(session, tenant_id, job_id) for job_id in ids]  # 404 like any read
    return Comparison(
        jobs=[ComparedJob(id=j.id, name=j.name, status=j.status, task=j.task,
                          summary=Summary.model_validate(j.summary) if j.summary else None)
              for j in jobs],
        curves=aligned_curves(session, ids, metrics),
        spec_differences=spec_differences({j.id: j.spec for j in jobs}))


def aligned_curves(session: Session, job_ids: Sequence[str],
                   metrics: Sequence[str]) -> dict[str, Curve]:
    """One query for every point; at most jobs x max_epochs x metrics rows."""
    wanted = {tuple(m.split("_", 1)) for m in metrics}
    rows = store.metric_points(session, job_ids, {split for split, _ in wanted},
                               {name for _, name in wanted})
    points: dict[str, dict[str, dict[int, float]]] = {m: {} for m in metrics}
    for job_id, split, name, epoch, value in rows:
        if (split, name) in wanted:
            points[f"{split}_{name}"].setdefault(job_id, {})[epoch] = value
    curves = {}
    for metric, by_job in points.items():
        epochs = sorted({e for series in by_job.values() for e in series})
        curves[metric] = Curve(epochs=epochs, values={
            job_id: [by_job.get(job_id, {}).get(e) for e in epochs] for job_id in job_ids})
    return curves


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths to leaves; a list is one leaf (``model.hidden: [64, 64]``)."""
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def spec_differences(specs: dict[str, dict[str, Any]]) -> list[SpecDifference]:
    """The stored specs hold every default, so a path differs only where training does;
    ``name`` is a label, not training, and is left out."""
    flat = {job_id: {path: leaf for path, leaf in flatten(spec) if path != "name"}
            for job_id, spec in specs.items()}
    paths = sorted({path for leaves in flat.values() for path in leaves})
    differences = []
    for path in paths:
        values = {job_id: leaves[path] for job_id, leaves in flat.items() if path in leaves}
        if len(values) < len(flat) or len({repr(v) for v in values.values()}) > 1:
            differences.append(SpecDifference(path=path, values=values))
    return differences
