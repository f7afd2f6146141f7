"""Experiment submission on SQLite: planning, validation, caps, idempotency, cancel."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


def post(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/v1/experiments", json=body, headers=headers)


def test_cv_plans_k_children_that_are_ordinary_jobs(client: TestClient) -> None:
    r = post(client, {"kind": "cross_validation", "k": 4, "base": tiny_spec()})
    assert r.status_code == 201, r.text
    exp = r.json()
    assert r.headers["Location"] == f"/v1/experiments/{exp['id']}"
    assert exp["status"] == "running" and exp["progress"]["total"] == 4
    kids = client.get(f"/v1/experiments/{exp['id']}/jobs").json()["items"]
    assert sorted(k["role"]["fold"] for k in kids) == [0, 1, 2, 3]
    assert {k["spec"]["data"]["rows"]["k"] for k in kids} == {4}
    listed = client.get("/v1/jobs", params={"experiment_id": exp["id"]}).json()["items"]
    assert len(listed) == 4


def test_grid_sweep_plans_exactly_the_grid(client: TestClient) -> None:
    body = {"kind": "sweep", "base": tiny_spec(), "parameters": {
        "optimizer.lr": [0.1, 0.01, 0.001], "model.hidden": [[4], [8]]}}
    exp = post(client, body).json()
    kids = client.get(f"/v1/experiments/{exp['id']}/jobs").json()["items"]
    assert len(kids) == 6
    assert {(k["spec"]["optimizer"]["lr"], tuple(k["spec"]["model"]["hidden"])) for k in kids} \
        == {(lr, (h,)) for lr in (0.1, 0.01, 0.001) for h in (4, 8)}


@pytest.mark.parametrize(("body", "loc"), [
    ({"kind": "cross_validation", "k": 1}, "k"),
    ({"kind": "sweep", "parameters": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}}},
     "body"),
    ({"kind": "sweep", "parameters": {"optimizer.lr": [0.1]},
      "objective": {"metric": "test_accuracy"}}, "objective"),
    ({"kind": "cross_validation", "base": {"model": {"kind": "mlp", "hidden": [-1]}}},
     "base.model.hidden.0"),
    ({"kind": "nope"}, "kind"),
    ({"kind": "sweep", "parameters": {"optimizer.lr": [0.1]},
      "objective": {"metric": "val_rmse"}}, "objective.metric"),
    ({"kind": "sweep", "parameters": {"optimizer.lr": [0.1]},
      "base": {"data": {"split": {"val": 0.0, "test": 0.2}}}}, "objective.metric"),
    ({"kind": "sweep", "parameters": {"optimizer.lr": [0.1]},
      "early_termination": {"grace_epochs": 0}}, "early_termination.grace_epochs"),
    ({"kind": "sweep", "parameters": {"optimizer.lr": [0.1]}, "objective": {"cv_folds": 3},
      "early_termination": {}}, "body"),
])
def test_bad_designs_are_422_with_a_path(client: TestClient, body: dict[str, Any],
                                         loc: str) -> None:
    r = post(client, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["loc"].startswith(loc)
    assert client.get("/v1/experiments").json()["items"] == []


def test_child_that_would_be_invalid_is_refused_before_anything_is_stored(
        client: TestClient) -> None:
    body = {"kind": "sweep", "base": tiny_spec(), "parameters": {"loss.kind": ["mse"]}}
    r = post(client, body)
    assert r.status_code == 422 and "regression loss" in r.json()["error"]["message"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_children_cap(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setattr(get_settings().limits, "max_experiment_children", 3)
    r = post(client, {"kind": "cross_validation", "k": 4, "base": tiny_spec()})
    assert r.status_code == 422 and "max_experiment_children" in r.json()["error"]["message"]


def test_idempotent_experiment_submission(client: TestClient) -> None:
    body = {"kind": "bagging", "n_models": 2, "base": tiny_spec()}
    a = post(client, body, **{"Idempotency-Key": "e1"})
    b = post(client, body, **{"Idempotency-Key": "e1"})
    assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
    assert post(client, {**body, "n_models": 3}, **{"Idempotency-Key": "e1"}).status_code == 409
    assert len(client.get("/v1/jobs").json()["items"]) == 2


def test_cancel_cancels_every_queued_child(client: TestClient,
                                           other_client: TestClient) -> None:
    exp = post(client, {"kind": "cross_validation", "k": 3, "base": tiny_spec()}).json()
    assert other_client.post(f"/v1/experiments/{exp['id']}/cancel").status_code == 404
    r = client.post(f"/v1/experiments/{exp['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    kids = client.get(f"/v1/experiments/{exp['id']}/jobs").json()["items"]
    assert {k["status"] for k in kids} == {"cancelled"}
    listed = client.get("/v1/experiments", params={"status": "cancelled"}).json()["items"]
    assert [x["id"] for x in listed] == [exp["id"]]
