"""POST /v1/experiments/{id}/predict through the real app in-process (SQLite): each child is
trained, exported and the experiment advanced by the worker's own functions in this process.
The ensemble's predictions on the held-out rows reproduce the reported ensemble test metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.test_models_api import (
    CLASSES,
    bird_csv,
    held_out,
    modules_after_predicting,
    set_model,
)
from tests.conftest import tiny_spec

SINE = {"source": {"synthetic": "function", "n_samples": 200, "noise": 0.1}}


def run_experiment(client: TestClient, request: dict[str, Any]) -> dict[str, Any]:
    """Submit through the API, then run every child (and its export) and every advance with
    the worker's code, stage after stage, until the experiment ends."""
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute
    from worker.export import export_model
    from worker.orchestrate import advance_experiment

    made = client.post("/v1/experiments", json=request)
    assert made.status_code == 201, made.text
    exp_id, sessions, settings = made.json()["id"], get_sessionmaker(), get_settings()
    for _ in range(20):
        kids = client.get(f"/v1/experiments/{exp_id}/jobs").json()["items"]
        for kid in (k for k in kids if k["status"] == "queued"):
            assert execute(kid["id"], sessions, settings) == "succeeded"
            exported = export_model(kid["id"], sessions, settings)  # a sweep's trials: none
            assert exported == ("skipped" if "trial" in kid["role"] else "ready"), kid
        advance_experiment(exp_id, sessions, settings)
        exp = client.get(f"/v1/experiments/{exp_id}").json()
        if exp["status"] != "running":
            assert exp["status"] == "succeeded", exp
            return exp  # type: ignore[no-any-return]
    raise AssertionError(f"experiment {exp_id} did not end")


def bird_base(client: TestClient) -> dict[str, Any]:
    upload = client.post("/v1/datasets", files={"file": ("birds.csv", bird_csv())},
                         data={"target": "species"}).json()
    return tiny_spec(data={"source": {"dataset": upload["id"]}},
                     model={"kind": "mlp", "hidden": [16]},
                     training={"epochs": 3, "batch_size": 32})


def predicted(client: TestClient, exp_id: str, rows: np.ndarray) -> dict[str, Any]:
    reply = client.post(f"/v1/experiments/{exp_id}/predict", json={"rows": rows.tolist()})
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def accuracy(body: dict[str, Any], y: np.ndarray) -> float:
    labels = [p["label"] for p in body["predictions"]]
    return float(np.mean([label == body["classes"][k] for label, k in zip(labels, y,
                                                                         strict=True)]))


def rmse(body: dict[str, Any], y: np.ndarray) -> float:
    values = np.array([p["value"] for p in body["predictions"]])
    return math.sqrt(float(np.mean((values - y) ** 2)))


@pytest.fixture()
def bagged(client: TestClient) -> dict[str, Any]:
    base = bird_base(client)
    exp = run_experiment(client, {"kind": "bagging", "n_models": 3, "base": base})
    return {"base": base, "exp": exp}


def test_bagging_serves_the_soft_vote_the_result_reports(
        client: TestClient, bagged: dict[str, Any]) -> None:
    exp = bagged["exp"]
    rows, y = held_out(bagged["base"], "alice")
    body = predicted(client, exp["id"], rows)
    assert body["combine"] == "soft_vote" and body["classes"] == CLASSES
    assert [m["job_id"] for m in body["members"]] == [
        m["job_id"] for m in exp["result"]["members"]]
    assert all(m["weight"] == pytest.approx(1 / 3) for m in body["members"])
    assert abs(accuracy(body, y) - exp["result"]["ensemble_test"]["accuracy"]) <= 1e-6
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in body["predictions"])
    # the mean of the members' own answers (each through the job predict) is the ensemble's
    members = [client.post(f"/v1/jobs/{m['job_id']}/predict", json={"rows": rows[:5].tolist()})
               .json()["predictions"] for m in body["members"]]
    mean = np.mean([[p["probabilities"] for p in answer] for answer in members], axis=0)
    assert np.allclose(mean, [p["probabilities"] for p in body["predictions"][:5]], atol=2e-6)


def test_a_npy_body_gets_the_answer_json_rows_get(
        client: TestClient, bagged: dict[str, Any]) -> None:
    import io

    rows, _ = held_out(bagged["base"], "alice")
    buffer = io.BytesIO()
    np.save(buffer, rows.astype(np.float32))
    path = f"/v1/experiments/{bagged['exp']['id']}/predict"
    reply = client.post(path, content=buffer.getvalue(),
                        headers={"Content-Type": "application/x-npy"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == predicted(client, bagged["exp"]["id"], rows.astype(np.float32))
    wrong = client.post(path, content=buffer.getvalue()[:-4],
                        headers={"Content-Type": "application/x-npy"})
    assert wrong.status_code == 422 and "body" in wrong.text


def test_samme_boosting_serves_the_weighted_vote_the_result_reports(
        client: TestClient) -> None:
    base = bird_base(client)
    exp = run_experiment(client, {"kind": "boosting", "rounds": 2, "base": base})
    rounds = exp["result"]["rounds"]
    assert exp["result"]["algorithm"] == "samme" and rounds
    rows, y = held_out(base, "alice")
    body = predicted(client, exp["id"], rows)
    assert body["combine"] == "samme"
    assert [(m["job_id"], m["weight"]) for m in body["members"]] == [
        (r["job_id"], r["learner_weight"]) for r in rounds]
    assert abs(accuracy(body, y) - rounds[-1]["ensemble_test"]["accuracy"]) <= 1e-6


def test_gradient_boosting_serves_the_sum_of_rounds_the_result_reports(
        client: TestClient) -> None:
    base = tiny_spec(data=SINE, loss={"kind": "mse"},
                     model={"kind": "mlp", "hidden": [16], "activation": "tanh"},
                     optimizer={"kind": "adam", "lr": 0.02}, training={"epochs": 4})
    exp = run_experiment(client, {"kind": "boosting", "rounds": 3, "learning_rate": 0.5,
                                  "base": base})
    rounds = exp["result"]["rounds"]
    assert exp["result"]["algorithm"] == "gradient_boosting" and len(rounds) == 3
    rows, y = held_out(base, "alice")
    body = predicted(client, exp["id"], rows)
    assert body["combine"] == "gradient_boosting" and body["task"] == "regression"
    assert [m["weight"] for m in body["members"]] == [1.0, 0.5, 0.5]
    assert rmse(body, y) == pytest.approx(rounds[-1]["ensemble_test"]["rmse"], abs=1e-6)
    # not the last round alone: the rounds really are summed
    last = client.post(f"/v1/jobs/{rounds[-1]['job_id']}/predict",
                       json={"rows": rows.tolist()}).json()
    assert abs(rmse(last, y) - rounds[-1]["ensemble_test"]["rmse"]) > 1e-3


def test_a_sweep_serves_its_retrained_best(client: TestClient) -> None:
    base = bird_base(client)
    exp = run_experiment(client, {"kind": "sweep", "base": base,
                                  "parameters": {"optimizer.lr": [0.001, 0.02]},
                                  "objective": {"metric": "val_accuracy"}})
    final = exp["result"]["final"]
    rows, y = held_out(base, "alice")
    body = predicted(client, exp["id"], rows)
    assert body["combine"] == "retrained_best"
    assert [(m["job_id"], m["weight"]) for m in body["members"]] == [(final["job_id"], 1.0)]
    assert abs(accuracy(body, y) - final["test"]["accuracy"]) <= 1e-6


def refused(client: TestClient, exp_id: str, body: Any, status: int) -> dict[str, Any]:
    reply = client.post(f"/v1/experiments/{exp_id}/predict", json=body)
    assert reply.status_code == status, reply.text
    return reply.json()["error"]  # type: ignore[no-any-return]


def test_bad_input_and_members_not_ready_are_refused_saying_why(
        client: TestClient, other_client: TestClient, bagged: dict[str, Any]) -> None:
    exp_id = bagged["exp"]["id"]
    row = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    wrong = refused(client, exp_id, {"rows": [row, row[:5]]}, 422)
    assert wrong["fields"][0]["loc"] == "rows.1" and "takes 6" in wrong["message"]
    unknown = refused(client, exp_id, {"records": [{"wingspan": 1.0}]}, 422)
    assert "'wingspan'" in unknown["message"]
    assert refused(client, exp_id, {"rows": [row], "records": []}, 422)["fields"]
    assert "max_predict_rows" in refused(client, exp_id, {"rows": [row] * 10_001}, 422)[
        "message"]

    theirs = other_client.post(f"/v1/experiments/{exp_id}/predict", json={"rows": [row]})
    missing = other_client.post("/v1/experiments/exp_missing/predict", json={"rows": [row]})
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["message"].replace(exp_id, "exp_missing") == \
        missing.json()["error"]["message"]

    first, second = (m["job_id"] for m in bagged["exp"]["result"]["members"][:2])
    set_model(second, "pending")
    pending = client.post(f"/v1/experiments/{exp_id}/predict", json={"rows": [row]})
    assert pending.status_code == 409 and pending.headers["Retry-After"] == "5"
    assert pending.json()["error"]["code"] == "model_pending" and second in pending.text
    set_model(first, "failed", "the ONNX graph differs from the torch model by 0.3")
    failed = refused(client, exp_id, {"rows": [row]}, 409)  # failed wins: waiting won't help
    assert failed["code"] == "no_model" and first in failed["message"]
    assert "differs from the torch model" in failed["message"]


def test_kinds_without_a_model_and_running_experiments_are_409_naming_why(
        client: TestClient) -> None:
    row = {"rows": [[0.5, 0.5]]}
    cv = client.post("/v1/experiments", json={"kind": "cross_validation", "k": 2,
                                              "base": tiny_spec()}).json()
    error = refused(client, cv["id"], row, 409)
    assert error["code"] == "no_model" and "a cross_validation experiment" in error["message"]
    running = client.post("/v1/experiments", json={"kind": "bagging", "n_models": 2,
                                                   "base": tiny_spec()}).json()
    assert "is running" in refused(client, running["id"], row, 409)["message"]


def test_the_api_process_serves_an_ensemble_without_importing_torch(
        client: TestClient, bagged: dict[str, Any], app_home: Path) -> None:
    """A fresh interpreter: the app built, an ensemble's prediction served, no torch loaded."""
    from tests.api.conftest import make_key

    seen = modules_after_predicting(
        app_home, make_key("alice"), f"/v1/experiments/{bagged['exp']['id']}/predict",
        "r.status_code == 200 and len(r.json()['members']) == 3")
    assert seen == {"torch": False, "sklearn": False, "onnxruntime": True}
