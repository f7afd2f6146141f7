"""Schemathesis against the app's own OpenAPI schema, in-process over ASGI.

* ``test_operation``: every operation, default checks (no 5xx, status codes, content
  types, headers and bodies all as documented, valid data accepted, invalid data
  refused, auth enforced), authenticated as tenant 'alice';
* ``test_stateful``: the same checks over chains of calls that follow OpenAPI links
  (POST /v1/jobs -> get, cancel, metrics, checkpoints of the job it created);
* ``test_unauthenticated_calls_are_refused``: every /v1 operation without a key, with an
  unknown key or another scheme -> 401 ``{"error": {"code": "unauthorized", ...}}``;
* regressions for what Schemathesis found (500s, a wrong Allow header, a bad loc).

Each test gets a fresh SQLite database (``app_home``); the app object is built once
at import (schemathesis needs the schema at collection) and reads the database
lazily, so it serves whichever database the fixture just set up.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.generation.stateful import run_state_machine_as_test

from app.main import create_app

APP = create_app()
KEY = "ty_schemathesis_alice_0123456789abcdef"  # installed into every fresh database

# Checks that need the data, not just the schema, refuse some schema-valid requests with
# a 422 naming the problem: a spec's loss against the data's task, cross-field rules
# (nesterov needs momentum) and the caps (POST /v1/jobs, /v1/experiments), a file's
# content (POST /v1/datasets), a cursor the API never issued (GET /v1/jobs,
# /v1/experiments, /v1/datasets, an experiment's jobs), the ids and metric names compared
# (GET /v1/compare). positive_data_acceptance keeps its defaults everywhere else. Spec
# numbers are strict (a JSON boolean or string is not a number), so
# negative_data_rejection runs on spec bodies too.
ACCEPTS = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
DATA_DEPENDENT = ["POST /v1/jobs", "POST /v1/experiments", "POST /v1/datasets",
                  "GET /v1/jobs", "GET /v1/experiments", "GET /v1/datasets",
                  "GET /v1/experiments/{experiment_id}/jobs",
                  "GET /v1/compare"]  # its ids must exist, its metric names be logged ones
# Time (2 shared cores): the coverage phase enumerates every field's boundaries. A job
# spec gives ~700 positive cases and ~1300 negative ones (10-25 s more); an experiment, a
# union of designs each holding a job spec, ~5000 positive ones (> 30 s). Negative
# fuzzing and tests/api/test_spec_properties.py cover the refusals of spec bodies.
CONFIG = schemathesis.Config.from_dict({
    "operations": [
        {"include-name": DATA_DEPENDENT,
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTS, "422"]}}},
        {"include-name": "POST /v1/jobs",
         "phases": {"coverage": {"generation": {"mode": "positive"}}}},
        {"include-name": "POST /v1/experiments", "phases": {"coverage": {"enabled": False}}},
    ],
})

schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


def _op_id(path: str, method: str) -> str:
    return str(APP.openapi()["paths"][path][method]["operationId"])


def linked_schema() -> dict[str, Any]:
    """The served schema plus OpenAPI links from each created resource to its verbs."""
    raw = copy.deepcopy(APP.openapi())
    # an event stream of a job no worker runs never ends: the stream tests cover them
    raw["paths"] = paths = {path: ops for path, ops in raw["paths"].items()
                            if path.startswith("/v1/jobs") and not path.endswith("/events")}
    job_id = {"job_id": "$response.body#/id"}
    job_links = {
        "GetJob": {"operationId": _op_id("/v1/jobs/{job_id}", "get"), "parameters": job_id},
        "CancelJob": {"operationId": _op_id("/v1/jobs/{job_id}/cancel", "post"),
                      "parameters": job_id},
        "JobMetrics": {"operationId": _op_id("/v1/jobs/{job_id}/metrics", "get"),
                       "parameters": job_id},
        "JobCheckpoints": {"operationId": _op_id("/v1/jobs/{job_id}/checkpoints", "get"),
                           "parameters": job_id},
    }
    for status in ("201", "200"):
        paths["/v1/jobs"]["post"]["responses"][status]["links"] = copy.deepcopy(job_links)
    cancelled = {"GetJob": job_links["GetJob"], "JobMetrics": job_links["JobMetrics"]}
    paths["/v1/jobs/{job_id}/cancel"]["post"]["responses"]["200"]["links"] = cancelled
    return raw


stateful_schema = schemathesis.openapi.from_dict(linked_schema(), config=CONFIG)
stateful_schema.app = APP


class Bearer:
    """Tenant alice's key on every generated request."""

    def get(self, case: Any, ctx: Any) -> str:
        return KEY

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


schema.auth()(Bearer)
stateful_schema.auth()(Bearer)


def install_key(tenant: str, key: str) -> None:
    """A known key (keys.create draws a random one; the schema's auth is set at import)."""
    from app import repository as repo
    from app.clock import utcnow
    from app.db import session_scope
    from app.services.keys import hash_key

    with session_scope() as session:
        repo.ensure_tenant(session, tenant, utcnow())
        repo.add_key(session, key_id=f"key_{tenant}_st", tenant_id=tenant,
                     key_hash=hash_key(key), now=utcnow())


@pytest.fixture(autouse=True)
def fresh_db(app_home: Path) -> None:
    install_key("alice", KEY)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_operation(case: Any) -> None:
    case.call_and_validate()


def test_schema_declares_links_and_errors() -> None:
    """The stateful test has links to follow, and every /v1 error status is documented."""
    links = linked_schema()["paths"]["/v1/jobs"]["post"]["responses"]["201"]["links"]
    assert {"GetJob", "CancelJob", "JobMetrics", "JobCheckpoints"} <= set(links)
    for path, operations in APP.openapi()["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, op in operations.items():
            assert op["security"] == [{"HTTPBearer": []}], (method, path)
            for status in ("401", "413", "422", "500", "503"):
                body = op["responses"][status]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def wipe_state() -> None:
    """Every row but tenants and keys: each scenario starts from an empty API."""
    from app.db import session_scope
    from app.models import Base

    with session_scope() as session:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name not in ("tenants", "api_keys"):
                session.execute(table.delete())


SEEN: Counter[tuple[str, int]] = Counter()


class JobsWorkflow(stateful_schema.as_state_machine()):
    def setup(self) -> None:
        # Replays must see the same responses (Hypothesis needs it; Idempotency-Keys repeat).
        wipe_state()

    def after_call(self, response: Any, case: Any) -> None:
        super().after_call(response, case)
        SEEN[(case.operation.path, response.status_code)] += 1


def test_stateful() -> None:
    SEEN.clear()
    run_state_machine_as_test(JobsWorkflow, settings=settings(
        max_examples=30, stateful_step_count=8, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
    # The links were followed: some call on a created job's id succeeded.
    followed = sum(n for (path, status), n in SEEN.items()
                   if path.startswith("/v1/jobs/{job_id}") and status < 300)
    assert followed > 0, SEEN


def _v1_operations() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, operations in APP.openapi()["paths"].items()
            if path.startswith("/v1") for method in operations]


@pytest.mark.parametrize(("method", "path"), _v1_operations())
@pytest.mark.parametrize("authorization", [None, "Bearer ty_not_a_key", "Basic YWxpY2U6eA=="])
def test_unauthenticated_calls_are_refused(method: str, path: str,
                                           authorization: str | None) -> None:
    url = re.sub(r"\{[^}]+\}", "x_missing", path.replace("{ref}", "latest"))
    headers = {} if authorization is None else {"Authorization": authorization}
    with TestClient(APP) as client:
        r = client.request(method, url, headers=headers)
    assert r.status_code == 401, (method, url, r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "unauthorized" and error["message"] and error["fields"] == []


# ------------------------------------------------ what Schemathesis found (regressions)


@pytest.mark.parametrize("body", [
    {"schedule": [None, None]}, {"model": "mlp"}, {"loss": 5}, {"optimizer": [1]},
    {"data": {"source": [None, None]}}, {"data": {"source": "moons"}},
])
def test_a_component_that_is_not_an_object_is_a_422(client: TestClient,
                                                    body: dict[str, Any]) -> None:
    r = client.post("/v1/jobs", json=body)  # was 500: the discriminators assumed objects
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["loc"] == next(iter(body)) + (
        ".source" if "data" in body else "")


def test_a_bad_kind_is_reported_at_the_kind(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"optimizer": {"kind": "adamax"}})
    assert r.status_code == 422  # the loc was "optimizer.pick()" (the discriminator's name)
    assert r.json()["error"]["fields"][0]["loc"] == "optimizer.kind"


def test_an_empty_idempotency_key_is_no_key(client: TestClient) -> None:
    # was 500 on the second request: '' was stored, never replayed, and the unique
    # (tenant, key) violation retried itself until RecursionError
    from tests.conftest import tiny_spec

    ids = {client.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": ""}).json()["id"]
           for _ in range(3)}
    assert len(ids) == 3
    csv = b"a,y\n1,0\n2,1\n3,0\n4,1\n"
    for _ in range(2):
        r = client.post("/v1/datasets", files={"file": ("d.csv", csv)}, data={"target": "y"},
                        headers={"Idempotency-Key": ""})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(("content", "status"), [
    (b"\r0", 422),  # was 500: csv.Error "new-line character seen in unquoted field"
    (b"a,y\r1,0\r2,1\r3,0\r4,1\r", 201),  # CR-only line endings parse
    (b"a,y\n" + b"7" * 200_000 + b",1\n2,0\n", 422),  # was 500: field over the csv limit
])
def test_unreadable_csv_is_a_422(client: TestClient, content: bytes, status: int) -> None:
    r = client.post("/v1/datasets", files={"file": ("d.csv", content)}, data={"target": "y"})
    assert r.status_code == status, r.text
    if status == 422:  # b"\r0" streams to a header ['0'] without the target column
        assert r.json()["error"]["fields"][0]["loc"] in ("file", "target")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("OPTIONS", "/v1/jobs", "GET, HEAD, POST"),  # was "POST": Starlette names one route
    ("PUT", "/v1/jobs/job_x", "DELETE, GET, HEAD, PATCH"),
    ("GET", "/v1/jobs/job_x/cancel", "POST"),
])
def test_405_allow_names_every_method_of_the_path(client: TestClient, method: str, path: str,
                                                  allow: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["Allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"
