"""Structured logs and request ids: X-Request-ID kept when sane, made otherwise, echoed on
every answer (the gate's refusals included); with TRAINYARD_LOG_FORMAT=json every record is
one JSON object carrying the ids known where it was made."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import logs
from tests.api.conftest import make_key, reset_caches

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture()
def json_logs() -> Iterator[io.StringIO]:
    """Our JSON handler on the root logger (levels as configured), writing to a buffer."""
    root, out = logging.getLogger(), io.StringIO()
    ours = logs.handler("json", out)
    saved = root.level, {name: logging.getLogger(name).level for name in logs.QUIET}
    root.addHandler(ours)
    root.setLevel(logging.INFO)
    for name in logs.QUIET:
        logging.getLogger(name).setLevel(logs.logging_config("json")["loggers"][name]["level"])
    yield out
    root.removeHandler(ours)
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)


def records(out: io.StringIO) -> list[dict[str, Any]]:
    """Every line written: each must be one JSON object."""
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.fixture()
def probed(app_home: Path) -> Iterator[TestClient]:
    """The real app plus one route that logs, under /v1 so the gate authenticates it."""
    reset_caches()
    from app.main import create_app

    app = create_app()

    @app.get("/v1/jobs/{job_id}/log-probe")
    def probe(job_id: str) -> dict[str, str]:
        logging.getLogger("trainyard.probe").info("probing %s", job_id)
        return {"ok": job_id}

    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {make_key('alice')}"
        yield client


def test_a_sane_request_id_is_echoed(probed: TestClient) -> None:
    sent = "req-2026.12.01:abc_DEF-123"
    response = probed.get("/v1/jobs", headers={"X-Request-ID": sent})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == sent


@pytest.mark.parametrize("sent", [None, "", "x" * 129, "has space", "quote\"d", "ünï"])
def test_a_missing_or_odd_request_id_is_replaced(probed: TestClient, sent: str | None) -> None:
    headers = {"X-Request-ID": sent.encode("utf-8")} if sent is not None else {}
    response = probed.get("/v1/jobs", headers=headers)  # type: ignore[arg-type]
    assert GENERATED.fullmatch(response.headers["X-Request-ID"]), response.headers


def test_refusals_and_errors_carry_a_request_id_too(probed: TestClient) -> None:
    unauthenticated = probed.get("/v1/jobs", headers={"Authorization": "Bearer wrong",
                                                      "X-Request-ID": "refused-1"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["X-Request-ID"] == "refused-1"
    missing = probed.get("/v1/jobs/job_nope")
    assert missing.status_code == 404 and GENERATED.fullmatch(missing.headers["X-Request-ID"])
    assert probed.get("/healthz").headers["X-Request-ID"]


def test_json_records_carry_request_tenant_and_job_ids(
        probed: TestClient, json_logs: io.StringIO) -> None:
    response = probed.get("/v1/jobs/job_abc/log-probe", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    lines = [r for r in records(json_logs) if r["logger"] == "trainyard.probe"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["message"] == "probing job_abc" and line["level"] == "INFO"
    assert line["request_id"] == "req-42" and line["tenant"] == "alice"
    assert line["job_id"] == "job_abc"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", line["timestamp"]), line


def test_outside_a_request_a_record_has_only_what_is_bound(
        json_logs: io.StringIO) -> None:
    log = logging.getLogger("trainyard.worker")
    with logs.bind(job_id="job_1", experiment_id="exp_2"):
        log.warning("inside")
    log.warning("outside")
    inside, outside = records(json_logs)
    assert (inside["job_id"], inside["experiment_id"]) == ("job_1", "exp_2")
    assert "job_id" not in outside and "request_id" not in outside
    assert (outside["level"], outside["logger"], outside["message"]) == (
        "WARNING", "trainyard.worker", "outside")


def test_an_exception_is_one_json_line_with_its_traceback(
        json_logs: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("trainyard.api").exception("failed")
    assert len(json_logs.getvalue().strip().splitlines()) == 1
    (line,) = records(json_logs)
    assert line["level"] == "ERROR" and "ValueError: boom" in line["exc_info"]


def test_alembic_and_httpx_info_lines_are_quiet(json_logs: io.StringIO) -> None:
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate")
    logging.getLogger("httpx").info("HTTP Request: GET http://x")
    logging.getLogger("alembic.runtime.migration").warning("kept")
    assert [r["message"] for r in records(json_logs)] == ["kept"]


def test_the_gate_and_the_log_context_agree_on_the_tenant_key() -> None:
    from app.main import TENANT_SCOPE_KEY

    assert logs.TENANT_SCOPE_KEY == TENANT_SCOPE_KEY
