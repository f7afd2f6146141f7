"""Deletes on Postgres + Redis through real HTTP: a finished job run by a real worker goes
with its rows, and a deleted dataset's space is reused by the next upload."""

from __future__ import annotations

import io

import numpy as np
import psycopg
import pytest

from tests.conftest import Stack, tiny_spec, wait_job

pytestmark = pytest.mark.integration


def npz(seed: int) -> bytes:
    x = np.random.default_rng(seed).normal(size=(20_000, 40)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=x, y=(x[:, 0] > 0).astype(np.int64))
    return buffer.getvalue()


def test_deletes_on_postgres(distributed: Stack, postgres_url: str) -> None:
    distributed.start_worker("w1")
    dsn = postgres_url.replace("+psycopg", "")
    with distributed.client() as http, psycopg.connect(dsn, autocommit=True) as db:
        job_id = http.post("/v1/jobs", json=tiny_spec()).json()["id"]
        assert wait_job(http, job_id)["status"] == "succeeded"
        assert http.delete(f"/v1/jobs/{job_id}").status_code == 204
        left = db.execute("SELECT (SELECT count(*) FROM metrics WHERE job_id = %s)"
                          " + (SELECT count(*) FROM checkpoints WHERE job_id = %s)"
                          " + (SELECT count(*) FROM job_events WHERE job_id = %s)",
                          (job_id, job_id, job_id)).fetchone()
        assert left == (0,)
        assert http.get(f"/v1/jobs/{job_id}").status_code == 404

        def table_bytes() -> int:
            return int(db.execute("SELECT pg_total_relation_size('datasets')").fetchone()[0])

        first = http.post("/v1/datasets", files={"file": ("a.npz", npz(1))}).json()
        after_first = table_bytes()
        assert http.delete(f"/v1/datasets/{first['id']}").status_code == 204
        db.execute("VACUUM datasets")  # what autovacuum does on its own schedule
        http.post("/v1/datasets", files={"file": ("b.npz", npz(2))}).raise_for_status()
        grown = table_bytes() - after_first
        assert grown < 0.2 * first["size_bytes"], (grown, first["size_bytes"])
