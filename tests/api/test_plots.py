"""Plots on SQLite, in-process: a job's curves written through the worker's own repository
calls, every experiment kind drawn from results a real run stored (tests/api/data), the
refusals (unknown name, another tenant, nothing to draw yet), and the API's idle footprint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.plots.experiments import EXPERIMENT_PLOTS
from app.spec_unions import EXPERIMENT_KINDS
from tests.conftest import ROOT, tiny_spec

RESULTS = json.loads((Path(__file__).parent / "data" / "experiment_results.json").read_text())
SERIES = re.compile(r'id="series-([A-Za-z0-9_.-]+?)(?:--\d+)?"')
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def series_in(svg: bytes) -> set[str]:
    """The series a drawn SVG holds (render.series tags each with its gid)."""
    return set(SERIES.findall(svg.decode()))


def submit(client: TestClient, **overrides: Any) -> str:
    r = client.post("/v1/jobs", json=tiny_spec(**overrides))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def write_epochs(job_id: str, epochs: int, *, finish_summary: dict[str, Any] | None = None) -> None:
    """What a worker writes: claim, then one fenced record_epoch per epoch (and the end)."""
    from app import repository as repo
    from app.clock import utcnow
    from app.db import session_scope
    from app.statuses import JobStatus

    with session_scope() as session:
        claimed = repo.claim(session, job_id, "wk_test:1", utcnow(), 60)
        assert claimed is not None
        attempt = claimed.attempt
        session.commit()
        for epoch in range(1, epochs + 1):
            rows = [{"job_id": job_id, "epoch": epoch, "split": split, "name": name,
                     "value": value, "attempt": attempt}
                    for split, name, value in (("train", "loss", 1 / epoch),
                                               ("val", "loss", 1.2 / epoch + 0.01 * epoch),
                                               ("train", "accuracy", 1 - 0.5 / epoch),
                                               ("val", "accuracy", 0.9 - 0.4 / epoch),
                                               ("train", "lr", 0.01),
                                               ("train", "grad_norm", 2.0 / epoch))]
            repo.record_epoch(session, job_id=job_id, attempt=attempt, epoch=epoch, rows=rows,
                              now=utcnow(), lease=60)
            session.commit()
        if finish_summary is not None:
            repo.finish(session, job_id=job_id, attempt=attempt, status=JobStatus.SUCCEEDED,
                        now=utcnow(), summary=finish_summary)
            session.commit()


def summary(best_epoch: int) -> dict[str, Any]:
    metrics = {"loss": 0.3, "accuracy": 0.9}
    return {"task": "classification", "epochs_completed": 4, "best_epoch": best_epoch,
            "monitor": "val_loss", "best_value": 0.3, "early_stopped": False,
            "stopped_epoch": None, "parameters": 81, "rows": {"train": 280, "val": 40,
                                                              "test": 80},
            "seed": 0, "device": "cpu", "versions": {}, "train": metrics, "val": metrics,
            "test": metrics, "generalization_gap": {"loss": 0.0, "accuracy": 0.0},
            "macro_f1": 0.9, "confusion_matrix": [[38, 2], [6, 34]]}


def test_a_running_job_draws_its_curves_with_the_best_epoch_so_far(client: TestClient) -> None:
    job_id = submit(client)
    write_epochs(job_id, 4)
    listed = client.get(f"/v1/jobs/{job_id}/plots").json()["plots"]
    assert [p["name"] for p in listed] == ["loss", "metric", "lr", "grad_norm",
                                            "confusion_matrix"]
    r = client.get(f"/v1/jobs/{job_id}/plots/loss.svg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert series_in(r.content) == {"train_loss", "val_loss"}
    # val_loss 1.2/e + 0.01e is lowest at epoch 4 of 4 here; the marker says so in words
    assert 'id="marker-best-epoch"' in r.text and "best epoch (4, by val_loss)" in r.text
    assert series_in(client.get(f"/v1/jobs/{job_id}/plots/metric.svg").content) == {
        "train_accuracy", "val_accuracy"}
    assert series_in(client.get(f"/v1/jobs/{job_id}/plots/lr.svg").content) == {"train_lr"}
    png = client.get(f"/v1/jobs/{job_id}/plots/grad_norm.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(PNG_MAGIC)
    r = client.get(f"/v1/jobs/{job_id}/plots/confusion_matrix.svg")
    assert r.status_code == 409 and "when the job succeeds" in r.json()["error"]["message"]


def test_a_finished_job_marks_the_summarys_best_epoch_and_draws_its_confusion_matrix(
        client: TestClient) -> None:
    job_id = submit(client)
    write_epochs(job_id, 4, finish_summary=summary(best_epoch=2))
    loss = client.get(f"/v1/jobs/{job_id}/plots/loss.svg").text
    assert "best epoch (2, by val_loss)" in loss
    matrix = client.get(f"/v1/jobs/{job_id}/plots/confusion_matrix.svg")
    assert matrix.status_code == 200 and series_in(matrix.content) == {"confusion_matrix"}
    assert ">34<" in matrix.text  # the counts are written in the cells


def test_refusals_name_what_is_wrong(client: TestClient, other_client: TestClient) -> None:
    job_id = submit(client)
    r = client.get(f"/v1/jobs/{job_id}/plots/loss.svg")
    assert r.status_code == 409 and "no metrics yet (status queued)" in r.json()["error"]["message"]
    r = client.get(f"/v1/jobs/{job_id}/plots/roc.svg")
    assert r.status_code == 404
    assert r.json()["error"]["message"].endswith("loss, metric, lr, grad_norm, confusion_matrix")
    assert client.get(f"/v1/jobs/{job_id}/plots/loss.jpg").status_code == 422
    for path in (f"/v1/jobs/{job_id}/plots", f"/v1/jobs/{job_id}/plots/loss.svg"):
        mine, theirs = other_client.get(path), client.get(path.replace(job_id, "job_missing"))
        assert mine.status_code == theirs.status_code == 404
        assert mine.json()["error"]["message"] == theirs.json()["error"]["message"].replace(
            "job_missing", job_id)
    assert client.get(f"/v1/jobs/{job_id}/plots/loss.svg",
                      headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_regression_job_has_no_confusion_matrix(client: TestClient) -> None:
    job_id = submit(client, data={"source": {"synthetic": "function", "n_samples": 100}},
                    loss={"kind": "mse"})
    names = [p["name"] for p in client.get(f"/v1/jobs/{job_id}/plots").json()["plots"]]
    assert names == ["loss", "metric", "lr", "grad_norm"]
    assert client.get(f"/v1/jobs/{job_id}/plots/confusion_matrix.svg").status_code == 404


def test_an_experiment_plot_waits_for_the_result(client: TestClient,
                                                 other_client: TestClient) -> None:
    request = {"kind": "cross_validation", "k": 2, "base": tiny_spec()}
    exp_id = client.post("/v1/experiments", json=request).json()["id"]
    assert client.get(f"/v1/experiments/{exp_id}/plots").json()["plots"][0]["name"] == "folds"
    r = client.get(f"/v1/experiments/{exp_id}/plots/folds.svg")
    assert r.status_code == 409 and "no result yet" in r.json()["error"]["message"]
    r = client.get(f"/v1/experiments/{exp_id}/plots/leaderboard.svg")
    assert r.status_code == 404 and r.json()["error"]["message"].endswith("plots are: folds")
    assert other_client.get(f"/v1/experiments/{exp_id}/plots/folds.svg").status_code == 404


# What each kind's plots must hold, counted from the stored result rather than the drawing.
def expected_series(kind: str, name: str, result: dict[str, Any]) -> int:
    if kind == "cross_validation":
        return 3 * len(result["val"])  # bars, mean, spread per metric
    if kind == "sweep" and name == "trials":
        ran = [t for t in result["trials"] if t["objective"] is not None]
        return (any(t["pruned"] is None for t in ran) + any(t["pruned"] for t in ran)
                + bool(result["leaderboard"]))
    if kind == "sweep":
        return 1
    if kind == "bagging":
        return 2 + ("ensemble_test" in result) + ("oob_estimate" in result)
    if kind == "boosting":
        return 3  # the ensemble, the learner (or the residual), the learner weights
    if kind == "bias_variance":
        return 4 if result["loss"] == "squared" and "bias2" in result["curve"][0] else 3
    if kind == "batch_size":
        return 3
    if kind == "depth" and name == "errors":
        return 2 * sum(bool(result[v]) for v in ("plain", "residual"))  # train and test
    if kind == "depth":
        return sum(any(p["grad_norms"] for p in result[v]) for v in ("plain", "residual"))
    runs = result["runs"]
    return sum(1 for run in runs for key in run["curves"]
               if key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy",
                          "train_rmse", "val_rmse"))


CASES = [(kind, name, label) for label, stored in RESULTS.items()
         for kind in [stored["kind"]] for name in EXPERIMENT_PLOTS[kind]]


def test_every_kind_has_plots_and_a_stored_result_to_test_them_with() -> None:
    assert set(EXPERIMENT_PLOTS) == set(EXPERIMENT_KINDS)
    assert {stored["kind"] for stored in RESULTS.values()} == set(EXPERIMENT_KINDS)


@pytest.mark.parametrize(("kind", "name", "label"), CASES)
def test_each_kind_draws_every_series_of_its_result(kind: str, name: str, label: str) -> None:
    plot = EXPERIMENT_PLOTS[kind][name]
    result = RESULTS[label]["result"]
    svg = plot.draw(plot.result.model_validate(result), "svg")
    assert len(series_in(svg)) == expected_series(kind, name, result), series_in(svg)
    assert plot.draw(plot.result.model_validate(result), "png").startswith(PNG_MAGIC)


def test_the_api_process_stays_small_until_it_draws() -> None:
    """matplotlib loads with the first plot, not with the app: an idle API process holds
    neither it nor torch, and stays under the 150 MB the design sets for it."""
    # VmHWM: this process's peak (ru_maxrss would carry pytest's own over the exec)
    code = ("import json, re, sys\nimport app.main\napp.main.create_app()\n"
            "peak = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
            "print(json.dumps({'matplotlib': 'matplotlib' in sys.modules, "
            "'plots': 'app.plots.render' in sys.modules, "
            "'rss_mb': int(peak.group(1)) / 1024}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["plots"], "the probe must have loaded the plot routes"
    assert not seen["matplotlib"], seen
    assert seen["rss_mb"] < 150, seen


def test_a_burst_of_plots_past_the_waiting_bound_is_refused_at_once(
        client: TestClient) -> None:
    """Plot requests queue for one drawing lock in the threadpool every plain route shares;
    past MAX_WAITING the next is a 503 with Retry-After, not one more blocked thread."""
    from app.plots import render

    job_id = submit(client)
    write_epochs(job_id, 2)
    taken = 0
    try:
        while render._SLOTS.acquire(blocking=False):  # as if MAX_WAITING were drawing
            taken += 1
        r = client.get(f"/v1/jobs/{job_id}/plots/loss.svg")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "busy"
    finally:
        for _ in range(taken):
            render._SLOTS.release()
    assert taken == render.MAX_WAITING
    assert client.get(f"/v1/jobs/{job_id}/plots/loss.svg").status_code == 200


def test_the_dashboard_is_static_files_under_a_strict_policy(client: TestClient) -> None:
    """No key needed for the page itself (its API calls carry one); only its own scripts
    may run, and the vendored chart library ships with its license."""
    page = client.get("/ui/", headers={"Authorization": ""})
    assert page.status_code == 200 and "app.js" in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "unsafe-eval" not in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "MIT License" in client.get("/ui/vendor/uplot/LICENSE").text
    assert client.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
