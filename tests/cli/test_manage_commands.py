"""The lifecycle commands against a running embedded deployment with a real worker: tag,
jobs filters and order, compare, datasets, usage, cancel, delete (which asks first), and the
operator's tenants quota and gc."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack, tiny_spec, wait_job

pytestmark = pytest.mark.integration
CSV = b"a,b,label\n" + b"".join(b"%d.5,%d,%d\n" % (i, i % 7, i % 2) for i in range(80))


def run(stack: Stack, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = stack.env | {"TRAINYARD_URL": stack.url, "TRAINYARD_API_KEY": stack.key}
    done = subprocess.run([sys.executable, "-m", "trainyard.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert (done.returncode == 0) == ok, (args, done.stdout, done.stderr)
    return done


def test_managing_runs_from_the_command_line(embedded: Stack, tmp_path: Path) -> None:
    embedded.start_worker("w1")
    with embedded.client() as http:
        slow = http.post("/v1/jobs", json=tiny_spec(name="slow", optimizer__lr=0.001)).json()
        fast = http.post("/v1/jobs", json=tiny_spec(name="fast", optimizer__lr=0.05)).json()
        for job in (slow, fast):
            assert wait_job(http, job["id"])["status"] == "succeeded"
        queued = http.post("/v1/jobs", json=tiny_spec(  # still training when deleted
            name="late", data={"source": {"builtin": "digits"}},
            model={"kind": "mlp", "hidden": [256, 256]}, training__epochs=300)).json()

    run(embedded, "tag", slow["id"], "--add", "base", "--add", "lr", "--note", "the slow one")
    run(embedded, "tag", fast["id"], "--add", "lr", "--keep")
    shown = json.loads(run(embedded, "show", slow["id"], "--json").stdout)
    assert (shown["tags"], shown["note"], shown["keep"]) == (["base", "lr"], "the slow one",
                                                             False)
    run(embedded, "tag", slow["id"], "--remove", "base", "--clear-note")
    shown = json.loads(run(embedded, "show", slow["id"], "--json").stdout)
    assert (shown["tags"], shown["note"]) == (["lr"], None)

    tagged = json.loads(run(embedded, "jobs", "--tag", "lr", "--json").stdout)
    assert {j["id"] for j in tagged["items"]} == {slow["id"], fast["id"]}
    ranked = json.loads(run(embedded, "jobs", "--order-by=-test_accuracy", "--limit", "1",
                            "--json").stdout)
    assert len(ranked["items"]) == 1 and ranked["next_cursor"]
    rest = json.loads(run(embedded, "jobs", "--order-by=-test_accuracy", "--cursor",
                          ranked["next_cursor"], "--json").stdout)
    assert {j["id"] for j in ranked["items"] + rest["items"]} == {slow["id"], fast["id"]}

    table = run(embedded, "compare", slow["id"], fast["id"]).stdout
    assert "optimizer.lr" in table and "0.001" in table and "0.05" in table
    assert "last val_loss" in table and "test accuracy" in table

    (tmp_path / "d.csv").write_bytes(CSV)
    uploaded = json.loads(run(embedded, "datasets", "upload", str(tmp_path / "d.csv"),
                              "--target", "label", "--json").stdout)
    listed = run(embedded, "datasets", "list").stdout
    assert uploaded["id"] in listed
    usage = json.loads(run(embedded, "usage", "--json").stdout)
    assert usage["datasets"] == 1 and usage["storage_bytes"]["datasets"] == uploaded["size_bytes"]

    refused = run(embedded, "delete", slow["id"], ok=False)  # not a terminal: needs --yes
    assert "--yes" in refused.stderr
    run(embedded, "delete", slow["id"], "--yes")
    run(embedded, "datasets", "delete", uploaded["id"], "--yes")
    features_only = json.loads(run(embedded, "datasets", "upload", str(tmp_path / "d.csv"),
                                   "--task", "unlabeled", "--json").stdout)
    assert features_only["task"] == "unlabeled"  # every column a feature, label included
    assert features_only["features"] == uploaded["features"] + 1
    run(embedded, "datasets", "delete", features_only["id"], "--yes")
    busy = run(embedded, "delete", queued["id"], "--yes", ok=False)
    assert "cancel" in busy.stderr  # the API's 409 reason, as it wrote it
    assert run(embedded, "cancel", queued["id"]).stdout.split()[0] == queued["id"]
    run(embedded, "show", slow["id"], ok=False)

    quota = json.loads(run(embedded, "tenants", "quota", "dev", "--datasets", "0").stdout)
    assert quota["quota"]["datasets"] == 0
    over = run(embedded, "datasets", "upload", str(tmp_path / "d.csv"), "--target", "label",
               ok=False)
    assert "HTTP 403" in over.stderr and "quota" in over.stderr
    assert json.loads(run(embedded, "gc").stdout) == {"jobs": 0, "experiments": 0}
