"""GET /v1/usage and the storage and dataset quotas: default, per-tenant override, and the
refusals naming usage and limit (nothing stored when refused)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec

CSV = b"a,b,label\n" + b"".join(b"%d.5,%d,%d\n" % (i, i % 7, i % 2) for i in range(60))


def upload(client: TestClient, name: str = "d") -> object:
    return client.post("/v1/datasets", files={"file": (f"{name}.csv", CSV)},
                       data={"target": "label"})


def test_usage_counts_datasets_checkpoints_and_exports(client: TestClient) -> None:
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute

    empty = client.get("/v1/usage").json()
    assert empty["storage_bytes"] == {"datasets": 0, "checkpoints": 0, "model_exports": 0,
                                      "total": 0}
    assert empty["quota"] == {"storage_bytes": 10 * 1024**3, "datasets": 500}
    ds = upload(client).json()  # type: ignore[attr-defined]
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    assert execute(job_id, get_sessionmaker(), get_settings()) == "succeeded"
    used = client.get("/v1/usage").json()
    stored = used["storage_bytes"]
    assert used["datasets"] == 1 and stored["datasets"] == ds["size_bytes"]
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    assert stored["checkpoints"] == sum(c["size_bytes"] for c in checkpoints) > 0
    assert stored["total"] == stored["datasets"] + stored["checkpoints"] + stored["model_exports"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get("/v1/usage").json()["storage_bytes"]["checkpoints"] == 0


def test_the_dataset_quota_refuses_the_next_upload(client: TestClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from app import config

    monkeypatch.setenv("TRAINYARD_LIMIT_QUOTA_DATASETS", "2")
    config.get_settings.cache_clear()
    assert upload(client, "a").status_code == 201  # type: ignore[attr-defined]
    assert upload(client, "b").status_code == 201  # type: ignore[attr-defined]
    refused = upload(client, "c")
    assert refused.status_code == 403  # type: ignore[attr-defined]
    error = refused.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "quota_exceeded" and "2 datasets" in error["message"]
    assert client.get("/v1/usage").json()["datasets"] == 2


def test_a_tenants_own_storage_quota_refuses_uploads_and_jobs(
        client: TestClient, other_client: TestClient, app_home: Path) -> None:
    from app.services import admin

    first = upload(client).json()  # type: ignore[attr-defined]
    admin.set_quota("alice", storage_bytes=first["size_bytes"] + 10, datasets=None)
    refused = upload(client, "second")
    assert refused.status_code == 403  # type: ignore[attr-defined]
    message = refused.json()["error"]["message"]  # type: ignore[attr-defined]
    assert f"{first['size_bytes']:,}" in message and f"{first['size_bytes'] + 10:,}" in message
    assert client.get("/v1/jobs").json()["items"] == []
    admin.set_quota("alice", storage_bytes=first["size_bytes"], datasets=None)  # now at it
    job = client.post("/v1/jobs", json=tiny_spec())
    assert job.status_code == 403 and "quota" in job.text
    experiment = client.post("/v1/experiments", json={"kind": "bagging", "n_models": 2,
                                                       "base": tiny_spec()})
    assert experiment.status_code == 403
    assert client.get("/v1/jobs").json()["items"] == []
    assert client.get("/v1/usage").json()["quota"]["storage_bytes"] == first["size_bytes"]
    assert other_client.post("/v1/jobs", json=tiny_spec()).status_code == 201  # not theirs
    admin.set_quota("alice", storage_bytes=None, datasets=None)  # back to the default
    assert client.post("/v1/jobs", json=tiny_spec()).status_code == 201
