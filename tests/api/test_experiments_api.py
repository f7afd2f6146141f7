"""Experiment submission on SQLite: planning, validation, caps, idempotency, cancel."""

from __future__ import annotations

import tracemalloc
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
    assert all("spec" not in k for k in kids), "list items are slim"
    specs = [client.get(f"/v1/jobs/{k['id']}").json()["spec"] for k in kids]
    assert {spec["data"]["rows"]["k"] for spec in specs} == {4}
    listed = client.get("/v1/jobs", params={"experiment_id": exp["id"]}).json()["items"]
    assert len(listed) == 4


def test_grid_sweep_plans_exactly_the_grid(client: TestClient) -> None:
    body = {"kind": "sweep", "base": tiny_spec(), "parameters": {
        "optimizer.lr": [0.1, 0.01, 0.001], "model.hidden": [[4], [8]]}}
    exp = post(client, body).json()
    kids = client.get(f"/v1/experiments/{exp['id']}/jobs").json()["items"]
    assert len(kids) == 6
    specs = [client.get(f"/v1/jobs/{k['id']}").json()["spec"] for k in kids]
    assert {(spec["optimizer"]["lr"], tuple(spec["model"]["hidden"])) for spec in specs} \
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
    ({"kind": "bagging", "base": {"data": {"target_offset": [0.0] * 1000}}}, "body"),
    ({"kind": "cross_validation", "base": {"data": {"rows": {"kind": "bootstrap"}}}}, "body"),
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


def six_keys(n: int = 50) -> dict[str, list[Any]]:
    """Six swept keys of n valid values each (a grid of n**6 combinations)."""
    return {"optimizer.lr": [0.001 * (i + 1) for i in range(n)],
            "training.seed": list(range(n)), "data.split.seed": list(range(n)),
            "training.batch_size": [8 + i for i in range(n)],
            "model.hidden": [[4 + i] for i in range(n)],
            "optimizer.eps": [1e-8 * (i + 1) for i in range(n)]}


def peak_mib(call: Any) -> tuple[Any, float]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_a_huge_grid_is_refused_from_its_size_without_being_built(client: TestClient) -> None:
    body = {"kind": "sweep", "base": tiny_spec(), "parameters": six_keys()}
    r, peak = peak_mib(lambda: post(client, body))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "50 x 50 x 50 x 50 x 50 x 50 = 15,625,000,000 combinations" in error["message"]
    assert "max_experiment_children 200" in error["message"]
    assert error["fields"][0]["loc"] == "parameters"
    assert peak < 20, f"{peak:.1f} MiB"


def test_a_grid_over_the_cap_costs_nothing_to_refuse(client: TestClient) -> None:
    """1.25 M combinations: building them (as the planner once did) takes hundreds of MiB."""
    keys = six_keys()
    body = {"kind": "sweep", "base": tiny_spec(), "parameters": {
        k: keys[k] for k in ("optimizer.lr", "training.seed", "data.split.seed")}
        | {"model.hidden": keys["model.hidden"][:10]}}
    r, peak = peak_mib(lambda: post(client, body))
    assert r.status_code == 422 and "1,250,000 combinations" in r.json()["error"]["message"]
    assert peak < 20, f"{peak:.1f} MiB"


def test_trials_sample_a_huge_grid_by_seed_building_only_those(client: TestClient) -> None:
    def params(seed: int, trials: int = 3) -> list[Any]:
        body = {"kind": "sweep", "base": tiny_spec(), "parameters": six_keys(), "trials": trials,
                "seed": seed, "retrain_best": False}
        r, peak = peak_mib(lambda: post(client, body))
        assert r.status_code == 201, r.text
        assert peak < 20, f"{peak:.1f} MiB"
        kids = client.get(f"/v1/experiments/{r.json()['id']}/jobs").json()["items"]
        return sorted((k["role"]["params"] for k in kids), key=str)

    first = params(seed=7)
    assert len(first) == 3 and len({str(p) for p in first}) == 3
    assert params(seed=7) == first
    assert params(seed=8) != first
    assert len(params(seed=7, trials=1)) == 1


def test_a_sweep_whose_final_retrain_would_exceed_max_work_is_refused_at_submit(
        client: TestClient) -> None:
    """Default limits: the trials train on 700,000 rows x 285 epochs (under max_work 200 M);
    the final retrain on train + val (850,000 rows) would not be, so nothing is queued."""
    base = tiny_spec(data__source={"synthetic": "make_classification", "n_samples": 1_000_000,
                                   "n_features": 2, "n_informative": 2, "n_redundant": 0},
                     training__epochs=285)
    body = {"kind": "sweep", "base": base, "parameters": {"optimizer.lr": [0.01, 0.02]}}
    r = post(client, body)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "'final': True" in message and "242,250,000 exceeds the limit 200,000,000" in message
    assert client.get("/v1/jobs").json()["items"] == []
    assert post(client, {**body, "retrain_best": False}).status_code == 201


def test_experiment_jobs_are_paginated_in_design_order(client: TestClient) -> None:
    exp = post(client, {"kind": "cross_validation", "k": 5, "base": tiny_spec()}).json()
    url = f"/v1/experiments/{exp['id']}/jobs"
    whole = client.get(url).json()
    assert whole["next_cursor"] is None and len(whole["items"]) == 5
    seen, cursor = [], None
    while True:
        page = client.get(url, params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        seen += [k["id"] for k in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [k["id"] for k in whole["items"]]
    assert [k["role"]["fold"] for k in whole["items"]] == [0, 1, 2, 3, 4]
    assert client.get(url, params={"cursor": "nope"}).status_code == 422
    assert client.get(url, params={"limit": 0}).status_code == 422


def test_a_large_value_swept_against_many_is_refused_from_its_size(client: TestClient) -> None:
    """One 2 MB value met by 50 others would be copied into 50 children (100 MB stored)."""
    body = {"kind": "sweep", "base": tiny_spec(), "parameters": {
        "optimizer.lr": [0.001 * (i + 1) for i in range(50)], "name": ["x" * 2_000_000]}}
    r, peak = peak_mib(lambda: post(client, body))
    assert r.status_code == 422, r.text[:300]
    error = r.json()["error"]
    assert "max_experiment_spec_bytes" in error["message"] and "50 child specs" in error["message"]
    assert error["fields"][0]["loc"] == "parameters"
    assert peak < 40, f"{peak:.1f} MiB"
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_depth_study_plans_a_plain_and_a_residual_child_per_depth(client: TestClient) -> None:
    r = post(client, {"kind": "depth", "depths": [1, 3], "width": 8, "base": tiny_spec()})
    assert r.status_code == 201, r.text
    kids = client.get(f"/v1/experiments/{r.json()['id']}/jobs").json()["items"]
    specs = {(k["role"]["depth"], k["role"]["residual"]):
             client.get(f"/v1/jobs/{k['id']}").json()["spec"] for k in kids}
    assert sorted(specs) == [(1, False), (1, True), (3, False), (3, True)]
    assert specs[(3, True)]["model"]["hidden"] == [8, 8, 8] and specs[(3, True)]["model"][
        "residual"] is True
    assert all(spec["training"]["record_grad_norms"] for spec in specs.values())


@pytest.mark.parametrize(("body", "message"), [
    ({"depths": [2, 4], "base": tiny_spec(model={"kind": "cnn"})}, "base.model.kind"),
    ({"depths": [2, 40]}, "in child {'depth': 40, 'residual': False}"),
    ({"depths": [2, 4], "width": 5000}, "width 5,000 exceeds the limit"),
])
def test_a_depth_study_that_cannot_run_is_refused_naming_why(client: TestClient,
                                                             body: dict[str, Any],
                                                             message: str) -> None:
    r = post(client, {"kind": "depth", "base": tiny_spec(), **body})
    assert r.status_code == 422 and message in r.json()["error"]["message"], r.text
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_depth_study_counts_two_children_per_depth_against_the_cap(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setattr(get_settings().limits, "max_experiment_children", 5)
    r = post(client, {"kind": "depth", "depths": [1, 2, 3], "base": tiny_spec()})
    assert r.status_code == 422 and "6 child jobs" in r.json()["error"]["message"]
