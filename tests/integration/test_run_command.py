"""`trainyard run --demo` (what `make run` starts): API + a real worker on the embedded
default, a dev key, the digits demo trained to >= 0.95 test accuracy, Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration


def test_run_demo_trains_digits_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRAINYARD_DATABASE_URL", "TRAINYARD_BROKER_URL")}
    env |= {"TRAINYARD_HOME": str(tmp_path / "home"), "PORT": str(port),
            "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli", "run", "--demo"], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "succeeded: test" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        text = log.read_text()
        match = re.search(r"succeeded: test loss [\d.]+\s+accuracy ([\d.]+)", text)
        assert match, text[-3000:]
        assert float(match.group(1)) >= 0.95
        assert (tmp_path / "home" / "dev-key").read_text().startswith("ty_")
        assert f"http://127.0.0.1:{port}" in text
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        assert proc.wait(timeout=60) == 0
        assert "stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
