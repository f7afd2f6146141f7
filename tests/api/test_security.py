"""Tenancy on every route with an id, revoked keys, and per-tenant concurrency caps."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_key
from tests.conftest import tiny_spec

GOOD_CSV = b"a,label\n" + b"".join(f"{i},{i % 2}\n".encode() for i in range(20))


def id_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) of the API that takes an id in its path."""
    spec = client.get("/openapi.json").json()
    return [(method.upper(), path) for path, ops in spec["paths"].items()
            for method in ops if "{" in path]


def test_cross_tenant_access_is_404_on_every_route_with_an_id(
        client: TestClient, other_client: TestClient) -> None:
    job = client.post("/v1/jobs", json=tiny_spec()).json()
    dataset = client.post("/v1/datasets", files={"file": ("d.csv", GOOD_CSV)},
                          data={"target": "label"}).json()
    exp = client.post("/v1/experiments", json={"kind": "cross_validation", "k": 2,
                                                "base": tiny_spec()}).json()
    ids = {"job_id": job["id"], "dataset_id": dataset["id"], "ref": "latest",
           "experiment_id": exp["id"]}
    routes = id_routes(client)
    assert len(routes) >= 6
    for method, path in routes:
        url = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)
        theirs = other_client.request(method, url)
        missing = other_client.request(method, re.sub(r"(job|ds|exp)_[0-9a-f]+", r"\1_0", url))
        assert theirs.status_code == 404, (method, url, theirs.text)
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert other_client.get("/v1/datasets").json()["items"] == []
    assert other_client.get("/v1/experiments").json()["items"] == []
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued", "untouched"


def test_revoked_key_gets_401(app_home: Path) -> None:
    from app.main import create_app

    key = make_key("carol")
    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        assert c.get("/v1/jobs").status_code == 200
        env = {"TRAINYARD_HOME": str(app_home), "PATH": "/usr/bin:/bin"}
        listing = subprocess.run([sys.executable, "-m", "app.cli", "keys", "list"], env=env,
                                 capture_output=True, text=True, check=True).stdout
        key_id = next(line.split()[0] for line in listing.splitlines() if "carol" in line)
        subprocess.run([sys.executable, "-m", "app.cli", "keys", "revoke", key_id], env=env,
                       check=True, capture_output=True)
        r = c.get("/v1/jobs")
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_keys_are_stored_hashed(client: TestClient, app_home: Path) -> None:
    key = client.headers["Authorization"].split()[1]
    assert key.encode() not in (app_home / "trainyard.db").read_bytes()


def test_concurrent_job_cap_is_429_with_retry_after(client: TestClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setattr(get_settings().limits, "max_concurrent_jobs", 2)
    assert [client.post("/v1/jobs", json=tiny_spec()).status_code for _ in range(2)] == [201] * 2
    r = client.post("/v1/jobs", json=tiny_spec())
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert "max_concurrent_jobs" in r.json()["error"]["message"]
    assert len(client.get("/v1/jobs").json()["items"]) == 2


def test_cuda_jobs_go_to_the_gpu_queue(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=tiny_spec(training={"device": "cuda"})).json()
    assert job["queue"] == "gpu"
    assert client.post("/v1/jobs", json=tiny_spec()).json()["queue"] == "cpu"
