"""Every dataset id a request names, resolved for the caller's tenant before anything reads it.

Another tenant's dataset is answered exactly as a missing one: same status, same code, same
message (less the id). An experiment names datasets in its base and in the values its design
varies (a sweep's lists, bias-variance values); each value is applied to the base as the
planner would, so an id reached through any dotted path (``data``, ``data.source``,
``data.source.dataset``) is found without building a grid.

Validating each child's spec would not be enough: when every child overrides the source,
the base's own dataset is still read (aggregation scores against the base's targets), and
the children are planned only after the grid's size is known. Resolving here also names the
field the user wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from app import experiment_spec as e
from app import repository as repo
from app.models import Dataset
from app.training.experiments.plan import with_value
from app.validation import Problem, SpecRejected

Loc = tuple[str | int, ...]


def resolve(session: Session, tenant_id: str, dataset_id: str, loc: Loc) -> Dataset:
    """The tenant's dataset, or the one refusal used for missing and foreign ids alike."""
    ds = repo.get_dataset(session, tenant_id, dataset_id)
    if ds is None:
        raise SpecRejected([Problem(loc, f"no dataset '{dataset_id}' (upload it with POST "
                                         "/v1/datasets)")])
    return ds


def source_dataset(spec: dict[str, Any]) -> str | None:
    """The dataset id a job spec (as JSON) reads, if its source is an upload."""
    data = spec.get("data")
    source = data.get("source") if isinstance(data, dict) else None
    if isinstance(source, dict) and isinstance(source.get("dataset"), str):
        return str(source["dataset"])
    return None


def varied_values(exp: Any) -> Iterator[tuple[Loc, str, Any]]:
    """(where in the body, dotted path, value) for every free-form value a design applies."""
    if isinstance(exp, e.Sweep):
        for key, values in exp.parameters.items():
            if isinstance(values, list):
                for i, value in enumerate(values):
                    yield ("parameters", key, i), key, value
    elif isinstance(exp, e.BiasVariance):
        for i, value in enumerate(exp.values):
            yield ("values", i), exp.parameter, value


def references(exp: Any) -> Iterator[tuple[Loc, str]]:
    """(where in the body, dataset id) for every dataset an experiment could read."""
    # Only the source decides which dataset a child reads; applying values to it alone keeps
    # each copy tiny (a base may carry a long list, e.g. data.target_offset).
    base = {"data": {"source": exp.base.data.source.model_dump(mode="json")}}
    if (found := source_dataset(base)) is not None:
        yield ("base", "data", "source", "dataset"), found
    for loc, path, value in varied_values(exp):
        try:
            applied = with_value(base, path, value)
        except ValueError:
            continue  # not a path into the spec: planning refuses it with its own message
        if (found := source_dataset(applied)) is not None:
            yield loc, found


def resolve_experiment(session: Session, tenant_id: str, exp: Any) -> None:
    """Refuse the first dataset id the tenant does not own, before any planning reads data."""
    for loc, dataset_id in references(exp):
        resolve(session, tenant_id, dataset_id, loc)
