"""The distributed path on the local Postgres and Redis with real `trainyard worker` processes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Stack, tiny_spec, wait_for, wait_job

pytestmark = pytest.mark.integration


def slow_digits(epochs: int = 60) -> dict[str, Any]:
    return {"name": "slow-digits", "data": {"source": {"builtin": "digits"}},
            "model": {"kind": "mlp", "hidden": [256, 256], "dropout": 0.1},
            # a checkpoint every epoch: the kill tests count on resuming after the last row
            "training": {"epochs": epochs, "batch_size": 32, "seed": 3,
                         "checkpoint_every_seconds": 0}}


def parent_pid(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def worker_running(stack: Stack, job: dict[str, Any]) -> str:
    """The name of the stack process whose pool child holds the job's lease."""
    pid = int(job["worker"].rsplit(":", 1)[1])
    for name, proc in stack.procs.items():
        if pid in (proc.pid,) or parent_pid(pid) == proc.pid:
            return name
    raise AssertionError(f"no stack process runs pid {pid}")


def metric_rows(db_url: str, job_id: str) -> list[Any]:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT epoch, split, name, attempt FROM metrics "
                                    "WHERE job_id = :j"), {"j": job_id}).all()
    engine.dispose()
    return list(rows)


def test_two_workers_train_jobs_submitted_over_http(distributed: Stack) -> None:
    distributed.start_worker("w1")
    distributed.start_worker("w2")
    with distributed.client() as http:
        ids = [http.post("/v1/jobs", json=tiny_spec(name=f"t{i}")).json()["id"] for i in range(4)]
        jobs = [wait_job(http, job_id, timeout=120) for job_id in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 4
        page = http.get(f"/v1/jobs/{ids[0]}/metrics", params={"split": "val"}).json()
        assert {p["name"] for p in page["points"]} == {"loss", "accuracy"}
        assert len(page["points"]) == 2 * 5
        newer = http.get(f"/v1/jobs/{ids[0]}/metrics", params={"after": page["next_after"]})
        assert all(p["split"] != "val" for p in newer.json()["points"])
        summary = jobs[0]["summary"]
        assert summary["test"]["accuracy"] > 0.8 and summary["parameters"] == 2 * 16 + 16 + 34


def test_sigkilled_worker_job_resumes_on_the_other(distributed: Stack, postgres_url: str) -> None:
    distributed.start_worker("w1")
    distributed.start_worker("w2")
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=slow_digits()).json()["id"]
        job = wait_for(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["progress"]["epoch"]
                       >= 3 and j, 120, 0.05, "epoch 3")
        distributed.signal(worker_running(distributed, job), signal.SIGKILL)
        killed = http.get(f"/v1/jobs/{job_id}").json()  # the lease (4 s) is still attempt 1's
        done = wait_job(http, job_id, timeout=180)
    assert killed["attempt"] == 1 and killed["progress"]["epoch"] >= 3, killed
    assert done["status"] == "succeeded" and done["attempt"] == 2
    rows = metric_rows(postgres_url, job_id)
    assert {r.epoch for r in rows} == set(range(1, 61)), "an epoch is missing"
    first = [r.epoch for r in rows if r.attempt == 1]
    second = [r.epoch for r in rows if r.attempt == 2]
    assert min(second) == max(first) + 1, "resume must start after the last checkpoint"
    # An epoch recorded twice cannot show as two rows (UNIQUE): the second attempt's upsert
    # would relabel the first's row. Every epoch that attempt 1 had recorded when it died
    # must still be attempt 1's. (A commit of attempt 1 landing after this read cannot
    # fail this: attempt 2 then resumes after that later epoch.)
    assert min(second) > killed["progress"]["epoch"], "an epoch was trained and written twice"


def test_job_lost_by_the_broker_is_reaped(distributed: Stack, redis_url: str) -> None:
    import redis

    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=tiny_spec()).json()["id"]
        redis.Redis.from_url(redis_url).flushdb()  # the message is gone; the row is not
        distributed.start_worker("w1")
        assert wait_job(http, job_id, timeout=120)["status"] == "succeeded"


def test_cancel_running_job_stops_at_a_batch_boundary(distributed: Stack) -> None:
    distributed.start_worker("w1")
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=500)).json()["id"]
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] >= 1, 120)
        assert http.post(f"/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
        done = wait_job(http, job_id, timeout=60)
    assert done["status"] == "cancelled" and done["progress"]["epoch"] < 500


def test_diverging_job_fails_with_reason(distributed: Stack) -> None:
    distributed.start_worker("w1")
    spec = tiny_spec(optimizer={"kind": "sgd", "lr": 1000.0},
                     data={"source": {"builtin": "diabetes"}}, loss={"kind": "mse"},
                     model={"kind": "mlp", "hidden": [64]})
    spec["data"]["standardize"] = False
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=spec).json()["id"]
        done = wait_job(http, job_id, timeout=120)
    assert done["status"] == "failed" and done["error"]["reason"] == "diverged"
    message = done["error"]["message"]
    assert "epoch 1 step" in message and "lr=1000" in message


def test_embedded_default_trains_and_serves_checkpoints(embedded: Stack) -> None:
    from safetensors.numpy import load

    embedded.start_worker("w1")
    with embedded.client() as http:
        job_id = http.post("/v1/jobs", json=tiny_spec()).json()["id"]
        done = wait_job(http, job_id, timeout=120)
        assert done["status"] == "succeeded", embedded.log("w1")
        listing = http.get(f"/v1/jobs/{job_id}/checkpoints").json()
        assert listing[0]["epoch"] == 5
        # the best epoch's weights, carried by the last checkpoint if its own was not written
        best = http.get(f"/v1/jobs/{job_id}/checkpoints/best")
        assert best.status_code == 200
        assert int(best.headers["X-Checkpoint-Epoch"]) == done["summary"]["best_epoch"]
        r = http.get(f"/v1/jobs/{job_id}/checkpoints/latest")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        weights = load(r.content)
        assert weights["head.weight"].shape == (2, 16)
