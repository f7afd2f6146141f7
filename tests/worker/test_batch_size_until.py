"""Batch sizes compared at equal fit (``until``), in-process on SQLite: each child trains
until the target training loss or its epoch budget, and the result says which did not get
there and warns when the fits are not comparable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import experiment_spec as e
from app.config import Settings
from app.training.experiments.aggregate import fit_warnings
from tests.worker.conftest import add_tenants, quiet_broker
from tests.worker.test_experiments_flow import MOONS, drive


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sessions: sessionmaker[Session]) -> tuple[sessionmaker[Session], Settings]:
    quiet_broker(monkeypatch)
    add_tenants(sessions, "t")
    return sessions, Settings(home=tmp_path)


def test_each_batch_size_trains_until_the_target_fit_or_its_budget(env: Any) -> None:
    base = {**MOONS, "training": {"epochs": 12, "batch_size": 32}}
    out = drive(env, {"kind": "batch_size", "base": base, "batch_sizes": [8, "full"],
                      "until": {"train_loss": 0.35},
                      "sharpness": {"power_iterations": 3, "ascent_steps": 2}})
    small, full = out["result"]["curve"]
    assert small["reached"] and small["epochs"] < 12  # stopped at the target
    assert not full["reached"] and full["epochs"] == 12  # one step per epoch: too few
    assert full["fit"] > small["fit"]
    [missed, *_] = out["result"]["warnings"]
    assert "['full'] did not reach the target fit within 12 epochs" in missed


def test_fits_far_apart_are_flagged_even_without_a_target() -> None:
    exp = e.BatchSize.model_validate({"kind": "batch_size", "base": MOONS,
                                      "batch_sizes": [8, 64]})
    near = [{"batch_size": 8, "fit": 0.20}, {"batch_size": 64, "fit": 0.30}]
    far = [{"batch_size": 8, "fit": 0.05}, {"batch_size": 64, "fit": 0.30}]
    assert fit_warnings(exp, near) == []
    [warning] = fit_warnings(exp, far)
    assert "0.05 to 0.3" in warning and "set until" in warning
