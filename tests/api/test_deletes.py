"""DELETE /v1/jobs|experiments|datasets/{id}: what goes, what is refused while in use, and
the space handed back on the embedded database."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import tiny_spec

CSV = b"a,b,label\n" + b"".join(b"%d.5,%d,%d\n" % (i, i % 7, i % 2) for i in range(60))


def trained(client: TestClient, **spec: Any) -> str:
    """A job run to completion in this process: real metrics, events and checkpoints."""
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute

    job_id: str = client.post("/v1/jobs", json=tiny_spec(**spec)).json()["id"]
    assert execute(job_id, get_sessionmaker(), get_settings()) == "succeeded"
    return job_id


def rows_of(job_id: str) -> dict[str, int]:
    from app.db import session_scope
    from app.models import Checkpoint, JobEvent, Metric

    with session_scope() as session:
        return {model.__tablename__: session.scalar(
            select(func.count()).select_from(model).where(model.job_id == job_id)) or 0
            for model in (Metric, Checkpoint, JobEvent)}


def test_a_finished_job_goes_with_everything_it_owns(client: TestClient,
                                                      other_client: TestClient) -> None:
    job_id = trained(client)
    assert all(rows_of(job_id).values())
    assert other_client.delete(f"/v1/jobs/{job_id}").status_code == 404  # not theirs
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert rows_of(job_id) == {"metrics": 0, "checkpoints": 0, "job_events": 0}
    for path in ("", "/metrics", "/checkpoints"):
        assert client.get(f"/v1/jobs/{job_id}{path}").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_a_queued_job_is_refused_until_cancelled(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    refused = client.delete(f"/v1/jobs/{job_id}")
    assert refused.status_code == 409 and "cancel" in refused.json()["error"]["message"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    client.post(f"/v1/jobs/{job_id}/cancel")  # queued: cancelled at once
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204


def test_an_experiment_goes_with_its_children_once_none_is_active(client: TestClient) -> None:
    exp = client.post("/v1/experiments", json={"kind": "cross_validation", "k": 2,
                                                "base": tiny_spec()}).json()
    kids = [k["id"] for k in client.get(f"/v1/experiments/{exp['id']}/jobs").json()["items"]]
    child = client.delete(f"/v1/jobs/{kids[0]}")
    assert child.status_code == 409 and exp["id"] in child.json()["error"]["message"]
    running = client.delete(f"/v1/experiments/{exp['id']}")
    assert running.status_code == 409 and "running" in running.json()["error"]["message"]
    client.post(f"/v1/experiments/{exp['id']}/cancel")
    assert client.delete(f"/v1/experiments/{exp['id']}").status_code == 204
    assert client.get(f"/v1/experiments/{exp['id']}").status_code == 404
    assert all(client.get(f"/v1/jobs/{k}").status_code == 404 for k in kids)


def test_a_dataset_in_use_is_refused_naming_who_reads_it(client: TestClient) -> None:
    ds = client.post("/v1/datasets", files={"file": ("d.csv", CSV)},
                     data={"target": "label"}).json()["id"]
    source = {"source": {"dataset": ds}}
    job = client.post("/v1/jobs", json=tiny_spec(data=source)).json()["id"]
    exp = client.post("/v1/experiments", json={
        "kind": "sweep", "base": tiny_spec(), "parameters": {"data.source": [{"dataset": ds}]},
    }).json()["id"]
    refused = client.delete(f"/v1/datasets/{ds}")
    assert refused.status_code == 409
    assert job in refused.text and exp in refused.text
    client.post(f"/v1/jobs/{job}/cancel")
    client.post(f"/v1/experiments/{exp}/cancel")
    assert client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert client.get(f"/v1/datasets/{ds}").status_code == 404
    assert client.get(f"/v1/jobs/{job}").json()["spec"]["data"]["source"]["dataset"] == ds


def test_deleting_hands_the_space_back_on_sqlite(client: TestClient, app_home: Path) -> None:
    """The embedded database is created with auto_vacuum=INCREMENTAL: the file shrinks by
    about the blob's size once the dataset is deleted (not only reused later)."""
    from app.db import get_engine

    x = np.random.default_rng(0).normal(size=(20_000, 40)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=x, y=(x[:, 0] > 0).astype(np.int64))
    ds = client.post("/v1/datasets", files={"file": ("big.npz", buffer.getvalue())}).json()

    def file_bytes() -> int:
        with get_engine().connect() as conn:  # fold the WAL into the file first
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in app_home.glob("*.db*"))

    before = file_bytes()
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert before - file_bytes() > 0.8 * ds["size_bytes"], (before, file_bytes())


def test_a_warm_start_source_is_kept_while_a_job_needs_it(client: TestClient) -> None:
    source = trained(client)
    starter = client.post("/v1/jobs", json=tiny_spec(
        model={"kind": "mlp", "hidden": [16], "init_from": {"job": source}})).json()
    assert starter["status"] == "queued", starter
    refused = client.delete(f"/v1/jobs/{source}")
    assert refused.status_code == 409 and starter["id"] in refused.json()["error"]["message"]
    client.post(f"/v1/jobs/{starter['id']}/cancel")
    assert client.delete(f"/v1/jobs/{source}").status_code == 204
