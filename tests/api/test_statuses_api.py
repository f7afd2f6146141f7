"""Statuses and failure reasons are enums end to end: OpenAPI lists them, a filter outside
them is a 422 naming `status`, and rows and JSON keep the plain strings."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.statuses import ExperimentStatus, FailureReason, JobStatus
from tests.conftest import tiny_spec


def schema_of(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A property's schema with its $ref / anyOf-with-null resolved."""
    for option in node.get("anyOf", [node]):
        if "$ref" in option:
            return dict(doc["components"]["schemas"][option["$ref"].rsplit("/", 1)[1]])
        if option.get("type") != "null":
            return dict(option)
    raise AssertionError(node)


def query_param(doc: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    [param] = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name]
    return schema_of(doc, param["schema"])


def test_openapi_lists_every_status_and_reason(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    jobs = [m.value for m in JobStatus]
    exps = [m.value for m in ExperimentStatus]
    assert query_param(doc, "/v1/jobs", "status")["enum"] == jobs
    assert query_param(doc, "/v1/experiments", "status")["enum"] == exps
    schemas = doc["components"]["schemas"]
    job_out = next(v for k, v in schemas.items() if k.startswith("JobOut"))
    assert schema_of(doc, job_out["properties"]["status"])["enum"] == jobs
    error = next(v for k, v in schemas.items() if k.startswith("JobError"))
    assert schema_of(doc, error["properties"]["reason"])["enum"] == [
        m.value for m in FailureReason]
    summary = schema_of(doc, job_out["properties"]["summary"])
    assert {"epochs_completed", "test", "predictions"} <= set(summary["properties"])


def test_a_status_filter_outside_the_enum_is_a_422_naming_it(client: TestClient) -> None:
    for path in ("/v1/jobs", "/v1/experiments"):
        r = client.get(path, params={"status": "finished"})
        assert r.status_code == 422, r.text
        body = r.json()["error"]
        assert body["code"] and any("status" in str(f) for f in body["fields"]), body


def test_filters_match_and_rows_hold_plain_strings(client: TestClient) -> None:
    from app.db import session_scope

    kept = client.post("/v1/jobs", json=tiny_spec()).json()
    gone = client.post("/v1/jobs", json=tiny_spec()).json()
    assert client.post(f"/v1/jobs/{gone['id']}/cancel").status_code < 300
    listed = client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in listed] == [gone["id"]] and listed[0]["status"] == "cancelled"
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert [j["id"] for j in queued] == [kept["id"]]
    with session_scope() as session:  # what the column holds: the value, not the name
        raw = {r[0]: r[1] for r in session.execute(sa.text("SELECT id, status FROM jobs"))}
    assert raw == {kept["id"]: "queued", gone["id"]: "cancelled"}
    assert all(type(v) is str for v in raw.values())
