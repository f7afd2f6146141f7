"""Tenancy on every route with an id, revoked keys, and per-tenant concurrency caps."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.conftest import make_key
from tests.conftest import tiny_spec

GOOD_CSV = b"a,label\n" + b"".join(f"{i},{i % 2}\n".encode() for i in range(20))


def id_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) of the API that takes an id in its path."""
    spec = client.get("/openapi.json").json()
    return [(method.upper(), path) for path, ops in spec["paths"].items()
            for method in ops if "{" in path]


def valid_body(method: str, path: str) -> dict[str, Any] | None:
    """A body the route accepts, for the routes that need one (an empty patch; a row)."""
    if path.endswith("/predict"):
        return {"rows": [[0.5, 0.5]]}
    return {} if method.upper() == "PATCH" else None


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def trained_job(client: TestClient) -> str:
    """A job run to completion in this process, so it really has checkpoints to leak."""
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute

    job_id: str = client.post("/v1/jobs", json=tiny_spec(name="trained")).json()["id"]
    assert execute(job_id, get_sessionmaker(), get_settings()) == "succeeded"
    return job_id


def test_cross_tenant_access_is_404_on_every_route_with_an_id(
        client: TestClient, other_client: TestClient) -> None:
    """Each 404 for the other tenant is set against a 200 for the owner on every GET, so a
    route that answers 404 for everyone (a job with no checkpoints) proves nothing here."""
    queued = client.post("/v1/jobs", json=tiny_spec()).json()
    trained = trained_job(client)
    dataset = client.post("/v1/datasets", files={"file": ("d.csv", GOOD_CSV)},
                          data={"target": "label"}).json()
    exp = client.post("/v1/experiments", json={"kind": "cross_validation", "k": 2,
                                                "base": tiny_spec()}).json()
    client.post(f"/v1/experiments/{exp['id']}/cancel")  # ended: its event stream ends too
    routes = id_routes(client)
    assert len(routes) >= 6
    for method, path in routes:
        # a finished job where the owner's GET needs one (checkpoints, plots, a stream that
        # ends); the queued one elsewhere (a DELETE of it must stay refused to the owner too)
        ended = any(part in path for part in ("checkpoints", "plots", "events"))
        ids = {"job_id": trained if ended else queued["id"], "ref": "latest",
               "dataset_id": dataset["id"], "experiment_id": exp["id"], "fmt": "svg",
               "name": "folds" if path.startswith("/v1/experiments") else "loss"}
        url = fill(path, ids)
        body = valid_body(method, path)  # the id decides, not a missing body
        theirs = other_client.request(method, url, json=body)
        missing = other_client.request(method, re.sub(r"(job|ds|exp)_[0-9a-f]+", r"\1_0", url),
                                       json=body)
        assert theirs.status_code == 404, (method, url, theirs.text)
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
        if method == "GET":  # the route found the owner's resource (a 409 says why not yet)
            assert client.get(url).status_code in (200, 409), (url, "the owner must see it")
    assert other_client.get("/v1/datasets").json()["items"] == []
    assert other_client.get("/v1/experiments").json()["items"] == []
    assert client.get(f"/v1/jobs/{queued['id']}").json()["status"] == "queued", "untouched"


def test_checkpoints_are_the_owners_alone(client: TestClient, other_client: TestClient) -> None:
    job_id = trained_job(client)
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    assert listed  # ("best" is served even when no row is flagged: the latest carries it)
    assert other_client.get(f"/v1/jobs/{job_id}/checkpoints").status_code == 404
    for ref in ["best", "latest", *(str(c["epoch"]) for c in listed)]:
        url = f"/v1/jobs/{job_id}/checkpoints/{ref}"
        mine = client.get(url)
        assert mine.status_code == 200 and mine.content, (ref, mine.text)
        theirs = other_client.get(url)
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found", ref
        assert mine.content not in theirs.content


def test_revoked_key_gets_401(app_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the key cache off, at once (test_read_path covers the cached bound)."""
    from app.config import get_settings
    from app.main import create_app

    monkeypatch.setenv("TRAINYARD_KEY_CACHE_SECONDS", "0")
    get_settings.cache_clear()
    key = make_key("carol")
    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        assert c.get("/v1/jobs").status_code == 200
        env = {"TRAINYARD_HOME": str(app_home), "PATH": "/usr/bin:/bin"}
        listing = subprocess.run([sys.executable, "-m", "trainyard.cli", "keys", "list"], env=env,
                                 capture_output=True, text=True, check=True).stdout
        key_id = next(line.split()[0] for line in listing.splitlines() if "carol" in line)
        subprocess.run([sys.executable, "-m", "trainyard.cli", "keys", "revoke", key_id], env=env,
                       check=True, capture_output=True)
        r = c.get("/v1/jobs")
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_keys_are_stored_hashed(client: TestClient, app_home: Path) -> None:
    """Nowhere under TRAINYARD_HOME: the database, its -wal and -shm files (where a fresh
    row sits until a checkpoint), logs."""
    key = client.headers["Authorization"].split()[1]
    assert client.get("/v1/jobs").status_code == 200, "the key works"
    files = [f for f in app_home.rglob("*") if f.is_file()]
    assert any(f.name.endswith("-wal") for f in files), "the WAL must be among those searched"
    assert [f for f in files if key.encode() in f.read_bytes()] == []


def test_keys_are_stored_hashed_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Every row of every table, as text."""
    import sqlalchemy as sa

    from app.db import make_engine
    from app.services import keys
    from tests.integration.test_races import migrated

    migrated(postgres_url, tmp_path)
    engine = make_engine(postgres_url)
    try:
        with Session(engine) as session:
            key = keys.create(session, tenant_id="hashed")[1]
            session.commit()
            assert keys.authenticate(session, f"Bearer {key}") == "hashed", "the key works"
            tables = session.scalars(sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all()
            assert "api_keys" in tables
            leaked = [table for table in tables if session.scalar(sa.text(
                f'SELECT count(*) FROM "{table}" t WHERE strpos(t::text, :k) > 0'), {"k": key})]
    finally:
        engine.dispose()
    assert leaked == []


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


def test_dev_key_file_is_never_readable_by_others(app_home: Path) -> None:
    """The mode is sampled at every audited operation once the file exists (a file written
    with the umask's 0644 and chmod-ed afterwards is seen at 0644 by the chmod's own event),
    not only at the end."""
    from trainyard.cli import ensure_dev_key

    path = app_home / "dev-key"
    modes: list[int] = []
    state = {"watching": True, "inside": False}

    def hook(_event: str, _args: object) -> None:
        if state["watching"] and not state["inside"]:
            state["inside"] = True  # the stat below must not feed the hook to itself
            try:
                if path.exists():
                    modes.append(stat.S_IMODE(path.stat().st_mode))
            finally:
                state["inside"] = False

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet below
    umask = os.umask(0o022)
    try:
        key = ensure_dev_key()
    finally:
        os.umask(umask)
        state["watching"] = False
    modes.append(stat.S_IMODE(path.stat().st_mode))
    assert set(modes) == {0o600}, [oct(m) for m in modes]
    assert path.read_text().strip() == key == ensure_dev_key(), "created once, then reused"
