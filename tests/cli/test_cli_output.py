"""The CLI as a person and a script use it, against a running embedded deployment with a
real worker: what it prints (tables, CSV, JSON) and what it keeps quiet (the HTTP library's
request lines, unless --verbose)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack, tiny_spec

pytestmark = pytest.mark.integration


def trainyard(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = stack.env | {"TRAINYARD_URL": stack.url, "TRAINYARD_API_KEY": stack.key}
    done = subprocess.run([sys.executable, "-m", "trainyard.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_watch_tables_csv_and_json_show_only_what_was_asked(embedded: Stack,
                                                             tmp_path: Path) -> None:
    embedded.start_worker("w1")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(tiny_spec(name="cli-output", training__epochs=4)))
    submitted = trainyard(embedded, "submit", str(spec), "--watch")
    job_id = submitted.stdout.split()[0]
    assert f"{job_id} succeeded: test loss" in submitted.stdout
    everything = submitted.stdout + submitted.stderr
    assert "HTTP Request" not in everything and "httpx" not in everything, everything
    assert len(submitted.stdout.splitlines()) <= 4 + 3, submitted.stdout  # epochs + 3 lines

    verbose = trainyard(embedded, "jobs", "--verbose")
    assert "HTTP Request: GET" in verbose.stderr

    listing = trainyard(embedded, "jobs")
    assert listing.stdout.split()[:5] == ["ID", "STATUS", "EPOCH", "NAME", "TEST"]
    assert any(line.split()[:4] == [job_id, "succeeded", "4/4", "cli-output"]
               for line in listing.stdout.splitlines()), listing.stdout
    page = json.loads(trainyard(embedded, "jobs", "--json").stdout)
    assert [job["id"] for job in page["items"]] == [job_id]

    with embedded.client() as http:
        api_points = http.get(f"/v1/jobs/{job_id}/metrics").json()["points"]
    assert json.loads(trainyard(embedded, "metrics", job_id, "--json").stdout) == api_points
    rows = list(csv.DictReader(io.StringIO(trainyard(embedded, "metrics", job_id,
                                                     "--csv").stdout)))
    assert [row["epoch"] for row in rows] == sorted({str(p["epoch"]) for p in api_points},
                                                    key=int)
    val_loss = {p["epoch"]: p["value"] for p in api_points
                if (p["split"], p["name"]) == ("val", "loss")}
    assert {int(row["epoch"]): float(row["val_loss"]) for row in rows} == val_loss  # exact
    only = trainyard(embedded, "metrics", job_id, "--csv", "--split", "val", "--name", "loss")
    assert only.stdout.splitlines()[0] == "epoch,val_loss"
    table = trainyard(embedded, "metrics", job_id).stdout.splitlines()
    header = table[0].split()
    assert header[0] == "EPOCH" and {"TRAIN_LOSS", "VAL_LOSS", "VAL_ACCURACY"} <= set(header)
    assert len(table) == 1 + len(rows)

    shown = trainyard(embedded, "show", job_id).stdout
    assert any(line.split() == ["status", "succeeded"] for line in shown.splitlines()), shown
    assert json.loads(trainyard(embedded, "show", job_id, "--json").stdout)["id"] == job_id


def test_keys_list_as_json(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["TRAINYARD_HOME"] = str(tmp_path)

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "trainyard.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("migrate")
    key_id = run("keys", "create", "alice").split()[0]
    run("keys", "revoke", key_id)
    second = run("keys", "create", "bob").split()[0]
    listed = {k["id"]: k for k in json.loads(run("keys", "list", "--json"))}
    assert listed[key_id]["tenant"] == "alice" and listed[key_id]["revoked"] is True
    assert listed[second]["tenant"] == "bob" and listed[second]["revoked"] is False
    assert all("ty_" not in json.dumps(k) for k in listed.values())  # never the key itself
