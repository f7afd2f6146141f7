"""Experiments through HTTP with real worker processes: every kind on the embedded default
and on Postgres + Redis, fan-out across two workers, and cancellation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

MOONS = {"data": {"source": {"synthetic": "moons", "n_samples": 300, "noise": 0.25}},
         "model": {"kind": "mlp", "hidden": [16]}, "optimizer": {"kind": "adam", "lr": 0.02},
         "training": {"epochs": 4, "batch_size": 32}}
SINE = {"data": {"source": {"synthetic": "function", "n_samples": 200, "noise": 0.1}},
        "model": {"kind": "mlp", "hidden": [16], "activation": "tanh"}, "loss": {"kind": "mse"},
        "optimizer": {"kind": "adam", "lr": 0.02}, "training": {"epochs": 4, "batch_size": 32}}

EVERY_KIND = [
    {"kind": "cross_validation", "k": 3, "base": MOONS},
    {"kind": "sweep", "base": MOONS, "parameters": {"optimizer.lr": [0.001, 0.05, 1e-6]},
     "objective": {"metric": "val_accuracy"},
     "early_termination": {"grace_epochs": 1, "min_completed": 1}},
    {"kind": "bagging", "n_models": 2, "base": MOONS},
    {"kind": "boosting", "rounds": 2, "base": MOONS},
    {"kind": "bias_variance", "base": SINE, "values": [[2], [16]], "replicates": 2},
    {"kind": "batch_size", "base": MOONS, "batch_sizes": [16, "full"],
     "sharpness": {"power_iterations": 3, "ascent_steps": 2}},
    {"kind": "optimizer_comparison", "base": MOONS,
     "optimizers": [{"kind": "sgd", "lr": 0.1}, {"kind": "adam"}]},
    {"kind": "depth", "base": MOONS, "depths": [1, 3], "width": 8},
]
RESULT_KEY = {"cross_validation": "val", "sweep": "final", "bagging": "ensemble_test",
              "boosting": "rounds", "bias_variance": "curve", "batch_size": "curve",
              "optimizer_comparison": "runs", "depth": "residual"}


def wait_experiment(http: httpx.Client, exp_id: str, timeout: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        exp = http.get(f"/v1/experiments/{exp_id}").json()
        return exp if exp["status"] != "running" else None

    return wait_for(ended, timeout, 0.3, f"experiment {exp_id}")  # type: ignore[no-any-return]


def run_every_kind(stack: Stack) -> None:
    with stack.client() as http:
        ids = []
        for request in EVERY_KIND:
            r = http.post("/v1/experiments", json=request)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        for exp_id, request in zip(ids, EVERY_KIND, strict=True):
            exp = wait_experiment(http, exp_id, timeout=300)
            assert exp["status"] == "succeeded", (request["kind"], exp)
            assert exp["result"][RESULT_KEY[request["kind"]]], request["kind"]
            assert exp["progress"]["done"] == exp["progress"]["total"] > 0
            kids = http.get(f"/v1/experiments/{exp_id}/jobs").json()["items"]
            assert all(k["experiment_id"] == exp_id and k["role"] is not None for k in kids)
            job = http.get(f"/v1/jobs/{kids[0]['id']}").json()  # children are ordinary jobs
            assert job["status"] == "succeeded"
            if request["kind"] == "sweep":
                assert_stopped_trials_consistent(exp["result"], kids)
            if request["kind"] == "depth":  # the children's summaries carried them through
                assert [len(p["grad_norms"]["layers"]) for p in exp["result"]["plain"]] == [2, 4]


def assert_stopped_trials_consistent(result: dict[str, Any], kids: list[dict[str, Any]]) -> None:
    """Which trials the median rule stops depends on which finish first; what it reports
    must agree with the trials themselves whichever way the race went."""
    stopped = {s["trial"] for s in result["early_termination"]["stopped"]}
    ran = {k["role"]["trial"]: k["summary"] for k in kids if "trial" in k["role"]}
    assert stopped == {t for t, summary in ran.items() if summary["pruned"]}
    assert stopped.isdisjoint(r["trial"] for r in result["leaderboard"])
    assert result["early_termination"]["epochs_run"] == sum(
        summary["epochs_completed"] for summary in ran.values())


def test_every_kind_on_postgres_and_redis(distributed: Stack) -> None:
    distributed.env["TRAINYARD_TORCH_THREADS"] = "1"
    distributed.start_worker("w1")
    distributed.start_worker("w2")
    run_every_kind(distributed)


def test_every_kind_on_the_embedded_default(embedded: Stack) -> None:
    embedded.start_worker("w1")
    run_every_kind(embedded)


def test_eight_children_spread_over_two_workers(distributed: Stack) -> None:
    """Both workers are up before the experiment is submitted, and each holds one message
    at a time (prefetch 1, late acks), so neither can take all eight children. How much
    faster two workers finish is measured in ``bench/sweep_workers.py``, not asserted here."""
    distributed.env["TRAINYARD_TORCH_THREADS"] = "1"
    distributed.start_worker("w1")
    distributed.start_worker("w2")
    for name in ("w1", "w2"):
        wait_for(lambda name=name: "ready" in distributed.log(name), 60)
    request = {"kind": "cross_validation", "k": 8, "base": {
        **MOONS, "data": {"source": {"synthetic": "moons", "n_samples": 2000}},
        "training": {"epochs": 12, "batch_size": 16}}}
    with distributed.client() as http:
        exp_id = http.post("/v1/experiments", json=request).json()["id"]
        assert wait_experiment(http, exp_id, timeout=300)["status"] == "succeeded"
        kids = http.get(f"/v1/experiments/{exp_id}/jobs").json()["items"]
        summaries = [http.get(f"/v1/jobs/{k['id']}").json()["summary"] for k in kids]
    workers = {summary["worker"].rsplit(":", 1)[0] for summary in summaries}
    assert len(summaries) == 8 and len(workers) == 2, "both worker processes took children"


def test_cancel_experiment_cancels_queued_and_running_children(distributed: Stack) -> None:
    distributed.start_worker("w1")
    long = {**MOONS, "data": {"source": {"builtin": "digits"}},
            "model": {"kind": "mlp", "hidden": [256, 256]},
            "training": {"epochs": 300, "batch_size": 32}}
    with distributed.client() as http:
        exp_id = http.post("/v1/experiments", json={"kind": "cross_validation", "k": 4,
                                                    "base": long}).json()["id"]
        wait_for(lambda: any(k["status"] == "running" for k in http.get(
            f"/v1/experiments/{exp_id}/jobs").json()["items"]), 120)
        assert http.post(f"/v1/experiments/{exp_id}/cancel").json()["status"] == "cancelled"
        kids = wait_for(lambda: (ks := http.get(
            f"/v1/experiments/{exp_id}/jobs").json()["items"])
                        and all(k["status"] == "cancelled" for k in ks) and ks, 60)
    assert len(kids) == 4 and all(k["progress"]["epoch"] < 300 for k in kids)
