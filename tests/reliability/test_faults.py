"""Faults inflicted on real processes: workers killed and stopped, the broker restarted or
flushed, Postgres restarted mid-training. Each test restores what it broke."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import Stack, distributed_stack, tiny_spec, wait_for, wait_job
from tests.integration.test_distributed import parent_pid, slow_digits, worker_running

pytestmark = pytest.mark.reliability

TIMING = {"epoch_seconds", "samples_per_second"}


def rows(db_url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        result = list(conn.execute(sa.text(sql), params).all())
    engine.dispose()
    return result


def metrics_by_key(db_url: str, job_id: str) -> dict[tuple[int, str, str], float]:
    found = rows(db_url, "SELECT epoch, split, name, value FROM metrics WHERE job_id = :j",
                 j=job_id)
    return {(r.epoch, r.split, r.name): r.value for r in found}  # unique by the constraint


def assert_complete(db_url: str, job_id: str, epochs: int) -> dict[tuple[int, str, str], float]:
    keyed = metrics_by_key(db_url, job_id)
    per_epoch = {e: {(s, n) for (ep, s, n) in keyed if ep == e} for e in range(1, epochs + 1)}
    assert all(per_epoch[e] == per_epoch[1] for e in per_epoch), "an epoch lost metrics"
    assert {ep for ep, _, _ in keyed} == set(range(1, epochs + 1))
    return keyed


def assert_trained_once(db_url: str, done: dict[str, Any], epochs: int) -> None:
    """Succeeded on its first attempt, which wrote every metric row: each epoch once."""
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    attempts = rows(db_url, "SELECT DISTINCT attempt FROM metrics WHERE job_id = :j",
                    j=done["id"])
    assert [r.attempt for r in attempts] == [1]
    assert_complete(db_url, done["id"], epochs)


def assert_resumed_each_time(db_url: str, job_id: str, attempts: int) -> None:
    """Each attempt wrote only epochs after the checkpoint it resumed from: a restart from
    scratch would have rewritten epoch 1 (metric rows are upserted with their attempt)."""
    found = rows(db_url, "SELECT attempt, MIN(epoch) AS first, MAX(epoch) AS last FROM metrics "
                 "WHERE job_id = :j GROUP BY attempt ORDER BY attempt", j=job_id)
    assert [r.attempt for r in found] == list(range(1, attempts + 1)), found
    assert found[0].first == 1
    for before, after in itertools.pairwise(found):
        assert after.first > 1 and after.first <= before.last + 1, found


def running(http: httpx.Client, job_id: str, min_epoch: int = 0) -> dict[str, Any] | None:
    job = http.get(f"/v1/jobs/{job_id}").json()
    ok = job["status"] == "running" and job["worker"] and job["progress"]["epoch"] >= min_epoch
    return job if ok else None


def pool_child_of(job: dict[str, Any]) -> int:
    return int(job["worker"].rsplit(":", 1)[1])


# --------------------------------------------------------------------- workers


def test_sigterm_checkpoints_and_hands_back(distributed: Stack, postgres_url: str) -> None:
    w1 = distributed.start_worker("w1")
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=40)).json()["id"]
        wait_for(lambda: running(http, job_id, 2), 120, 0.05, "epoch 2")
        os.kill(w1.pid, signal.SIGTERM)  # like `docker stop`: the main process only
        assert w1.wait(timeout=60) == 0, distributed.log("w1")
        handed_back = http.get(f"/v1/jobs/{job_id}").json()
        assert handed_back["status"] == "queued" and handed_back["error"] is None
        assert handed_back["attempt"] == 0, "a hand-back must not use up an attempt"
        saved = rows(postgres_url, "SELECT epoch, step FROM checkpoints WHERE job_id = :j",
                     j=job_id)
        assert saved, "SIGTERM must leave a checkpoint"
        distributed.start_worker("w2")
        done = wait_job(http, job_id, timeout=180)
    assert done["status"] == "succeeded" and done["attempt"] == 1
    assert_complete(postgres_url, job_id, 40)


def test_poison_job_fails_worker_lost_while_others_flow(distributed: Stack) -> None:
    distributed.start_worker("w1")
    distributed.start_worker("w2")
    with distributed.client() as http:
        poison = http.post("/v1/jobs", json=slow_digits(epochs=400)).json()["id"]
        others = [http.post("/v1/jobs", json=tiny_spec(name=f"ok{i}")).json()["id"]
                  for i in range(3)]
        kills = 0
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            job = http.get(f"/v1/jobs/{poison}").json()
            if job["status"] == "failed":
                break
            if job["status"] == "running" and job["worker"]:
                pid = pool_child_of(job)
                try:  # the job "crashes" the process running it, as an OOM kill would
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
                wait_for(lambda p=pid: not Path(f"/proc/{p}").exists(), 10)
            time.sleep(0.2)
        job = http.get(f"/v1/jobs/{poison}").json()
        assert job["status"] == "failed" and job["error"]["reason"] == "worker_lost", job
        assert job["attempt"] == job["max_attempts"] == 4 and kills >= 4
        assert [wait_job(http, j, timeout=120)["status"] for j in others] == ["succeeded"] * 3


def test_cancelled_job_of_a_dead_worker_ends_cancelled(distributed: Stack) -> None:
    """Cancelled while its worker was dead: no claim will take it (cancel requested), so the
    reaper ends it, and it stops counting against the tenant's concurrent jobs."""
    distributed.start_worker("w1")
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=400)).json()["id"]
        wait_for(lambda: running(http, job_id, 1), 120, 0.05)
        distributed.signal("w1", signal.SIGKILL)
        distributed.procs.pop("w1")
        assert http.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "running"
        distributed.start_worker("w2")  # its reaper finds the expired, cancelled lease
        done = wait_job(http, job_id, timeout=60)
        assert done["status"] == "cancelled" and done["attempt"] == 1, done
        assert http.get("/v1/jobs", params={"status": "running"}).json()["items"] == []


def test_duplicate_delivery_trains_once(distributed: Stack, redis_url: str,
                                        postgres_url: str) -> None:
    from app.config import Settings
    from app.queue import RUN_JOB, make_celery

    distributed.start_worker("w1")
    distributed.start_worker("w2")
    celery = make_celery(Settings(broker_url=redis_url, database_url=postgres_url))
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=8)).json()["id"]
        for _ in range(3):  # the same id delivered again, at once, to both workers
            celery.send_task(RUN_JOB, args=[job_id], queue="cpu")
        done = wait_job(http, job_id, timeout=120)
    assert_trained_once(postgres_url, done, 8)


def test_repeated_sigkill_resumes_exactly(distributed: Stack, postgres_url: str) -> None:
    """Kills at random moments (checkpoint writes included) change nothing in the result."""
    spec = slow_digits(epochs=25)
    distributed.start_worker("w0")
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=spec).json()["id"]
        rng = random.Random(7)
        for round_ in range(2):
            job = wait_for(lambda r=round_: running(http, job_id, 2 + 6 * r), 120, 0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            name = next(n for n, p in distributed.procs.items()
                        if p.pid == parent_pid(pool_child_of(job)))
            distributed.signal(name, signal.SIGKILL)
            distributed.procs.pop(name)
            distributed.start_worker(f"w{round_ + 1}")
        killed = wait_job(http, job_id, timeout=240)
        twin_id = http.post("/v1/jobs", json=spec).json()["id"]
        twin = wait_job(http, twin_id, timeout=240)
        assert killed["status"] == twin["status"] == "succeeded" and killed["attempt"] == 3
        a = assert_complete(postgres_url, job_id, 25)
        b = assert_complete(postgres_url, twin_id, 25)
        same = {k: v for k, v in a.items() if k[2] not in TIMING}
        assert same == {k: v for k, v in b.items() if k[2] not in TIMING}
        assert_resumed_each_time(postgres_url, job_id, attempts=3)
        w_killed = http.get(f"/v1/jobs/{job_id}/checkpoints/latest").content
        w_twin = http.get(f"/v1/jobs/{twin_id}/checkpoints/latest").content
    from safetensors.numpy import load

    ka, kb = load(w_killed), load(w_twin)
    assert ka.keys() == kb.keys() and all((ka[k] == kb[k]).all() for k in ka)


# ---------------------------------------------------------------------- broker

REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
               "--save", "", "--appendonly", "no"]


def redis_up() -> bool:
    return subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True,
                          text=True).stdout.strip() == "PONG"


@pytest.fixture()
def restorable_redis() -> Iterator[None]:
    yield
    if not redis_up():
        subprocess.run(REDIS_START, check=True)
        wait_for(redis_up, 20)


def test_redis_restart_loses_no_job(distributed: Stack, postgres_url: str,
                                    restorable_redis: None) -> None:
    distributed.start_worker("w1")
    with distributed.client() as http:
        running_id = http.post("/v1/jobs", json=slow_digits(epochs=20)).json()["id"]
        wait_for(lambda: running(http, running_id, 1), 120, 0.05)
        queued_id = http.post("/v1/jobs", json=tiny_spec()).json()["id"]
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
        wait_for(lambda: not redis_up(), 20)
        time.sleep(1.0)
        subprocess.run(REDIS_START, check=True)
        wait_for(redis_up, 20)
        assert wait_job(http, running_id, timeout=180)["status"] == "succeeded"
        assert wait_job(http, queued_id, timeout=120)["status"] == "succeeded"
    assert_complete(postgres_url, running_id, 20)


# -------------------------------------------------------------------- database


def pg(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action,
                    *(["-m", "fast"] if action == "stop" else [])], check=True,
                   capture_output=True)


def pg_up() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0


@pytest.fixture()
def restorable_postgres() -> Iterator[None]:
    yield
    if not pg_up():
        pg("start")
        wait_for(pg_up, 30)


def test_postgres_restart_mid_training(tmp_path: Path, postgres_url: str, redis_url: str,
                                       restorable_postgres: None) -> None:
    with distributed_stack(tmp_path, postgres_url, redis_url,
                           TRAINYARD_LEASE_SECONDS="60") as stack, stack.client() as http:
        stack.start_worker("w1")
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=30)).json()["id"]
        wait_for(lambda: running(http, job_id, 3), 120, 0.05)
        pg("stop")
        during = [http.get(f"/v1/jobs/{job_id}").status_code for _ in range(3)]
        ready = http.get("/readyz").status_code
        time.sleep(2)
        pg("start")
        wait_for(pg_up, 30)
        assert set(during) == {503} and ready == 503
        done = wait_job(http, job_id, timeout=180)
        assert done["status"] == "succeeded" and done["attempt"] == 1, stack.log("w1")
        assert_complete(postgres_url, job_id, 30)


def test_job_outliving_the_visibility_timeout_runs_once(tmp_path: Path, postgres_url: str,
                                                        redis_url: str) -> None:
    """Redis redelivers an unacked message after the visibility timeout; the lease decides."""
    with distributed_stack(tmp_path, postgres_url, redis_url,
                           TRAINYARD_BROKER_VISIBILITY_TIMEOUT="2") as stack, \
            stack.client() as http:
        stack.start_worker("w1")
        stack.start_worker("w2")
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=60)).json()["id"]
        done = wait_job(http, job_id, timeout=240)
        assert_trained_once(postgres_url, done, 60)
        logs = stack.log("w1") + stack.log("w2")
        assert "'not-claimed'" in logs, "the broker should have redelivered the message"


def test_postgres_down_longer_than_the_retry_window(tmp_path: Path, postgres_url: str,
                                                    redis_url: str,
                                                    restorable_postgres: None) -> None:
    """An outage past TRAINYARD_DB_RETRY_SECONDS (and past the lease): the worker stops the
    copy and hands the job back when SQL returns; no attempt is used up, nothing failed,
    and no driver text (host, SQL) reaches the job."""
    with distributed_stack(tmp_path, postgres_url, redis_url,
                           TRAINYARD_DB_RETRY_SECONDS="2") as stack, stack.client() as http:
        for name in ("w1", "w2"):  # the idle one has a reaper that could re-claim the job
            stack.start_worker(name)
            wait_for(lambda n=name: " ready." in stack.log(n), 90, 0.2, name)
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=60)).json()["id"]
        # stopped while it still has most of its epochs ahead (a finished job has no copy
        # to hand back: starting a worker after submitting let it finish first under load)
        owner = worker_running(stack, wait_for(lambda: running(http, job_id, 3), 120, 0.05))
        pg("stop")
        wait_for(lambda: "handing the job back" in stack.log(owner), 60, 0.2, "the give-up")
        time.sleep(4)  # the lease (4 s) expires too
        pg("start")
        wait_for(pg_up, 30)
        done = wait_job(http, job_id, timeout=180)
        log = stack.log("w1") + stack.log("w2")
        assert done["status"] == "succeeded" and done["error"] is None, log
        assert done["attempt"] == 1, "an outage must not use up an attempt:\n" + log
        assert "the database is back; handed back" in log
        assert_complete(postgres_url, job_id, 60)
        resumed = rows(postgres_url, "SELECT DISTINCT attempt FROM metrics WHERE job_id = :j",
                       j=job_id)
        assert {r.attempt for r in resumed} == {1}, "the same attempt number, after the release"
        errors = rows(postgres_url, "SELECT error_message FROM jobs WHERE error_message IS NOT "
                      "NULL AND (error_message LIKE '%SQL%' OR error_message LIKE '%127.0.0.1%')")
        assert errors == []


def test_short_lease_survives_a_long_final_phase(tmp_path: Path, postgres_url: str,
                                                 redis_url: str) -> None:
    """The final evaluation (sharpness) lasts several leases while a second worker waits:
    the lease is kept by the heartbeat thread, so nobody takes the job over and the first
    copy's result is kept."""
    spec = slow_digits(epochs=2)
    spec["training"]["sharpness"] = {"power_iterations": 200, "ascent_steps": 200,
                                     "max_rows": 1024}
    with distributed_stack(tmp_path, postgres_url, redis_url, TRAINYARD_LEASE_SECONDS="1.5",
                           TRAINYARD_HEARTBEAT_SECONDS="0.3") as stack, stack.client() as http:
        stack.start_worker("w1")
        stack.start_worker("w2")
        job_id = http.post("/v1/jobs", json=spec).json()["id"]
        wait_for(lambda: running(http, job_id, 2), 120, 0.05, "training to end")
        assert outlived_its_lease(postgres_url, job_id), "the final phase was too short"
        done = wait_job(http, job_id, timeout=180)
        logs = stack.log("w1") + stack.log("w2")
        assert done["status"] == "succeeded" and done["attempt"] == 1, logs
        assert "lease lost" not in logs and "Traceback" not in logs
        assert done["summary"]["sharpness"]["rows"] == 1024


def outlived_its_lease(db_url: str, job_id: str) -> bool:
    """Whether the job was still running on its first attempt after the lease it held when
    training ended had expired (by the database's clock)."""
    engine = sa.create_engine(db_url)
    first = None
    try:
        with engine.connect() as conn:
            while True:
                row = conn.execute(sa.text("SELECT status, attempt, lease_expires_at, "
                                           "now() AS now FROM jobs WHERE id = :j"),
                                   {"j": job_id}).one()
                conn.rollback()  # a fresh snapshot each time
                if row.status != "running" or row.attempt != 1:
                    return False
                first = first or row.lease_expires_at
                if row.now > first:
                    return True
                time.sleep(0.1)
    finally:
        engine.dispose()
