"""The polling read path: the API-key cache's revocation bound, and ETag / 304 on a job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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
