"""Every ready spec in examples/ is accepted by the API as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOBS = sorted(EXAMPLES.glob("*.json"))
EXPERIMENTS = sorted((EXAMPLES / "experiments").glob("*.json"))


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_example_is_accepted(client: TestClient, path: Path) -> None:
    r = client.post("/v1/jobs", json=json.loads(path.read_text()))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_example_is_accepted(client: TestClient, path: Path) -> None:
    r = client.post("/v1/experiments", json=json.loads(path.read_text()))
    assert r.status_code == 201, r.text
    assert r.json()["progress"]["total"] >= 1


def test_there_is_an_example_per_experiment_kind() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in EXPERIMENTS}
    assert kinds == {"cross_validation", "sweep", "bagging", "boosting", "bias_variance",
                     "batch_size", "optimizer_comparison"}
