"""``trainyard api --workers N``: N server processes behind one port, on the embedded
default (SQLite in WAL mode serves readers from several processes)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, tiny_spec, wait_for
from trainyard.cli import api_workers, parser


def started_pids(log: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", log)}


def test_api_serves_from_two_processes(tmp_path: Path) -> None:
    stack = Stack(tmp_path, {})
    stack.env.pop("TRAINYARD_DATABASE_URL", None)
    stack.env.pop("TRAINYARD_BROKER_URL", None)
    try:
        stack.cli("migrate")
        stack.key = stack.new_key("dev")
        api = stack.start("api", "api", "--host", "127.0.0.1", "--port", str(stack.port),
                          "--workers", "2")
        pids = wait_for(lambda: len(started_pids(stack.log("api"))) == 2
                        and started_pids(stack.log("api")), 60, 0.2, "two server processes")
        assert api.pid not in pids, "the supervisor is not itself a server process"
        wait_for(lambda: _ready(stack.url), 60, 0.2, "/readyz")
        with stack.client() as client:
            job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
            seen = {client.get(f"/v1/jobs/{job_id}").status_code for _ in range(20)}
        assert seen == {200}
    finally:
        stack.stop_all()


def test_workers_flag_setting_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    assert api_workers(parser().parse_args(["api", "--workers", "3"]).workers) == 3
    monkeypatch.setenv("TRAINYARD_API_WORKERS", "2")
    get_settings.cache_clear()
    assert api_workers(None) == 2
    monkeypatch.delenv("TRAINYARD_API_WORKERS")
    get_settings.cache_clear()
    assert 2 <= api_workers(None) == max(2, min((os.cpu_count() or 1) // 2, 4))
    get_settings.cache_clear()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
