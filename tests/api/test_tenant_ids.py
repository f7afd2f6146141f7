"""Another tenant's id gets exactly the answer a missing id gets, on every route and in every
body field that can carry one: path ids on every route of the API, and dataset ids wherever a
request can name one (a job's source, every experiment kind's base, every free-form value a
design applies: sweep lists under any path, bias-variance values)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient

from app import experiment_spec as e
from app.clock import new_id
from tests.api.test_security import valid_body
from tests.conftest import tiny_spec

Body = dict[str, Any]
CSV = b"a,b,label\n" + b"".join(f"{i},{i % 7},{i % 2}\n".encode() for i in range(60))

# The least each kind needs besides its base; a new kind must be added here (checked below).
MINIMAL: dict[str, Body] = {
    "cross_validation": {},
    "sweep": {"parameters": {"optimizer.lr": [0.01]}},
    "bagging": {},
    "boosting": {},
    "bias_variance": {"values": [[4]]},
    "batch_size": {"batch_sizes": [8, 16]},
    "optimizer_comparison": {"optimizers": [{"kind": "sgd"}, {"kind": "adam"}]},
    "depth": {"depths": [1, 2]},
}
# Dotted paths through which a value can set the data source.
SOURCE_PATHS: dict[str, Callable[[str], Any]] = {
    "data.source": lambda ds: {"dataset": ds},
    "data": lambda ds: {"source": {"dataset": ds}},
    "data.source.dataset": lambda ds: ds,
}
MOONS = {"synthetic": "moons", "n_samples": 200}


def experiment_models() -> list[Any]:
    return list(get_args(get_args(e.Experiment)[0]))


def kind_of(model: Any) -> str:
    return str(get_args(model.model_fields["kind"].annotation)[0])


def free_form_fields() -> set[tuple[str, str]]:
    """(kind, field) for every design field whose values are arbitrary JSON: such a value
    can be a dataset reference."""
    return {(kind_of(m), name) for m in experiment_models()
            for name, f in m.model_fields.items() if name != "base" and "Any" in str(f.annotation)}


def with_base_source(kind: str, ds: str) -> Body:
    return {"kind": kind, **MINIMAL[kind], "base": tiny_spec(data__source={"dataset": ds})}


def sweep_values(path: str, method: str, ds: str) -> Body:
    body: Body = {"kind": "sweep", "method": method, "base": tiny_spec(),
                  "parameters": {path: [SOURCE_PATHS[path](ds)]}}
    if method == "random":
        body["trials"] = 2
    return body


def bias_variance_values(path: str, ds: str) -> Body:
    return {"kind": "bias_variance", "base": tiny_spec(), "parameter": path,
            "values": [SOURCE_PATHS[path](ds)]}


def overridden_base(kind: str, ds: str) -> Body:
    """The base names the dataset but every child replaces the source: the base is still
    resolved (the aggregation reads the base's targets)."""
    design: Body = ({"parameters": {"data.source": [MOONS]}} if kind == "sweep"
                    else {"parameter": "data.source", "values": [MOONS]})
    return {"kind": kind, **design, "base": tiny_spec(data__source={"dataset": ds})}


def second_value(ds: str) -> Body:
    """A foreign id behind a valid first value (every value is resolved, not only the first)."""
    return {"kind": "sweep", "base": tiny_spec(), "trials": 1,
            "parameters": {"data.source": [MOONS, {"dataset": ds}]}}


EXP = "/v1/experiments"
BODIES: dict[str, tuple[str, Callable[[str], Body]]] = {
    "job data.source": ("/v1/jobs", lambda ds: tiny_spec(data__source={"dataset": ds})),
    **{f"{k} base": (EXP, partial(with_base_source, k)) for k in MINIMAL},
    **{f"sweep {m} {p}": (EXP, partial(sweep_values, p, m))
       for p in SOURCE_PATHS for m in ("grid", "random")},
    **{f"bias_variance {p}": (EXP, partial(bias_variance_values, p)) for p in SOURCE_PATHS},
    "sweep second value (trials 1)": (EXP, second_value),
    **{f"{k} base overridden by every child": (EXP, partial(overridden_base, k))
       for k in ("sweep", "bias_variance")},
}
COVERED_FREE_FORM = {("sweep", "parameters"), ("bias_variance", "values")}


def normalized(response: Any, resource_id: str) -> tuple[int, str]:
    return response.status_code, re.sub(re.escape(resource_id), "<id>", response.text)


@pytest.fixture()
def bobs(other_client: TestClient) -> dict[str, str]:
    """Tenant bob's real resources: a dataset, a job, an experiment."""
    ds = other_client.post("/v1/datasets", files={"file": ("d.csv", CSV)},
                           data={"target": "label"})
    job = other_client.post("/v1/jobs", json=tiny_spec())
    exp = other_client.post("/v1/experiments", json={"kind": "bagging", "n_models": 2,
                                                     "base": tiny_spec()})
    assert (ds.status_code, job.status_code, exp.status_code) == (201, 201, 201)
    return {"dataset_id": ds.json()["id"], "job_id": job.json()["id"],
            "experiment_id": exp.json()["id"]}


def test_every_kind_and_every_free_form_field_is_covered() -> None:
    assert set(MINIMAL) == {kind_of(m) for m in experiment_models()}
    assert free_form_fields() == COVERED_FREE_FORM


@pytest.mark.parametrize("where", list(BODIES))
def test_a_foreign_dataset_id_in_a_body_is_answered_as_a_missing_one(
        where: str, client: TestClient, bobs: dict[str, str]) -> None:
    path, build = BODIES[where]
    missing = new_id("ds")
    foreign = client.post(path, json=build(bobs["dataset_id"]))
    absent = client.post(path, json=build(missing))
    assert normalized(foreign, bobs["dataset_id"]) == normalized(absent, missing)
    assert foreign.status_code == 422, foreign.text
    error = foreign.json()["error"]
    assert "no dataset" in error["message"] and error["fields"][0]["loc"]
    assert client.get("/v1/experiments").json()["items"] == []
    assert client.get("/v1/jobs").json()["items"] == []


def test_own_dataset_in_every_kind_base_is_accepted(client: TestClient) -> None:
    """The same bodies with the caller's own dataset pass the resolver (so the refusals above
    are about ownership, not about the placement)."""
    ds = client.post("/v1/datasets", files={"file": ("d.csv", CSV)}, data={"target": "label"})
    own = ds.json()["id"]
    for kind in MINIMAL:
        r = client.post("/v1/experiments", json=with_base_source(kind, own))
        assert "no dataset" not in r.text, (kind, r.text)
    r = client.post("/v1/experiments", json=bias_variance_values("data.source", own))
    assert r.status_code == 201, r.text


def path_routes(client: TestClient) -> list[tuple[str, str]]:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return [(method, path) for path, ops in paths.items() if "{" in path for method in ops]


def test_every_route_with_an_id_answers_a_foreign_id_as_a_missing_one(
        client: TestClient, bobs: dict[str, str]) -> None:
    routes = path_routes(client)
    assert len(routes) >= 9
    for method, path in routes:
        name = re.findall(r"\{(\w+)\}", path)[0]
        prefix = {"job_id": "job", "experiment_id": "exp", "dataset_id": "ds"}[name]
        missing = new_id(prefix)

        def call(resource_id: str, path: str = path, name: str = name,
                 method: str = method) -> Any:
            url = (path.replace("{" + name + "}", resource_id).replace("{ref}", "latest")
                   .replace("{name}", "loss").replace("{fmt}", "svg"))
            return client.request(method.upper(), url, json=valid_body(method, path))

        foreign = call(bobs[name])
        assert normalized(foreign, bobs[name]) == normalized(call(missing), missing), path
        assert foreign.status_code == 404, (path, foreign.text)


def test_a_foreign_experiment_id_filter_lists_nothing(client: TestClient,
                                                       bobs: dict[str, str]) -> None:
    r = client.get("/v1/jobs", params={"experiment_id": bobs["experiment_id"]})
    assert r.status_code == 200 and r.json()["items"] == []
