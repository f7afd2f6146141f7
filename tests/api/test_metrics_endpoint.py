"""GET /metrics: absent without TRAINYARD_METRICS_TOKEN, refused without that exact Bearer
token, and an exposition of aggregate series that names no tenant, job, path or host.

The first tests run the real app in-process; the last runs `trainyard api --workers 2` and a
worker as real processes, and checks that whichever API process answers a scrape reports
every process's counts (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import make_key, reset_caches
from tests.conftest import Stack, free_port, tiny_spec, wait_for, wait_job

TOKEN = "metrics-token-for-tests-0123456789"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@pytest.fixture()
def metrics_app(app_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("TRAINYARD_METRICS_TOKEN", TOKEN)
    reset_caches()
    from app.main import create_app

    with TestClient(create_app()) as client:
        yield client
    reset_caches()


def test_without_a_token_setting_there_is_no_metrics_route(client: TestClient) -> None:
    """Not on the public router: a tenant's key gets the API's ordinary 404."""
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", TOKEN,
                                           f"Basic {TOKEN}", f"Bearer {TOKEN}x", "tenant key"])
def test_anything_but_the_exact_bearer_token_is_refused(metrics_app: TestClient,
                                                        authorization: str | None) -> None:
    if authorization == "tenant key":  # a valid API key opens /v1, not /metrics
        authorization = f"Bearer {make_key('alice')}"
    headers = {"Authorization": authorization} if authorization else {}
    response = metrics_app.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "TRAINYARD_METRICS_TOKEN" in response.json()["error"]["message"]
    assert "trainyard_" not in response.text


def test_a_short_token_is_refused_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from app.config import Settings

    monkeypatch.setenv("TRAINYARD_METRICS_TOKEN", "short")
    with pytest.raises(ValidationError, match="metrics_token"):
        Settings()


def test_the_exposition_is_aggregate_and_names_no_tenant_job_or_host(
        metrics_app: TestClient) -> None:
    from app.config import get_settings
    from app.db import get_sessionmaker
    from app.services import workers

    host = socket.gethostname()
    workers.register(get_sessionmaker(), worker_id="wk_metricstest", node=f"w1@{host}",
                     queues=["cpu"], concurrency=1)
    before = scrape(metrics_app)  # this process's counters are shared by every test here
    tenant = "tenant-secret-name"
    auth = {"Authorization": f"Bearer {make_key(tenant)}"}
    jobs = [metrics_app.post("/v1/jobs", json=tiny_spec(name=f"j{i}"), headers=auth).json()
            for i in range(3)]
    gpu = metrics_app.post("/v1/jobs", json=tiny_spec(training__device="cuda"),
                           headers=auth).json()
    for job in jobs:
        assert metrics_app.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200
    metrics_app.get("/v1/jobs/job_doesnotexist", headers=auth)
    metrics_app.get("/v1/jobs", headers={"Authorization": "Bearer nope"})  # the gate's 401
    metrics_app.request("BREW", "/v1/jobs")  # a method is a label only if it is a known one

    response = metrics_app.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert value(text, "trainyard_jobs", status="queued", queue="cpu") == 3
    assert value(text, "trainyard_jobs", status="queued", queue=gpu["queue"]) == 1
    assert (value(text, "trainyard_queue_oldest_job_age_seconds", queue="cpu") or -1) >= 0
    route = "/v1/jobs/{job_id}"

    def grew(name: str, **labels: str) -> float:
        return (value(text, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert grew("trainyard_http_requests_total", method="GET", route=route, status="200") == 3
    assert grew("trainyard_http_requests_total", method="GET", route=route, status="404") == 1
    assert grew("trainyard_http_requests_total", method="GET", route="/v1/jobs",
                status="401") == 1
    assert grew("trainyard_http_requests_total", method="other", route="/v1/jobs",
                status="401") == 1
    assert grew("trainyard_http_request_duration_seconds_count", method="GET", route=route) == 4
    seen = value(text, "trainyard_worker_last_seen_timestamp_seconds", worker="wk_metricstest",
                 state="live")
    assert seen is not None and seen > 1.7e9
    assert value(text, "trainyard_workers", state="live") == 1
    assert value(text, "trainyard_database_up") == 1
    for secret in [tenant, host, "w1@", "job_doesnotexist", *(job["id"] for job in jobs)]:
        assert secret not in text, secret
    labels = {name for family in text_string_to_metric_families(text)
              if family.name.startswith("trainyard_") for s in family.samples
              for name in s.labels}
    assert labels <= {"method", "route", "status", "queue", "worker", "state", "outcome",
                      "action", "le"}, labels
    get_settings.cache_clear()


def test_sql_down_still_answers_with_database_up_zero(metrics_app: TestClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from app.services import operations

    def unreachable(*_: object) -> None:
        raise OperationalError("select 1", {}, Exception("connection refused"))

    monkeypatch.setattr(operations, "service_state", unreachable)
    response = metrics_app.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert value(response.text, "trainyard_database_up") == 0
    assert value(response.text, "trainyard_jobs", status="queued", queue="cpu") is None


def scrape(client: TestClient) -> str:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return response.text


# ------------------------------------------------------------- real processes


def counter_writers(folder: Path) -> set[int]:
    return {int(m.group(1)) for f in folder.glob("counter_*.db")
            if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))}


@pytest.mark.integration
def test_every_api_process_reports_every_process_counts(tmp_path: Path) -> None:
    """Two API processes and a worker share the host's folder: each scrape, whichever
    process serves it, reports all requests, the job's attempt and each of its epochs; the
    worker's own endpoint (for workers on other hosts) serves the same process series."""
    stack = Stack(tmp_path, {"TRAINYARD_METRICS_TOKEN": TOKEN})
    for name in ("TRAINYARD_DATABASE_URL", "TRAINYARD_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR"):
        stack.env.pop(name, None)
    try:
        stack.cli("migrate")
        stack.key = stack.new_key("dev")
        stack.start("api", "api", "--host", "127.0.0.1", "--port", str(stack.port),
                    "--workers", "2")
        wait_for(lambda: _status(f"{stack.url}/healthz") == 200, 60, 0.2, "the API")
        worker_port = free_port()
        stack.env["TRAINYARD_WORKER_METRICS_PORT"] = str(worker_port)
        stack.start_worker("w1")
        with stack.client() as http:
            job = http.post("/v1/jobs", json=tiny_spec(training__epochs=3)).json()
            assert wait_job(http, job["id"], timeout=120)["status"] == "succeeded"
        for _ in range(30):  # a new connection each: the kernel spreads them over both
            assert httpx.get(f"{stack.url}/healthz").status_code == 200
        servers = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]",
                                                  stack.log("api"))}
        served = servers & counter_writers(tmp_path / "metrics")
        assert len(served) == 2, f"both API processes must have served: {servers}, {served}"
        scrapes = [httpx.get(f"{stack.url}/metrics",
                             headers={"Authorization": f"Bearer {TOKEN}"}).text
                   for _ in range(6)]
        health = {value(text, "trainyard_http_requests_total", method="GET", route="/healthz",
                        status="200") for text in scrapes}
        assert len(health) == 1 and health.pop() >= 30, "every scrape: every process's count"
        for text in scrapes:
            assert value(text, "trainyard_job_attempt_duration_seconds_count",
                         outcome="succeeded") == 1
            assert value(text, "trainyard_epoch_duration_seconds_count") == 3
            assert value(text, "trainyard_jobs", status="succeeded", queue="cpu") == 1
        # the worker's own bind serves the same host's series, and no SQL state
        served_by_worker = httpx.get(f"http://127.0.0.1:{worker_port}/metrics").text
        assert value(served_by_worker, "trainyard_epoch_duration_seconds_count") == 3
        assert value(served_by_worker, "trainyard_jobs", status="succeeded", queue="cpu") is None
    finally:
        stack.stop_all()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_worker_side_observations_reach_the_exposition(metrics_app: TestClient) -> None:
    """What the worker's reaper thread and execute() report (their real-process path is the
    integration test above): failures keep their outcome, not their reason; attempts that
    claimed nothing are not runs."""
    from app.observability import observe_job_attempt, observe_reaper_pass

    before = scrape(metrics_app)
    observe_reaper_pass({"enqueued": ["job_reaped1", "job_reaped2"], "failed": ["job_reaped3"],
                         "cancelled": [], "advanced": ["exp_reaped4"]})
    observe_job_attempt("failed:diverged", 3.0)
    observe_job_attempt("lease-lost", 1.0)
    observe_job_attempt("not-claimed", 0.01)
    observe_job_attempt("database-unavailable", 0.01)
    after = scrape(metrics_app)

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert grew("trainyard_reaper_actions_total", action="enqueued") == 2
    assert grew("trainyard_reaper_actions_total", action="failed") == 1
    assert grew("trainyard_reaper_actions_total", action="advanced") == 1
    assert grew("trainyard_job_attempt_duration_seconds_count", outcome="failed") == 1
    assert grew("trainyard_job_attempt_duration_seconds_sum", outcome="failed") == 3.0
    assert grew("trainyard_job_attempt_duration_seconds_count", outcome="lease_lost") == 1
    outcomes = {dict(labels).get("outcome") for name, labels in samples(after)
                if name.startswith("trainyard_job_attempt")}
    assert not outcomes & {"not_claimed", "database_unavailable", "failed:diverged"}
    assert "reaped" not in after
