"""The worker registry and ``failed: no_worker`` with real `trainyard worker` processes on the
local Postgres and Redis. The windows are seconds here (settings below), minutes by default."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from app.config import Settings
from app.db import make_engine
from app.services import workers
from tests.conftest import Stack, distributed_stack, tiny_spec, wait_for, wait_job
from tests.integration.test_distributed import parent_pid, slow_digits

pytestmark = pytest.mark.integration

NO_WORKER_AFTER = 2.0
LOST = 3.0
REGISTRY_ENV = {"TRAINYARD_NO_WORKER_AFTER_SECONDS": str(NO_WORKER_AFTER),
                "TRAINYARD_WORKER_LOST_SECONDS": str(LOST),
                "TRAINYARD_WORKER_HEARTBEAT_SECONDS": "0.5"}


@pytest.fixture()
def stack(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Stack]:
    with distributed_stack(tmp_path, postgres_url, redis_url, **REGISTRY_ENV) as s:
        yield s


def registry(postgres_url: str) -> dict[str, workers.WorkerState]:
    """The registry as operators read it, keyed by node name (``<name>@<host>``)."""
    engine = make_engine(postgres_url)
    try:
        listed = workers.list_workers(sessionmaker(bind=engine), Settings(worker_lost_seconds=LOST))
    finally:
        engine.dispose()
    return {w.node.split("@", 1)[0]: w for w in listed}


def start_registered(stack: Stack, postgres_url: str, *args: str) -> workers.WorkerState:
    """Start a worker with a name unique to this session; wait until it beats."""
    name = f"reg{secrets.token_hex(3)}"
    stack.start_worker(name, *args)
    return wait_for(lambda: (w := registry(postgres_url).get(name)) and w.state == "live" and w,
                    120, 0.3, f"worker {name} to register")


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_gpu_job_with_only_a_cpu_worker_fails_no_worker(stack: Stack,
                                                          postgres_url: str) -> None:
    start_registered(stack, postgres_url, "--queues", "cpu")
    with stack.client() as http:
        gpu = http.post("/v1/jobs", json=tiny_spec(name="gpu", training__device="cuda")).json()
        cpu = http.post("/v1/jobs", json=tiny_spec(name="cpu")).json()
        assert (gpu["queue"], cpu["queue"]) == ("gpu", "cpu")
        failed = wait_job(http, gpu["id"], timeout=60)
        assert failed["status"] == "failed" and failed["error"]["reason"] == "no_worker"
        assert "'gpu'" in failed["error"]["message"]
        assert "trainyard worker --queues gpu" in failed["error"]["message"]
        assert failed["attempt"] == 0 and failed["started_at"] is None
        assert wait_job(http, cpu["id"], timeout=120)["status"] == "succeeded"


def test_with_no_worker_at_all_the_api_fails_the_job(stack: Stack) -> None:
    """Reapers run in workers; with none running the API applies the rule itself."""
    with stack.client() as http:
        job = http.post("/v1/jobs", json=tiny_spec(name="alone")).json()
        failed = wait_job(http, job["id"], timeout=60)
    assert failed["error"]["reason"] == "no_worker" and "'cpu'" in failed["error"]["message"]
    assert when(failed["finished_at"]) >= when(failed["created_at"])


def test_a_backlog_on_a_live_queue_is_not_failed(stack: Stack, postgres_url: str) -> None:
    start_registered(stack, postgres_url, "--queues", "cpu", "--concurrency", "1")
    with stack.client() as http:
        ids = [http.post("/v1/jobs", json=slow_digits(epochs=8) | {"name": f"b{i}"}).json()["id"]
               for i in range(3)]
        done = [wait_job(http, job_id, timeout=300) for job_id in ids]
    assert [j["status"] for j in done] == ["succeeded"] * 3, [j["error"] for j in done]
    waited = max((when(j["started_at"]) - when(j["created_at"])).total_seconds() for j in done)
    assert waited > NO_WORKER_AFTER, "no job waited past the window: the test proved nothing"


def test_the_registry_lists_a_worker_and_marks_it_stopped(stack: Stack,
                                                          postgres_url: str) -> None:
    worker = start_registered(stack, postgres_url, "--queues", "cpu,gpu", "--concurrency", "2")
    assert worker.queues == ("cpu", "gpu") and worker.concurrency == 2
    name = worker.node.split("@", 1)[0]
    with stack.client() as http:
        done = wait_job(http, http.post("/v1/jobs", json=tiny_spec()).json()["id"], timeout=120)
    owner: str = done["summary"]["worker"]  # what a tenant sees: <worker id>:<pid>
    assert owner.rsplit(":", 1)[0] == worker.id and socket.gethostname() not in owner
    assert parent_pid(int(owner.rsplit(":", 1)[1])) == stack.procs[name].pid
    stack.stop(name)  # SIGTERM: a warm shutdown
    stopped = registry(postgres_url)[name]
    assert stopped.state == "stopped" and stopped.id == worker.id
