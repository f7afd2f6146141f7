"""Sizes and small 500s: the key is checked before any body byte is read, each route's body
cap holds with and without Content-Length, odd path and query values on every route get a
4xx in the one error shape, and even a bug answers in that shape."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.config import Limits
from tests.api.conftest import make_key, reset_caches


def call(app: FastAPI, method: str, path: str, headers: dict[str, str],
         chunks: Iterator[bytes]) -> tuple[int, dict[str, Any], int]:
    """One raw ASGI request: (status, JSON body, body bytes the app pulled from receive)."""
    pulled, sent = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("test", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def endless(chunk: int = 64 * 1024) -> Iterator[bytes]:
    while True:
        yield b" " * chunk


@pytest.fixture()
def app(app_home: Path) -> FastAPI:
    from app.main import create_app

    return create_app()


@pytest.mark.parametrize("authorization", [None, "Bearer ty_wrong"])
def test_no_body_byte_is_read_before_the_key_is_checked(app: FastAPI,
                                                        authorization: str | None) -> None:
    headers = {"content-type": "application/json", "content-length": str(9 * 1024 * 1024)}
    if authorization:
        headers["authorization"] = authorization
    status, body, pulled = call(app, "POST", "/v1/jobs", headers, endless())
    assert (status, body["error"]["code"], pulled) == (401, "unauthorized", 0)


def test_a_declared_length_over_the_json_cap_is_refused_unread(app: FastAPI) -> None:
    cap = Limits().max_json_bytes
    headers = {"authorization": f"Bearer {make_key('alice')}",
               "content-type": "application/json", "content-length": str(cap + 1)}
    status, body, pulled = call(app, "POST", "/v1/jobs", headers, endless())
    assert (status, pulled) == (413, 0)
    assert body["error"]["code"] == "too_large" and "max_json_bytes" in body["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/experiments"])
def test_a_chunked_body_over_the_cap_is_413_and_reading_stops(app: FastAPI, path: str) -> None:
    cap = Limits().max_json_bytes
    headers = {"authorization": f"Bearer {make_key('alice')}",
               "content-type": "application/json"}  # no Content-Length: chunked
    status, body, pulled = call(app, "POST", path, headers, endless())
    assert status == 413, body  # was 400: FastAPI turned the error in receive into one
    assert body["error"]["code"] == "too_large" and "max_json_bytes" in body["error"]["message"]
    assert cap < pulled <= cap + 64 * 1024


def test_a_chunked_upload_over_its_cap_is_413(app: FastAPI,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    limits = get_settings().limits
    monkeypatch.setattr(limits, "max_dataset_bytes", 1000)
    cap = limits.max_dataset_bytes + limits.max_form_fields * limits.max_form_field_bytes
    head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n'
            b"Content-Type: text/csv\r\n\r\na,y\n")
    headers = {"authorization": f"Bearer {make_key('alice')}",
               "content-type": "multipart/form-data; boundary=b"}
    status, body, pulled = call(app, "POST", "/v1/datasets", headers,
                                iter([head, *itertools.islice(endless(), 10_000)]))
    assert status == 413, body
    assert "max_dataset_bytes" in body["error"]["message"]
    assert cap < pulled <= cap + 128 * 1024


def test_uploads_have_their_own_cap(app_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV larger than the JSON cap uploads; a JSON body of that size does not."""
    monkeypatch.setenv("TRAINYARD_LIMIT_MAX_JSON_BYTES", "4096")
    reset_caches()
    from app.main import create_app

    csv = b"a,b,y\n" + b"".join(f"{i},{i * 3 % 11},{i % 2}\n".encode() for i in range(1000))
    assert len(csv) > 4096
    with TestClient(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {make_key('alice')}"
        r = client.post("/v1/datasets", files={"file": ("d.csv", csv)}, data={"target": "y"})
        assert r.status_code == 201, r.text
        r = client.post("/v1/jobs", json={"name": "x" * 5000})
        assert r.status_code == 413 and "max_json_bytes" in r.json()["error"]["message"]


def test_a_large_hand_written_spec_fits_the_json_cap(client: TestClient) -> None:
    """Every list a client writes at its cap (hidden, milestones, class weights) plus a
    per-row list for 300,000 rows at full float precision fits; only longer per-row
    lists (experiments build those internally, never over HTTP) need a larger cap."""
    longest = 1.2345678901234567e-300
    weight = 9.876543210987654e-06  # the longest a class weight (>= 1e-6) can be written
    spec = {"name": "n" * 200,
            "data": {"source": {"builtin": "digits"},
                     "rows": {"kind": "bootstrap", "weights": [longest] * 300_000}},
            "model": {"kind": "mlp", "hidden": [8] * 256},
            "loss": {"kind": "cross_entropy", "class_weights": [weight] * 10_000},
            "schedule": {"kind": "multistep", "milestones": list(range(1, 10_001))}}
    size = len(json.dumps(spec).encode())
    assert size < Limits().max_json_bytes, size
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text  # read and checked against the data, not a 413
    assert r.json()["error"]["code"] == "validation_error"


# ------------------------------------------------------------ odd values, every route

ODD_IDS = ["9" * 5000, "x" * 2000, "%00", "%E2%98%83", "..%2F..", "-1", " "]


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


ODD_QUERY = ["9" * 5000, "-1", "1e309", "nan", "%00", "", cursor_of("2024-01-01T00:00:00|job_x"),
             cursor_of("9999-12-31T23:59:59-23:59|x"), cursor_of("not a date|x"),
             cursor_of("0001-01-01T00:00:00+14:00|x"), cursor_of("x" * 200), "%%%", "true"]


def odd_requests(app: FastAPI) -> Iterator[tuple[str, str]]:
    for path, operations in app.openapi()["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, op in operations.items():
            for odd in ODD_IDS:
                yield method.upper(), re.sub(r"\{[^}]+\}", odd, path)
            real = re.sub(r"\{[^}]+\}", "x_missing", path).replace("x_missing", "latest", 1) \
                if path.endswith("{ref}") else re.sub(r"\{[^}]+\}", "x_missing", path)
            for param in op.get("parameters", []):
                if param["in"] == "query":
                    for odd in ODD_QUERY:
                        yield method.upper(), f"{real}?{param['name']}={odd}"


def assert_no_5xx(client: TestClient) -> None:
    from app.main import create_app

    failures, seen = [], 0
    for method, url in odd_requests(create_app()):
        r = client.request(method, url)
        seen += 1
        shaped = (r.headers.get("content-type") == "application/json"
                  and set(r.json().get("error", {})) == {"code", "message", "fields"})
        if r.status_code >= 500 or (r.status_code >= 400 and not shaped):
            failures.append((method, url[:80], r.status_code, r.text[:200]))
    assert seen > 300
    assert failures == []


def test_odd_path_and_query_values_never_500(client: TestClient) -> None:
    assert_no_5xx(client)


@pytest.fixture()
def pg_client(postgres_url: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The same app on Postgres (a naive cursor datetime failed there, not on SQLite)."""
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", postgres_url)
    reset_caches()
    from app.main import create_app
    from app.services.admin import upgrade_schema

    upgrade_schema()
    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {make_key('pg-odd')}"
        yield c
    from app.db import get_engine

    get_engine().dispose()
    reset_caches()


def test_odd_path_and_query_values_never_500_on_postgres(pg_client: TestClient) -> None:
    assert_no_5xx(pg_client)


def test_a_bug_still_answers_in_the_error_shape(app: FastAPI,
                                                caplog: pytest.LogCaptureFixture) -> None:
    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/boom", headers={"Authorization": f"Bearer {make_key('alice')}"})
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal error; it has "
                                  "been logged", "fields": []}}
    assert any("a bug" in (rec.exc_text or str(rec.exc_info)) for rec in caplog.records)


# ------------------------------------------------------------ slim list views


def test_list_items_leave_out_bodies_that_grow(client: TestClient) -> None:
    """A job's spec can hold per-row lists and its summary per-row predictions; an
    experiment's request holds a spec: list items carry none of them (GET one for it)."""
    from app.db import session_scope
    from app.models import Job
    from tests.conftest import tiny_spec

    job = client.post("/v1/jobs", json=tiny_spec()).json()
    with session_scope() as session:  # what a finished job with record_predictions holds
        row = session.get(Job, job["id"])
        assert row is not None
        headline = {"task": "classification", "epochs_completed": 1, "best_epoch": None,
                    "monitor": "val_loss", "best_value": None, "early_stopped": False,
                    "stopped_epoch": None, "pruned": None, "parameters": 3,
                    "train": {"loss": 0.4}, "test": {"loss": 0.5, "accuracy": 0.9},
                    "generalization_gap": {"loss": 0.1}}
        stored = {**headline, "restored_best_weights": False, "seed": 0, "device": "cpu",
                  "rows": {"train": 8, "test": 2}, "versions": {"torch": "x"},
                  "predictions": {"test": [[0.5, 0.5]] * 5000},
                  "confusion_matrix": [[1, 0], [0, 1]]}
        row.summary = stored
    [item] = client.get("/v1/jobs").json()["items"]
    assert "spec" not in item and item["id"] == job["id"]
    assert item["summary"] == headline
    full = client.get(f"/v1/jobs/{job['id']}").json()
    assert full["summary"] == stored and full["spec"]  # as stored: no val, no nulls added
    exp = client.post("/v1/experiments", json={"kind": "cross_validation", "k": 2,
                                               "base": tiny_spec()}).json()
    listed = client.get("/v1/experiments").json()["items"]
    assert [e["id"] for e in listed] == [exp["id"]] and "request" not in listed[0]
    assert client.get(f"/v1/experiments/{exp['id']}").json()["request"]["k"] == 2
