"""Event streams over real HTTP from real API and worker processes, on the embedded default
(SQLite) and on Postgres + Redis: a training job's events arrive while it trains, a
reconnect with Last-Event-ID mid-stream gets exactly the rest, the server ends the stream
after the terminal status; many open streams share the API process's one poller instead of
holding a database connection each."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.conftest import Stack, distributed_stack, tiny_spec

pytestmark = pytest.mark.integration

STACKS = ["embedded", "distributed"]


def read(client: httpx.Client, path: str, last_id: str | None = None,
         stop_after_progress: int | None = None) -> list[ServerSentEvent]:
    """A stream's events (comments and the retry hint left out) until the server ends it, or
    until ``stop_after_progress`` progress events have come (then the client hangs up)."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    events: list[ServerSentEvent] = []
    with connect_sse(client, "GET", path, headers=headers) as source:
        assert source.response.status_code == 200
        for event in source.iter_sse():
            if event.data:
                events.append(event)
            if sum(e.event == "progress" for e in events) == stop_after_progress:
                break
    return events


@pytest.mark.parametrize("stack_name", STACKS)
def test_a_training_jobs_events_arrive_live_and_resume_exactly(
        stack_name: str, request: pytest.FixtureRequest) -> None:
    stack: Stack = request.getfixturevalue(stack_name)
    stack.start_worker("w1")
    client = stack.client()
    # ~80 short epochs: the job trains for a few seconds after the hang-up
    spec = tiny_spec(training__epochs=80, data__source__n_samples=1000,
                     training__batch_size=16)
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    path = f"/v1/jobs/{job_id}/events"
    head = read(client, path, stop_after_progress=3)  # hang up mid-training
    live = client.get(f"/v1/jobs/{job_id}").json()["status"]
    rest = read(client, path, last_id=head[-1].id)  # returns: the server ended the stream
    whole = read(client, path)
    assert [(e.id, e.data) for e in head + rest] == [(e.id, e.data) for e in whole]
    assert [e.id for e in whole] == [str(n) for n in range(1, len(whole) + 1)]
    bodies = [json.loads(e.data) for e in whole]
    assert [b["data"]["status"] for b in bodies if b["kind"] == "status"] == [
        "queued", "running", "succeeded"], bodies
    assert [b["data"]["epoch"] for b in bodies if b["kind"] == "progress"] == list(range(1, 81))
    points = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 10_000}).json()["points"]
    assert sorted((b["data"]["epoch"], b["data"]["split"], b["data"]["name"], b["data"]["value"])
                  for b in bodies if b["kind"] == "metric") == sorted(
        (p["epoch"], p["split"], p["name"], p["value"]) for p in points)
    # the hang-up came while the job trained (a stream of a finished job proves less)
    assert live == "running", live


def database_connections(stack: Stack) -> int:
    """Connections the API holds: Postgres backends of the stack's database, or SQLite
    file descriptors on the database file in the API's processes."""
    url = stack.env.get("TRAINYARD_DATABASE_URL")
    if url:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"),
                             autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                               "AND pid <> pg_backend_pid()", (name,)).fetchone()
            return int(row[0]) if row else 0
    database = str((stack.home / "trainyard.db").resolve())
    return sum(_links_to(pid, database) for pid in _process_tree(stack.procs["api"].pid))


def _process_tree(root: int) -> list[int]:
    children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
    return [root, *(pid for child in children for pid in _process_tree(int(child)))]


def _links_to(pid: int, target: str) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == target
        except OSError:
            continue
    return count


@pytest.mark.parametrize("stack_name", STACKS)
def test_many_open_streams_hold_no_database_connection_each(
        stack_name: str, request: pytest.FixtureRequest) -> None:
    stack: Stack = request.getfixturevalue(stack_name)
    client = stack.client()
    answer = client.post("/v1/jobs", json=tiny_spec())
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]  # no worker: it stays queued
    before = database_connections(stack)
    streams, opened = 40, threading.Semaphore(0)
    received: list[list[dict[str, Any]]] = []

    def follow() -> None:
        events: list[dict[str, Any]] = []
        with stack.client() as own, connect_sse(own, "GET", f"/v1/jobs/{job_id}/events") as src:
            for event in src.iter_sse():
                if event.data:
                    events.append(json.loads(event.data))
                    if len(events) == 1:
                        opened.release()
        received.append(events)

    threads = [threading.Thread(target=follow) for _ in range(streams)]
    for thread in threads:  # one at a time, so opening them never needs two connections
        thread.start()
        assert opened.acquire(timeout=30), "a stream never delivered its first event"
    held = database_connections(stack)
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    for thread in threads:
        thread.join(timeout=60)
    # 40 open, idle streams: the poller's one pooled connection (and on Postgres its
    # LISTEN connection) more than before, not one per stream
    assert held - before <= 2, (before, held)
    assert len(received) == streams
    assert all([e["data"]["status"] for e in events] == ["queued", "cancelled"]
               for events in received)


def test_on_postgres_a_commit_wakes_the_poller_before_its_interval(
        tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    """With a 60 s poll interval and heartbeat, the cancel's event still arrives within the
    client's 30 s read timeout: the trigger's NOTIFY woke the poller (without it the stream
    would sit silent until the next round and the read would time out)."""
    with distributed_stack(tmp_path, postgres_url, redis_url,
                           TRAINYARD_EVENTS_POLL_SECONDS="60",
                           TRAINYARD_EVENTS_HEARTBEAT_SECONDS="60") as stack:
        client = stack.client()
        job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
        got: list[str] = []
        with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events",
                         timeout=httpx.Timeout(30, read=30)) as source:
            for event in source.iter_sse():  # the first round runs when a stream opens
                if event.data:
                    got.append(json.loads(event.data)["data"]["status"])
                    if got == ["queued"]:
                        client.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
        assert got == ["queued", "cancelled"]
