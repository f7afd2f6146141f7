"""The polling read path: the API-key cache's revocation bound; ETag / 304 on a job and on
its metrics page (never hiding a change, never across tenants); the bodies built without
FastAPI's response model (rows as tuples, orjson) equal to the models' own serialization."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.statuses import JobStatus
from tests.api.conftest import make_key
from tests.conftest import tiny_spec

TTL = 1.0


def revoke(tenant: str) -> float:
    """Revoke the tenant's keys through SQL, as another process would; returns when."""
    from app import repository as repo
    from app.clock import utcnow
    from app.db import session_scope

    with session_scope() as session:
        for key in repo.list_keys(session):
            if key.tenant_id == tenant:
                repo.revoke_key(session, key.id, utcnow())
    return time.monotonic()


def test_revoked_key_is_refused_once_the_cache_ttl_has_passed(
        app_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings
    from app.main import create_app

    monkeypatch.setenv("TRAINYARD_KEY_CACHE_SECONDS", str(TTL))
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {make_key('dave')}"
        assert c.get("/v1/jobs").status_code == 200  # accepted: cached for TTL from here
        cached_at = time.monotonic()
        revoked_at = revoke("dave")
        early = c.get("/v1/jobs")
        if time.monotonic() - cached_at < TTL:  # unless this machine stalled past the TTL
            assert early.status_code == 200, "within the TTL the cached key still works"
        time.sleep(max(0.0, revoked_at + TTL - time.monotonic()))
        late = c.get("/v1/jobs")
        assert late.status_code == 401, "the bound: refused from revocation + TTL on"
        assert "revoked" in late.json()["error"]["message"]


def test_a_refused_key_is_not_cached(app_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only accepted keys are cached: a key created after a refusal works at once."""
    from app.config import get_settings
    from app.main import create_app
    from app.services import keys

    monkeypatch.setenv("TRAINYARD_KEY_CACHE_SECONDS", "60")
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        wrong = c.get("/v1/jobs", headers={"Authorization": "Bearer ty_nope"})
        assert wrong.status_code == 401
        assert keys.cached_tenant("Bearer ty_nope") is None
        key = make_key("erin")
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert keys.cached_tenant(f"Bearer {key}") == "erin"


def test_unchanged_job_is_304_and_a_changed_one_200_with_a_new_etag(
        client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    first = client.get(f"/v1/jobs/{job_id}")
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag.startswith('"')

    same = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": tag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag
    listed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": f'"x", W/{tag}'})
    assert listed.status_code == 304, "a tag in a list, and its weak form, match"

    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] != tag


def test_etag_does_not_leak_another_tenants_job(client: TestClient,
                                                other_client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    tag = client.get(f"/v1/jobs/{job_id}").headers["etag"]
    theirs = other_client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": tag})
    assert theirs.status_code == 404


def write_epoch(job_id: str, epoch: int, value: float, *, attempt: int = 1) -> None:
    """What a worker writes per epoch: progress and the metric rows (upserted by epoch)."""
    from app import repository as repo
    from app.clock import utcnow
    from app.db import session_scope

    rows = [{"job_id": job_id, "epoch": epoch, "split": split, "name": "loss", "value": value,
             "attempt": attempt} for split in ("train", "val")]
    with session_scope() as s:
        repo.record_epoch(s, job_id=job_id, attempt=attempt, epoch=epoch, rows=rows,
                          now=utcnow(), lease=60)


def claimed_job(client: TestClient) -> str:
    from app import repository as repo
    from app.clock import utcnow
    from app.db import session_scope

    job_id: str = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    with session_scope() as s:
        assert repo.claim(s, job_id, "w", utcnow(), 60) is not None
    return job_id


def page(client: TestClient, job_id: str, after: int, tag: str | None = None) -> Any:
    return client.get(f"/v1/jobs/{job_id}/metrics", params={"after": after},
                      headers={"If-None-Match": tag} if tag else {})


def test_a_metrics_page_is_304_until_a_row_is_written_then_200_with_it(
        client: TestClient) -> None:
    job_id = claimed_job(client)
    write_epoch(job_id, 1, 0.9)
    first = page(client, job_id, 0)
    cursor = first.json()["next_after"]
    assert first.status_code == 200 and len(first.json()["points"]) == 2

    empty = page(client, job_id, cursor)
    tag = empty.headers["etag"]
    assert empty.json()["points"] == [] and empty.json()["next_after"] == cursor
    same = page(client, job_id, cursor, tag)
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag

    write_epoch(job_id, 2, 0.5)
    newer = page(client, job_id, cursor, tag)
    assert newer.status_code == 200 and newer.headers["etag"] != tag
    assert [(p["epoch"], p["value"]) for p in newer.json()["points"]] == [(2, 0.5), (2, 0.5)]


def test_a_rewritten_value_or_a_new_status_is_never_hidden_by_a_304(
        client: TestClient) -> None:
    """A resumed job upserts its epoch's rows in place (same ids, new values), and a job's
    end changes only job_status: both answer 200 to the tag of the page before them."""
    from app import repository as repo
    from app.clock import utcnow
    from app.db import session_scope

    job_id = claimed_job(client)
    write_epoch(job_id, 1, 0.9)
    before = page(client, job_id, 0)
    ids = [p["id"] for p in before.json()["points"]]
    write_epoch(job_id, 1, 0.7)
    rewritten = page(client, job_id, 0, before.headers["etag"])
    assert rewritten.status_code == 200
    assert [(p["id"], p["value"]) for p in rewritten.json()["points"]] == [(i, 0.7) for i in ids]

    tag = page(client, job_id, ids[-1]).headers["etag"]
    with session_scope() as s:
        repo.finish(s, job_id=job_id, attempt=1, status=JobStatus.SUCCEEDED, now=utcnow())
    ended = page(client, job_id, ids[-1], tag)
    assert ended.status_code == 200 and ended.json()["job_status"] == "succeeded"
    assert ended.json()["points"] == []


def test_a_metrics_etag_holds_only_for_its_own_query(client: TestClient) -> None:
    """The tag names the page it came with: sent with another cursor, limit or filter it is
    not a match (the client does not hold that page)."""
    job_id = claimed_job(client)
    write_epoch(job_id, 1, 0.9)
    tag = page(client, job_id, 0).headers["etag"]
    assert page(client, job_id, 0, tag).status_code == 304
    assert page(client, job_id, 1, tag).status_code == 200
    for params in ({"after": 0, "limit": 1}, {"after": 0, "split": "val"}):
        other = client.get(f"/v1/jobs/{job_id}/metrics", params=params,
                           headers={"If-None-Match": tag})
        assert other.status_code == 200, params


def test_each_kind_of_write_to_a_job_changes_its_etag(client: TestClient) -> None:
    """Claim (status, worker), an epoch (progress), the end, PATCH (note), the model
    export's end, and its retry's end with another reason seen only after both. Each
    answer, with or without If-None-Match, is the body a fresh read of the row builds (the
    API keeps bodies by ETag: a change the tag missed would serve a stale one)."""
    from app import export_repository as exports
    from app import repository as repo
    from app.clock import utcnow
    from app.db import session_scope
    from app.schemas import JobOut

    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    tags = [client.get(f"/v1/jobs/{job_id}").headers["etag"]]

    def fresh() -> Any:
        with session_scope() as s:
            job = repo.get_job(s, "alice", job_id)
            assert job is not None
            return json.loads(JobOut.of(job).model_dump_json())

    def changed(write: Any) -> None:
        with session_scope() as s:
            write(s)
        answer = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": tags[-1]})
        assert answer.status_code == 200 and answer.headers["etag"] not in tags
        assert answer.json() == fresh() == client.get(f"/v1/jobs/{job_id}").json()
        assert client.get(f"/v1/jobs/{job_id}", headers={
            "If-None-Match": answer.headers["etag"]}).status_code == 304
        tags.append(answer.headers["etag"])

    changed(lambda s: repo.claim(s, job_id, "w", utcnow(), 60))
    changed(lambda s: write_epoch(job_id, 1, 0.5))
    changed(lambda s: repo.finish(s, job_id=job_id, attempt=1, status=JobStatus.SUCCEEDED,
                                  now=utcnow()))
    assert client.patch(f"/v1/jobs/{job_id}", json={"note": "n"}).status_code == 200
    changed(lambda s: None)
    changed(lambda s: exports.mark_pending(s, job_id, utcnow()))
    changed(lambda s: exports.fail(s, job_id, "first reason", utcnow()))
    # a retried export that failed again, unseen in between: the same status, a new reason
    changed(lambda s: (exports.mark_pending(s, job_id, utcnow()),
                       exports.fail(s, job_id, "second reason", utcnow())))
    assert client.get(f"/v1/jobs/{job_id}").json()["model"]["reason"] == "second reason"


def test_a_metrics_etag_does_not_leak_another_tenants_job(
        client: TestClient, other_client: TestClient) -> None:
    job_id = claimed_job(client)
    tag = page(client, job_id, 0).headers["etag"]
    theirs = page(other_client, job_id, 0, tag)
    assert theirs.status_code == 404 and "etag" not in theirs.headers
    star = other_client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": "*"})
    assert star.status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": "*"}).status_code == 304


def test_the_bodies_equal_the_response_models_serialization(client: TestClient) -> None:
    """What FastAPI wrote before from the response models (JobOut, MetricsPage of ORM rows),
    value for value: infinities as null, the status as its string. (NaN is not stored: the
    column is NOT NULL and SQLite stores NaN as NULL.)"""
    from sqlalchemy import select

    from app import repository as repo
    from app.db import session_scope
    from app.models import Metric
    from app.schemas import JobOut, MetricPoint, MetricsPage

    job_id = claimed_job(client)
    write_epoch(job_id, 1, float("-inf"))
    write_epoch(job_id, 2, float("inf"))
    write_epoch(job_id, 3, 0.1)
    with session_scope() as s:
        job = repo.get_job(s, "alice", job_id)
        assert job is not None
        expected_job = json.loads(JobOut.of(job).model_dump_json())
        rows = s.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)).all()
        expected_page = MetricsPage(
            job_status=job.status, next_after=rows[-1].id,
            points=[MetricPoint(id=r.id, epoch=r.epoch, split=r.split, name=r.name,
                                value=r.value) for r in rows]).model_dump_json()
    assert client.get(f"/v1/jobs/{job_id}").json() == expected_job
    got = page(client, job_id, 0)
    assert got.headers["content-type"] == "application/json"
    assert got.json() == json.loads(expected_page)
    assert [p["value"] for p in got.json()["points"]] == [None, None, None, None, 0.1, 0.1]
