"""Every ready spec in examples/ is accepted by the API as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.spec_unions import experiment_kinds

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
    # the kinds are read from the union in app.experiment_spec: a kind added there without
    # an example fails here, and its example must then pass the submission (planning, child
    # validation) above and the error paths below
    kinds = [json.loads(p.read_text())["kind"] for p in EXPERIMENTS]
    assert sorted(set(kinds)) == sorted(experiment_kinds())


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_an_error_in_any_kind_is_named_by_the_path_the_user_wrote(client: TestClient,
                                                                  path: Path) -> None:
    # neither the experiment's kind nor the model's (union tags pydantic adds) is in the path
    body = json.loads(path.read_text())
    body["base"]["model"]["dropout"] = "high"
    r = client.post("/v1/experiments", json=body)
    assert r.status_code == 422, r.text
    assert [f["loc"] for f in r.json()["error"]["fields"]] == ["base.model.dropout"]


def test_an_error_in_a_list_of_unions_keeps_the_index(client: TestClient) -> None:
    body = json.loads((EXAMPLES / "experiments" / "optimizers-digits.json").read_text())
    body["optimizers"][1]["momentum"] = "lots"
    r = client.post("/v1/experiments", json=body)
    assert r.status_code == 422, r.text
    assert [f["loc"] for f in r.json()["error"]["fields"]] == ["optimizers.1.momentum"]
