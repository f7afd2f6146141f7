"""What a person sees from `trainyard run`, as real processes: with TRAINYARD_LOG_FORMAT=json
every line on stderr (the API's, the worker's, its pool child's) is one JSON object, the
worker's lines carry the job's id, nothing from alembic; and Ctrl-C while the demo job
trains stops everything cleanly: exit 0, no ERROR, no traceback, no process left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.integration


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_during_the_demo_stops_cleanly_with_json_logs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAINYARD_", "PROMETHEUS_"))}
    env |= {"TRAINYARD_HOME": str(tmp_path / "home"), "TRAINYARD_LOG_FORMAT": "json",
            "PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # its own session, like a terminal's foreground group, so Ctrl-C reaches every process
        run = subprocess.Popen([sys.executable, "-m", "trainyard.cli", "run", "--demo"],
                               cwd=ROOT, env=env, stdout=stdout, stderr=stderr,
                               start_new_session=True)
        try:
            wait_for(lambda: "attempt 1 on" in err.read_text(), 180, 0.3,
                     "the demo job to start training")
            time.sleep(0.5)
            os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does
            code = run.wait(timeout=120)
            wait_for(lambda: not group_alive(run.pid), 60, 0.3, "every process to exit")
        finally:
            if group_alive(run.pid):
                os.killpg(run.pid, signal.SIGKILL)
    printed, logged = out.read_text(), err.read_text()
    assert code == 0, (printed, logged[-3000:])
    records = json_lines(logged)  # raises on any line that is not one JSON object
    assert records, "the processes logged nothing"
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], logged[-3000:]
    assert not [r for r in records if r["logger"].startswith(("alembic", "httpx"))]
    assert {"timestamp", "level", "logger", "message"} <= set(records[0])
    attempts = [r for r in records if "attempt 1 on" in r["message"]]
    job_id = attempts[0]["message"].split()[1].rstrip(":")
    assert attempts[0]["job_id"] == job_id
    assert "Traceback" not in printed + logged and "cannot reach" not in printed + logged
    assert "stopped" in printed


def test_migrate_prints_one_line_and_no_library_chatter(tmp_path: Path) -> None:
    """Alembic announced each plugin it set up and each revision at INFO; the command says
    where the schema is, once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["TRAINYARD_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "trainyard.cli", "migrate"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("database at head: ") and len(done.stdout.splitlines()) == 1
    assert done.stderr == "", done.stderr
