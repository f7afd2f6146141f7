"""The CLI's client commands against a running embedded deployment: submit and watch a job
and an experiment, list, show, and a refused spec reported without a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack, tiny_spec

pytestmark = pytest.mark.integration


def test_cli_submits_watches_lists_and_shows(embedded: Stack, tmp_path: Path) -> None:
    embedded.start_worker("w1")
    embedded.env |= {"TRAINYARD_URL": embedded.url, "TRAINYARD_API_KEY": embedded.key}
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(tiny_spec(name="cli-job")))
    out = embedded.cli("submit", str(job_file), "--watch", timeout=180)
    job_id = out.split()[0]
    assert job_id.startswith("job_") and f"{job_id} succeeded: test loss" in out, out

    exp_file = tmp_path / "cv.json"
    exp_file.write_text(json.dumps({"kind": "cross_validation", "k": 2, "name": "cli-cv",
                                    "base": tiny_spec()}))
    out = embedded.cli("submit", str(exp_file), "--watch", timeout=180)
    exp_id = out.split()[0]
    assert exp_id.startswith("exp_"), out
    assert "2/2 children done" in out
    assert re.search(rf"{exp_id} succeeded: val accuracy 0\.\d+ ± 0\.\d+", out), out

    listing = embedded.cli("experiments", "--kind", "cross_validation")
    assert re.search(rf"{exp_id}\s+succeeded\s+2/2\s+cross_validation\s+cli-cv", listing)
    assert json.loads(embedded.cli("show", exp_id, "--json"))["result"]["val"]["accuracy"]["n"] == 2
    assert json.loads(embedded.cli("show", job_id, "--json"))["name"] == "cli-job"
    assert job_id in embedded.cli("jobs", "--status", "succeeded")


def test_cli_reports_a_refused_spec_by_field(embedded: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tiny_spec(model__hidden=[-1])))
    env = embedded.env | {"TRAINYARD_URL": embedded.url, "TRAINYARD_API_KEY": embedded.key}
    out = subprocess.run([sys.executable, "-m", "trainyard.cli", "submit", str(bad)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "HTTP 422" in out.stderr and "model.hidden" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
