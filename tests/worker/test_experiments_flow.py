"""Every experiment kind driven end to end in-process on SQLite: plan, children trained by
the real execution path, stages advanced, result stored. (Celery fan-out across worker
processes is covered in tests/integration/test_experiments.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.config import Settings
from app.services import experiments as service
from tests.worker.conftest import add_tenants, quiet_broker
from worker.execution import execute
from worker.orchestrate import advance_experiment

MOONS = {"data": {"source": {"synthetic": "moons", "n_samples": 300, "noise": 0.25}},
         "model": {"kind": "mlp", "hidden": [16]}, "optimizer": {"kind": "adam", "lr": 0.02},
         "training": {"epochs": 4, "batch_size": 32}}
SINE = {"data": {"source": {"synthetic": "function", "fn": "sin", "n_samples": 200,
                            "noise": 0.1}},
        "model": {"kind": "mlp", "hidden": [16], "activation": "tanh"}, "loss": {"kind": "mse"},
        "optimizer": {"kind": "adam", "lr": 0.02}, "training": {"epochs": 5, "batch_size": 32}}


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sessions: sessionmaker[Session]) -> tuple[sessionmaker[Session], Settings]:
    quiet_broker(monkeypatch)
    add_tenants(sessions, "t")
    return sessions, Settings(home=tmp_path)


def by_trial(job: Any) -> int:
    return int((job.role or {}).get("trial", 0))


def drive(env: tuple[Any, Settings], request: dict[str, Any],
          order: Any = by_trial) -> dict[str, Any]:
    """Submit, then run queued children (one at a time, in ``order``) and advance until the
    experiment ends."""
    sessions, settings = env
    with sessions() as s:
        exp, _ = service.submit(s, tenant_id="t", exp=service.parse(request),
                                settings=settings, idempotency_key=None)
    for _ in range(60):
        with sessions() as s:
            queued = [j.id for j in sorted(repo.children(s, exp.id), key=order)
                      if j.status == "queued"]
        for job_id in queued:
            execute(job_id, sessions, settings)
        advance_experiment(exp.id, sessions, settings)
        with sessions() as s:
            row = repo.get_experiment_any_tenant(s, exp.id)
            assert row is not None
            if row.status != "running":
                kids = repo.children(s, exp.id)
                return {"status": row.status, "result": row.result, "children": kids}
    raise AssertionError("experiment did not finish")


def test_cross_validation(env: Any) -> None:
    out = drive(env, {"kind": "cross_validation", "k": 3, "base": MOONS})
    assert out["status"] == "succeeded" and len(out["children"]) == 3
    result = out["result"]
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    acc = result["val"]["accuracy"]
    assert acc["n"] == 3 and 0.6 < acc["mean"] <= 1 and acc["std"] >= 0


def test_sweep_grid_retrains_best_on_train_plus_val(env: Any) -> None:
    out = drive(env, {"kind": "sweep", "base": MOONS, "parameters": {
        "optimizer.lr": [0.0001, 0.05], "model.hidden": [[4], [16]]},
        "objective": {"metric": "val_accuracy"}})
    result = out["result"]
    assert len(result["trials"]) == 4 and out["status"] == "succeeded"
    board = result["leaderboard"]
    assert board[0]["objective"] == max(t["objective"] for t in result["trials"])
    final = [j for j in out["children"] if (j.role or {}).get("final")]
    assert len(final) == 1 and final[0].spec["data"]["split"]["val"] == 0.0
    assert final[0].summary["rows"]["val"] == 0 and "accuracy" in result["final"]["test"]


def test_sweep_early_termination_stops_a_poor_trial_by_the_median_rule(env: Any) -> None:
    """Trials run one after another here, so the fourth (a learning rate too small to move
    the loss) meets three completed trials and is stopped once its grace epochs are over."""
    base = {**MOONS, "training": {"epochs": 6, "batch_size": 32}}
    out = drive(env, {"kind": "sweep", "base": base, "retrain_best": False,
                      "parameters": {"optimizer.lr": [0.05, 0.03, 0.02, 1e-6]},
                      "early_termination": {"grace_epochs": 2, "min_completed": 3}})
    assert out["status"] == "succeeded"
    result = out["result"]
    trials = {j.role["trial"]: j.summary for j in out["children"]}
    assert [trials[t]["epochs_completed"] for t in range(4)] == [6, 6, 6, 2]
    assert trials[3]["pruned"]["epoch"] == 2 and "median" in trials[3]["pruned"]["reason"]
    assert all(trials[t]["pruned"] is None for t in range(3))
    assert [r["trial"] for r in result["leaderboard"]] != [] and all(
        r["trial"] != 3 for r in result["leaderboard"])
    stopped = result["early_termination"]
    assert [s["trial"] for s in stopped["stopped"]] == [3] and stopped["stopped"][0]["epoch"] == 2
    assert (stopped["epochs_run"], stopped["epochs_budget"]) == (20, 24)
    assert stopped["rule"] == "median"


def test_bagging_oob_and_ensemble(env: Any) -> None:
    out = drive(env, {"kind": "bagging", "n_models": 3, "base": MOONS})
    result = out["result"]
    assert len(result["members"]) == 3 and 0 < result["oob_rows"] <= 255
    assert 0.5 < result["ensemble_test"]["accuracy"] <= 1
    assert 0.5 < result["oob_estimate"]["accuracy"] <= 1


def test_boosting_samme_and_gradient(env: Any) -> None:
    cls = drive(env, {"kind": "boosting", "rounds": 3, "base": MOONS})
    assert cls["result"]["algorithm"] == "samme"
    rounds = cls["result"]["rounds"]
    assert [r["round"] for r in rounds] == list(range(len(rounds))) and rounds
    assert all(r["learner_weight"] > 0 for r in rounds)
    reg = drive(env, {"kind": "boosting", "rounds": 3, "learning_rate": 0.5, "base": SINE})
    history = reg["result"]["rounds"]
    assert len(history) == 3 and reg["result"]["algorithm"] == "gradient_boosting"
    offsets = [j.spec["data"]["target_offset"] for j in reg["children"]]
    assert offsets[0] is None and len(offsets[1]) == len(offsets[2]) == 170
    assert history[-1]["train_residual_rmse"] <= history[0]["train_residual_rmse"] + 1e-6


def test_bias_variance_regression_terms_add_up(env: Any) -> None:
    out = drive(env, {"kind": "bias_variance", "base": SINE, "parameter": "model.hidden",
                      "values": [[2], [32]], "replicates": 3})
    curve = out["result"]["curve"]
    assert [c["value"] for c in curve] == [[2], [32]]
    for point in curve:
        assert point["noise"] == pytest.approx(0.01)
        assert point["sum"] == pytest.approx(
            point["bias2"] + point["variance"] + point["noise_empirical"])
        assert point["identity_residual"] == pytest.approx(point["expected_loss"] - point["sum"])
        # what is left is the bias-noise cross term, bounded by Cauchy-Schwarz
        bound = 2 * (point["bias2"] * point["noise_empirical"]) ** 0.5
        assert abs(point["identity_residual"]) <= bound + 1e-12


def test_batch_size_sharpness(env: Any) -> None:
    out = drive(env, {"kind": "batch_size", "base": MOONS, "batch_sizes": [8, "full"],
                      "sharpness": {"power_iterations": 5, "ascent_steps": 3}})
    curve = out["result"]["curve"]
    assert [c["batch_size"] for c in curve] == [8, "full"]
    assert all("hessian_top_eigenvalue" in c and "epsilon_sharpness" in c for c in curve)


def test_optimizer_comparison_same_init_aligned_curves(env: Any) -> None:
    out = drive(env, {"kind": "optimizer_comparison", "base": MOONS, "optimizers": [
        {"kind": "sgd", "lr": 0.1, "momentum": 0.9}, {"kind": "adam", "lr": 0.01}]})
    result = out["result"]
    assert result["epochs"] == [1, 2, 3, 4]
    assert [r["optimizer"]["kind"] for r in result["runs"]] == ["sgd", "adam"]
    assert all(len(r["curves"]["train_loss"]) == 4 for r in result["runs"])


def test_failed_children_are_named_not_waited_on(env: Any) -> None:
    diverging = {**MOONS, "optimizer": {"kind": "sgd", "lr": 1e4},
                 "data": {"source": {"synthetic": "make_regression", "n_samples": 200}},
                 "loss": {"kind": "mse"}}
    out = drive(env, {"kind": "cross_validation", "k": 2, "base": diverging})
    assert out["status"] == "failed"
    assert {f["status"] for f in out["result"]["failures"]} == {"failed"}


def sweep_with_trials_trained(sessions: sessionmaker[Session], settings: Settings) -> str:
    """A two-trial sweep whose trials have succeeded, waiting for its next advance."""
    request = {"kind": "sweep", "base": MOONS, "parameters": {"optimizer.lr": [0.02, 0.05]}}
    with sessions() as s:
        exp, _ = service.submit(s, tenant_id="t", exp=service.parse(request),
                                settings=settings, idempotency_key=None)
        trials = [j.id for j in repo.children(s, exp.id)]
    for job_id in trials:
        assert execute(job_id, sessions, settings) == "succeeded"
    return exp.id


def test_a_stage_that_cannot_start_ends_the_experiment_failed_with_the_message(
        env: Any) -> None:
    """Submission checks the final retrain; here the limit is tightened afterwards (an
    operator lowering max_work), so starting stage 1 (the final retrain; stages count from
    0) is refused: the experiment must end failed, naming the reason, not be re-advanced
    forever."""
    sessions, settings = env
    exp_id = sweep_with_trials_trained(sessions, settings)
    settings.limits.max_work = 800  # the trials' 4 x 210 rows fit no more; nor does the final
    assert advance_experiment(exp_id, sessions, settings) == "failed"
    assert advance_experiment(exp_id, sessions, settings) == "not-running"
    with sessions() as s:
        row = repo.get_experiment_any_tenant(s, exp_id)
        assert row is not None and row.status == "failed"
        assert row.error_message is not None and "stage 1 could not start" in row.error_message
        assert "exceeds the limit 800" in row.error_message
        assert len(repo.children(s, exp_id)) == 2
        assert repo.experiments_to_advance(s) == []


def test_gradient_boosting_on_more_than_100k_development_rows_runs_every_round(
        env: Any) -> None:
    """Each later round carries one offset per development row (here 102,000)."""
    base = {**SINE, "data": {"source": {"synthetic": "function", "fn": "sin",
                                        "n_samples": 120_000, "noise": 0.1}},
            "model": {"kind": "mlp", "hidden": [4]}, "training": {"epochs": 1,
                                                                  "batch_size": 8192}}
    out = drive(env, {"kind": "boosting", "rounds": 2, "base": base})
    assert out["status"] == "succeeded", out["result"]
    assert len(out["result"]["rounds"]) == 2
    offsets = [j.spec["data"]["target_offset"] for j in out["children"]]
    assert offsets[0] is None and len(offsets[1]) == 102_000


def test_a_stored_request_that_no_longer_parses_ends_the_experiment_failed(env: Any) -> None:
    """Rules tighten between releases (here: k below its minimum, as if stored before the
    rule): advancing must end the experiment with the reason, not raise on every retry."""
    sessions, settings = env
    with sessions() as s:
        exp, _ = service.submit(s, tenant_id="t", exp=service.parse(
            {"kind": "cross_validation", "k": 2, "base": MOONS}), settings=settings,
            idempotency_key=None)
        kids = [j.id for j in repo.children(s, exp.id)]
    for job_id in kids:
        execute(job_id, sessions, settings)
    with sessions() as s:
        row = repo.get_experiment_any_tenant(s, exp.id)
        assert row is not None
        row.request = {**row.request, "k": 1}
        s.commit()
    assert advance_experiment(exp.id, sessions, settings) == "failed"
    with sessions() as s:
        row = repo.get_experiment_any_tenant(s, exp.id)
        assert row is not None and row.status == "failed"
        message = row.error_message or ""
        assert "ValidationError" in message and "greater than or equal to 2" in message


def test_a_database_error_in_aggregation_is_not_shown_to_the_tenant(
        env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The experiment fails naming the error's type; the driver's text (SQL, host) stays in
    the worker's log."""
    import sqlalchemy as sa

    from worker import orchestrate

    sessions, settings = env
    exp_id = sweep_with_trials_trained(sessions, settings)

    def leaky(*_: Any, **__: Any) -> Any:
        with sessions() as s:  # a real driver error (not an outage), its message full of SQL
            s.execute(sa.text("INSERT INTO tenants (id, created_at) VALUES ('t', '2026-01-01')"))

    monkeypatch.setattr(orchestrate, "advance", leaky)
    assert advance_experiment(exp_id, sessions, settings) == "failed"
    with sessions() as s:
        row = repo.get_experiment_any_tenant(s, exp_id)
        assert row is not None and row.error_message is not None
        assert row.error_message.startswith("IntegrityError: a database error"), row
        assert "tenants" not in row.error_message and "INSERT" not in row.error_message


def test_an_outage_during_aggregation_leaves_the_experiment_to_be_advanced_again(
        env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring reads the data: a database that is unreachable for a moment is not the
    design's fault, so the experiment stays running for the reaper's next advance."""
    from sqlalchemy.exc import OperationalError

    from worker import orchestrate

    sessions, settings = env
    exp_id = sweep_with_trials_trained(sessions, settings)

    def unreachable(*_: Any, **__: Any) -> Any:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    real = orchestrate.advance
    monkeypatch.setattr(orchestrate, "advance", unreachable)
    with pytest.raises(OperationalError):
        advance_experiment(exp_id, sessions, settings)
    monkeypatch.setattr(orchestrate, "advance", real)  # SQL is back
    with sessions() as s:
        row = repo.get_experiment_any_tenant(s, exp_id)
        assert row is not None and row.status == "running" and row.error_message is None
    assert advance_experiment(exp_id, sessions, settings).startswith("stage-")
