"""SIGTERM to a worker's whole process group (systemd KillMode=control-group, supervisord
stopasgroup, ``kill -TERM -PGID``): every process exits within a bound and a running job
is handed back with its attempt. Also a cold shutdown (SIGQUIT), whose pool terminate the
children ignore, ends within the stop bound; and ``trainyard run`` stopped the same way."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST, ROOT, Stack, distributed_stack, free_port, wait_for, wait_job
from tests.integration.test_distributed import slow_digits

pytestmark = pytest.mark.reliability

STOP_SECONDS = 20  # TRAINYARD_WORKER_STOP_SECONDS: the watchdog's bound
EXIT_BOUND = STOP_SECONDS + 25  # every process of the group is gone by then


def group_members(pgid: int) -> set[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    def live(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    return {p for p in pids if live(p)}


def stop_group(proc: subprocess.Popen[bytes], sig: int, expect_children: int,
               whole_group: bool = True) -> int:
    """Send ``sig`` to the group (or its leader only); returns the main process's exit code
    once every process of the group exited."""
    pids = wait_for(lambda: (m := group_members(proc.pid)) and len(m) > expect_children and m,
                    60, 0.2, "the pool children")
    if whole_group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    code = proc.wait(timeout=EXIT_BOUND)
    wait_for(lambda: not alive(pids), 10, 0.2, f"group {proc.pid} to exit ({alive(pids)})")
    return code


def ready(stack: Stack, name: str) -> bool:
    return " ready." in stack.log(name)


def running(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = http.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] == "running" and job["progress"]["epoch"] >= 1 else None


def api_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture()
def stack(tmp_path: Path, postgres_url: str, redis_url: str) -> Any:
    with distributed_stack(tmp_path, postgres_url, redis_url,
                           TRAINYARD_WORKER_STOP_SECONDS=str(STOP_SECONDS)) as s:
        yield s


def test_group_sigterm_stops_an_idle_worker(stack: Stack) -> None:
    w1 = stack.start_worker("w1", "--concurrency", "2")
    wait_for(lambda: ready(stack, "w1"), 90, 0.3, "worker ready")
    assert stop_group(w1, signal.SIGTERM, expect_children=2) == 0, stack.log("w1")
    assert "stop exceeded" not in stack.log("w1")


def test_group_sigterm_hands_a_running_job_back(stack: Stack) -> None:
    w1 = stack.start_worker("w1", "--concurrency", "2")
    with stack.client() as http:
        job_id = http.post("/v1/jobs", json=slow_digits(epochs=200)).json()["id"]
        wait_for(lambda: running(http, job_id), 120, 0.1, "the job to run")
        assert stop_group(w1, signal.SIGTERM, expect_children=2) == 0, stack.log("w1")
        handed_back = http.get(f"/v1/jobs/{job_id}").json()
        assert handed_back["status"] == "queued" and handed_back["attempt"] == 0, handed_back
        assert handed_back["error"] is None
        stack.start_worker("w2")  # it resumes elsewhere, as its first counted attempt
        resumed = wait_for(lambda: running(http, job_id), 120, 0.2, "the job to resume")
        assert resumed["attempt"] == 1


def test_cold_shutdown_is_bounded_although_children_ignore_sigterm(stack: Stack) -> None:
    """SIGQUIT to the main process: billiard terminates its pool with SIGTERM, which the
    children ignore; the stop watchdog kills them after TRAINYARD_WORKER_STOP_SECONDS."""
    w1 = stack.start_worker("w1", "--concurrency", "2")
    wait_for(lambda: ready(stack, "w1"), 90, 0.3, "worker ready")
    stop_group(w1, signal.SIGQUIT, expect_children=2, whole_group=False)
    assert not alive(group_members(w1.pid))


def test_trainyard_run_stopped_by_group_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRAINYARD_DATABASE_URL", "TRAINYARD_BROKER_URL")}
    env |= {"TRAINYARD_HOME": str(home), "PYTHONUNBUFFERED": "1", **FAST,
            "TRAINYARD_WORKER_STOP_SECONDS": str(STOP_SECONDS)}
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli", "run", "--port", str(port)],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        key = wait_for(lambda: (home / "dev-key").exists() and
                       (home / "dev-key").read_text().strip(), 60, 0.3, "the dev key")
        wait_for(lambda: " ready." in log.read_text(), 120, 0.3, "the worker")
        wait_for(lambda: api_up(port), 60, 0.3, "the API")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            job_id = http.post("/v1/jobs", json=slow_digits(epochs=200)).json()["id"]
            wait_for(lambda: running(http, job_id), 120, 0.1, "the job to run")
        # cli + api + worker + its pool child
        assert stop_group(proc, signal.SIGTERM, expect_children=3) == 0, log.read_text()[-3000:]
        with sqlite3.connect(home / "trainyard.db") as db:
            status, attempt = db.execute("SELECT status, attempt FROM jobs WHERE id = ?",
                                         (job_id,)).fetchone()
        assert (status, attempt) == ("queued", 0), log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_stop_during_the_final_phase_hands_back_and_is_bounded(
        tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    """SIGTERM while the job computes its final sharpness (no batch boundary for seconds):
    the lease thread hands the job back, and the stop, stuck behind the task, ends when the
    watchdog kills the pool after TRAINYARD_WORKER_STOP_SECONDS."""
    spec = slow_digits(epochs=2)
    spec["model"]["hidden"] = [512, 512]
    spec["training"]["sharpness"] = {"power_iterations": 60, "ascent_steps": 60}
    with distributed_stack(tmp_path, postgres_url, redis_url,
                           TRAINYARD_WORKER_STOP_SECONDS="2") as stack, stack.client() as http:
        w1 = stack.start_worker("w1")
        job_id = http.post("/v1/jobs", json=spec).json()["id"]
        wait_for(lambda: (j := running(http, job_id)) and j["progress"]["epoch"] == 2, 120,
                 0.05, "training to end")
        stop_group(w1, signal.SIGTERM, expect_children=1)  # 0 or 1: bounded is the point
        assert "stop exceeded 2s" in stack.log("w1"), "the final phase ended too soon"
        handed_back = http.get(f"/v1/jobs/{job_id}").json()
        assert handed_back["status"] == "queued" and handed_back["attempt"] == 0, handed_back
        stack.start_worker("w2")  # resumes from the final checkpoint: only the end is redone
        done = wait_job(http, job_id, timeout=180)
        assert done["status"] == "succeeded" and done["attempt"] == 1, stack.log("w2")
        assert done["summary"]["epochs_completed"] == 2
