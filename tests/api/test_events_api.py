"""The SSE routes in-process (SQLite built by Alembic, so migration 0006's triggers write the
events): a job's stream in order to its terminal status, then closed; resuming from any id
delivers exactly the rest; an experiment's composite ids; tenancy (404), ids the API never
issued (422), heartbeats on an idle stream, the per-process cap (503)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx_sse import ServerSentEvent, connect_sse

from app import repository as repo
from app.clock import utcnow
from app.db import session_scope
from app.statuses import ExperimentStatus, JobStatus
from tests.api.conftest import reset_caches
from tests.conftest import tiny_spec


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs stay queued until a test drives them through the repository, as a worker would."""
    monkeypatch.setattr("app.services.jobs.enqueue_job", lambda *a: None)


def read(client: httpx.Client, path: str, last_id: str | None = None) -> list[ServerSentEvent]:
    """Every event of a stream (the server ends it), comments and the retry hint left out;
    none when the server answers 204 (nothing can follow ``last_id``)."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    with connect_sse(client, "GET", path, headers=headers) as source:
        if source.response.status_code == 204:
            return []
        assert source.response.status_code == 200, source.response.read()
        return [e for e in source.iter_sse() if e.data]


def train(job_id: str, epochs: int, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    """What a worker writes for a job: claim, each epoch's progress and metrics, the end."""
    with session_scope() as s:
        repo.claim(s, job_id, "w", utcnow(), 60)
    for epoch in range(1, epochs + 1):
        rows = [{"job_id": job_id, "epoch": epoch, "split": split, "name": "loss",
                 "value": 1 / epoch, "attempt": 1} for split in ("train", "val")]
        with session_scope() as s:
            repo.record_epoch(s, job_id=job_id, attempt=1, epoch=epoch, rows=rows, now=utcnow(),
                              lease=60)
    with session_scope() as s:
        repo.finish(s, job_id=job_id, attempt=1, status=status, now=utcnow())


def subject_seq(event: ServerSentEvent) -> tuple[str, int]:
    body = json.loads(event.data)
    return body["job_id"] or body["experiment_id"], body["seq"]


def test_a_job_stream_runs_in_order_to_its_terminal_status(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    train(job_id, epochs=3)
    events = read(client, f"/v1/jobs/{job_id}/events")  # returns: the server ended it
    kinds = [e.event for e in events]
    assert kinds == ["status", "status", *["progress", "metric", "metric"] * 3, "status"]
    assert [e.id for e in events] == [str(n) for n in range(1, 13)]
    bodies = [json.loads(e.data) for e in events]
    assert [b["data"]["status"] for b in bodies if b["kind"] == "status"] == [
        "queued", "running", "succeeded"]
    assert [b["data"]["epoch"] for b in bodies if b["kind"] == "progress"] == [1, 2, 3]
    points = client.get(f"/v1/jobs/{job_id}/metrics").json()["points"]
    assert sorted((b["data"]["epoch"], b["data"]["split"], b["data"]["value"])
                  for b in bodies if b["kind"] == "metric") == sorted(
        (p["epoch"], p["split"], p["value"]) for p in points)
    assert all(b["job_id"] == job_id and b["experiment_id"] is None for b in bodies)


def test_resuming_a_job_stream_from_any_id_delivers_exactly_the_rest(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    train(job_id, epochs=2, status=JobStatus.FAILED)
    events = read(client, f"/v1/jobs/{job_id}/events")
    for k, event in enumerate(events):
        rest = read(client, f"/v1/jobs/{job_id}/events", last_id=event.id)
        assert [(e.id, e.data) for e in rest] == [(e.id, e.data) for e in events[k + 1:]]
    # after the end, a reconnect is told there is nothing more (an EventSource stops)
    ended = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[-1].id})
    assert ended.status_code == 204 and ended.content == b""


def make_experiment(client: TestClient) -> tuple[str, list[str]]:
    body = {"kind": "cross_validation", "k": 2, "name": "cv", "base": tiny_spec()}
    exp_id = client.post("/v1/experiments", json=body).json()["id"]
    children = [j["id"] for j in client.get(f"/v1/experiments/{exp_id}/jobs").json()["items"]]
    return exp_id, children


def test_an_experiment_stream_spans_its_children_with_composite_ids(client: TestClient) -> None:
    exp_id, children = make_experiment(client)
    for child in children:
        train(child, epochs=2)
    with session_scope() as s:
        repo.finish_experiment(s, exp_id, stage=0, status=ExperimentStatus.SUCCEEDED,
                               result={}, now=utcnow())
    events = read(client, f"/v1/experiments/{exp_id}/events")
    own = [json.loads(e.data) for e in events if e.event.startswith("experiment_")
           or e.event == "child"]
    assert [b["kind"] for b in own] == ["experiment_status", "child", "child",
                                        "experiment_status"]
    assert [b["data"]["job_id"] for b in own if b["kind"] == "child"] == children
    # each id is the experiment's sequence, then each announced child's
    assert events[0].id == "1" and events[1].id == "2.0" and events[2].id == "3.0.0"
    assert events[-1].id == "4.9.9"  # 4 own events; each child: 2 statuses, 2 epochs x 3, end
    assert len(events) == 4 + 9 + 9
    assert {subject_seq(e) for e in events} == {(exp_id, n) for n in range(1, 5)} | {
        (child, n) for child in children for n in range(1, 10)}


def test_resuming_an_experiment_stream_delivers_exactly_the_rest(client: TestClient) -> None:
    """No event lost or repeated, each subject's events in order, from every id."""
    exp_id, children = make_experiment(client)
    train(children[0], epochs=1)
    with session_scope() as s:
        repo.cancel_experiment(s, repo.get_experiment(s, "alice", exp_id), utcnow())  # type: ignore[arg-type]
    events = read(client, f"/v1/experiments/{exp_id}/events")
    assert client.get(f"/v1/experiments/{exp_id}/events",
                      headers={"Last-Event-ID": events[-1].id}).status_code == 204
    for k, event in enumerate(events):
        rest = read(client, f"/v1/experiments/{exp_id}/events", last_id=event.id)
        expected = [subject_seq(e) for e in events[k + 1:]]
        got = [subject_seq(e) for e in rest]
        assert sorted(got) == sorted(expected), event.id
        for subject in {s for s, _ in got}:
            assert [n for s, n in got if s == subject] == [n for s, n in expected if s == subject]


def test_another_tenants_or_a_missing_id_is_404(client: TestClient,
                                                other_client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    exp_id, _ = make_experiment(client)
    for path in (f"/v1/jobs/{job_id}/events", f"/v1/experiments/{exp_id}/events"):
        foreign = other_client.get(path)
        missing = other_client.get(path.replace(job_id, "job_0").replace(exp_id, "exp_0"))
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["error"]["code"] == "not_found"
    no_key = httpx.Client(transport=client._transport, base_url=str(client.base_url))
    assert no_key.get(f"/v1/jobs/{job_id}/events").status_code == 401


@pytest.mark.parametrize(("last_id", "loc", "why"), [
    ("x", "header.Last-Event-ID", "should match pattern"),  # the schema's own pattern
    ("1.", "header.Last-Event-ID", "should match pattern"),
    ("9", "Last-Event-ID", "is past the job's last event (1)"),
    ("1.0", "Last-Event-ID", "is an experiment stream's id, not a job's")])
def test_a_job_last_event_id_the_api_never_issued_is_422(client: TestClient, last_id: str,
                                                         loc: str, why: str) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    answer = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last_id})
    assert answer.status_code == 422
    field = answer.json()["error"]["fields"][0]
    assert field["loc"] == loc and why in field["message"], field


@pytest.mark.parametrize(("last_id", "why"), [
    ("4", "is past the experiment's last event (3)"),
    ("2.0.0", "names 2 children; 1 were announced"),
    ("3.5.0", "is past child")])
def test_an_experiment_last_event_id_the_api_never_issued_is_422(
        client: TestClient, last_id: str, why: str) -> None:
    exp_id, _ = make_experiment(client)
    answer = client.get(f"/v1/experiments/{exp_id}/events", headers={"Last-Event-ID": last_id})
    assert answer.status_code == 422 and why in answer.json()["error"]["message"]


@pytest.fixture()
def tight(app_home: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """An app with quick heartbeats and room for one stream."""
    monkeypatch.setenv("TRAINYARD_EVENTS_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setenv("TRAINYARD_EVENTS_MAX_STREAMS", "1")
    reset_caches()
    from app.main import create_app
    from tests.api.conftest import make_key

    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {make_key('alice')}"
        yield c


def cancel_later(job_id: str, seconds: float) -> threading.Thread:
    def cancel() -> None:
        time.sleep(seconds)
        with session_scope() as s:
            repo.cancel(s, repo.get_job(s, "alice", job_id), utcnow())  # type: ignore[arg-type]

    thread = threading.Thread(target=cancel)
    thread.start()
    return thread


def test_an_idle_stream_gets_heartbeats_and_ends_with_its_job(tight: TestClient) -> None:
    job_id = tight.post("/v1/jobs", json=tiny_spec()).json()["id"]
    canceller = cancel_later(job_id, 1.0)
    with tight.stream("GET", f"/v1/jobs/{job_id}/events") as answer:
        lines = list(answer.iter_lines())
    canceller.join()
    heartbeats = [n for n, line in enumerate(lines) if line == ": heartbeat"]
    cancelled = next(n for n, line in enumerate(lines) if '"cancelled"' in line)
    assert len(heartbeats) >= 2 and heartbeats[0] < cancelled, lines


def test_a_stream_over_the_process_cap_is_refused_503(tight: TestClient) -> None:
    job_id = tight.post("/v1/jobs", json=tiny_spec()).json()["id"]
    first: list[int] = []
    reader = threading.Thread(target=lambda: first.append(
        tight.get(f"/v1/jobs/{job_id}/events").status_code))
    reader.start()
    hub = tight.app.state  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while not getattr(hub, "event_hub", None) or not hub.event_hub.subscriptions:
        assert time.monotonic() < deadline, "the first stream never opened"
        time.sleep(0.05)
    refused = tight.get(f"/v1/jobs/{job_id}/events")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "events_max_streams" in refused.json()["error"]["message"]
    cancel_later(job_id, 0).join()
    reader.join(timeout=10)
    assert first == [200]
    assert not hub.event_hub.subscriptions  # the ended stream left the hub
