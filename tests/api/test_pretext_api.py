"""Pretrain, then fine-tune, through HTTP: a dataset uploaded without a target, a
reconstruction job on it (run in this process with the worker's code), a supervised job that
starts from it on few labels, and what is refused with the field named."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits

from tests.conftest import tiny_spec


def run(job_id: str) -> str:
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute

    return execute(job_id, get_sessionmaker(), get_settings())


def upload_unlabeled(client: TestClient) -> dict[str, Any]:
    x = load_digits().data[:400]
    text = io.StringIO()
    np.savetxt(text, x, delimiter=",", fmt="%g", header=",".join(f"p{i}" for i in range(64)),
               comments="")
    r = client.post("/v1/datasets", files={"file": ("pixels.csv", text.getvalue())},
                    data={"task": "unlabeled"})
    assert r.status_code == 201, r.text
    return dict(r.json())


PRETEXT: dict[str, Any] = {"task": "reconstruction", "loss": {"kind": "mse"},
                           "model": {"kind": "mlp", "hidden": [32]},
                           "regularization": {"input_mask": 0.3}}


def test_an_unlabeled_upload_has_every_column_as_a_feature(client: TestClient) -> None:
    ds = upload_unlabeled(client)
    assert (ds["task"], ds["features"], ds["n_classes"]) == ("unlabeled", 64, 0)
    r = client.post("/v1/datasets", files={"file": ("p.csv", "a,b\n1,2\n")},
                    data={"task": "unlabeled", "target": "b"})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["loc"] == "target"


def test_an_unlabeled_npz_needs_only_x(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.arange(60, dtype=np.float32).reshape(20, 3))
    r = client.post("/v1/datasets", files={"file": ("x.npz", buffer.getvalue())},
                    data={"task": "unlabeled"})
    assert r.status_code == 201, r.text
    assert (r.json()["task"], r.json()["features"]) == ("unlabeled", 3)
    labelled = client.post("/v1/datasets", files={"file": ("x.npz", buffer.getvalue())})
    assert labelled.status_code == 422 and "'y'" in labelled.text


def test_a_supervised_job_on_unlabeled_data_is_refused_naming_task(client: TestClient) -> None:
    ds = upload_unlabeled(client)
    r = client.post("/v1/jobs", json=tiny_spec(data={"source": {"dataset": ds["id"]}}))
    assert r.status_code == 422, r.text
    assert [f["loc"] for f in r.json()["error"]["fields"]] == ["task"]


def test_pretrain_on_unlabeled_rows_then_fine_tune_on_few_labels(client: TestClient) -> None:
    ds = upload_unlabeled(client)
    pretext = client.post("/v1/jobs", json=tiny_spec(data={"source": {"dataset": ds["id"]}},
                                                     **PRETEXT)).json()
    assert pretext["spec"]["task"] == "reconstruction", pretext
    assert run(pretext["id"]) == "succeeded"
    done = client.get(f"/v1/jobs/{pretext['id']}").json()
    assert set(done["summary"]["test"]) == {"loss", "mse"}
    points = client.get(f"/v1/jobs/{pretext['id']}/metrics").json()["points"]
    assert {(p["split"], p["name"]) for p in points} >= {("train", "loss"), ("val", "mse")}
    assert not any(p["name"] == "accuracy" for p in points)

    # the output layer predicts 64 pixels; head: keep cannot serve 10 classes
    few = {"source": {"builtin": "digits"}, "labels": {"fraction": 0.05, "seed": 1}}
    kept = client.post("/v1/jobs", json=tiny_spec(data=few, model={
        "kind": "mlp", "hidden": [32], "init_from": {"job": pretext["id"], "head": "keep"}}))
    assert kept.status_code == 422 and "head.weight" in kept.text
    fine = client.post("/v1/jobs", json=tiny_spec(data=few, model={
        "kind": "mlp", "hidden": [32], "init_from": {"job": pretext["id"]}}))
    assert fine.status_code == 201, fine.text
    assert fine.json()["spec"]["model"]["init_from"]["sha256"]
    assert run(fine.json()["id"]) == "succeeded"
    summary = client.get(f"/v1/jobs/{fine.json()['id']}").json()["summary"]
    assert summary["task"] == "classification" and summary["rows"]["train"] == 63


def test_a_pretext_model_export_fails_with_the_reason(client: TestClient) -> None:
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.export import export_model

    job = client.post("/v1/jobs", json=tiny_spec(**PRETEXT)).json()
    assert run(job["id"]) == "succeeded"
    assert export_model(job["id"], get_sessionmaker(), get_settings()) == "failed"
    model = client.get(f"/v1/jobs/{job['id']}").json()["model"]
    assert model["status"] == "failed" and "model.init_from" in model["reason"]


def test_few_labels_of_a_reconstruction_job_are_refused(client: TestClient) -> None:
    r = client.post("/v1/jobs", json=tiny_spec(data={"labels": {"fraction": 0.1}}, **PRETEXT))
    assert r.status_code == 422
    assert [f["loc"] for f in r.json()["error"]["fields"]] == ["data.labels"]


def test_the_catalog_lists_the_task_few_labels_and_input_mask(client: TestClient) -> None:
    blocks = client.get("/v1/catalog").json()["blocks"]
    assert blocks["task"]["parameters"]["task"]["enum"] == ["supervised", "reconstruction"]
    assert blocks["task"]["parameters"]["task"]["default"] == "supervised"
    assert blocks["data.labels"]["parameters"]["fraction"]["exclusiveMinimum"] == 0.0
    assert "labels" in blocks["data"]["parameters"]
    assert blocks["regularization"]["parameters"]["input_mask"]["default"] == 0.0


def test_an_ensemble_of_pretext_jobs_is_refused_naming_base_task(client: TestClient) -> None:
    for kind, extra in (("bagging", {"n_models": 2}), ("boosting", {"rounds": 2})):
        body = {"kind": kind, **extra, "base": tiny_spec(**PRETEXT)}
        r = client.post("/v1/experiments", json=body)
        assert r.status_code == 422, r.text
        assert [f["loc"] for f in r.json()["error"]["fields"]] == ["base.task"]
    sweep = {"kind": "sweep", "base": tiny_spec(**PRETEXT),
             "parameters": {"optimizer.lr": [0.01, 0.1]},
             "objective": {"metric": "val_mse", "direction": "min"}}
    r = client.post("/v1/experiments", json=sweep)
    assert r.status_code == 201, r.text


def test_a_pretext_jobs_metric_plot_draws_its_mse(client: TestClient) -> None:
    from tests.api.test_plots import series_in

    job = client.post("/v1/jobs", json=tiny_spec(**PRETEXT)).json()
    assert run(job["id"]) == "succeeded"
    names = [p["name"] for p in client.get(f"/v1/jobs/{job['id']}/plots").json()["plots"]]
    assert "confusion_matrix" not in names
    r = client.get(f"/v1/jobs/{job['id']}/plots/metric.svg")
    assert r.status_code == 200, r.text
    assert series_in(r.content) == {"val_mse"}  # training logs its loss, the same number
