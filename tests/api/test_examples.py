"""Every ready spec in examples/ is accepted by the API as it is.

A fine-tune example starts from another example's job: where its ``model.init_from.job``
needs that job's id it says ``<job id of NAME.json>``, and the test submits and runs that
example first (one epoch, in this process, with the worker's code) and puts its id there,
as a user does with the id the first submission returned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.spec_unions import experiment_kinds

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOBS = sorted(EXAMPLES.glob("*.json"))
EXPERIMENTS = sorted((EXAMPLES / "experiments").glob("*.json"))


PLACEHOLDER = re.compile(r"^<job id of (?P<example>[\w.-]+\.json)>$")


def _ran(client: TestClient, example: str) -> str:
    """The id of a succeeded job of ``example`` (trained for one epoch: only its weights'
    names and shapes matter to the submission that starts from them)."""
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute

    body = json.loads((EXAMPLES / example).read_text())
    body["training"]["epochs"] = 1
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    assert execute(r.json()["id"], get_sessionmaker(), get_settings()) == "succeeded"
    return str(r.json()["id"])


def with_sources(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each ``<job id of NAME.json>`` replaced by a run of that example."""
    init = body.get("model", {}).get("init_from")
    if init is not None and (named := PLACEHOLDER.match(init["job"])):
        init["job"] = _ran(client, named["example"])
    return body


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_example_is_accepted(client: TestClient, path: Path) -> None:
    r = client.post("/v1/jobs", json=with_sources(client, json.loads(path.read_text())))
    assert r.status_code == 201, r.text


def test_the_fine_tune_example_starts_from_the_pretext_example() -> None:
    body = json.loads((EXAMPLES / "digits-finetune-few-labels.json").read_text())
    named = PLACEHOLDER.match(body["model"]["init_from"]["job"])
    assert named is not None and (EXAMPLES / named["example"]).is_file()
    assert json.loads((EXAMPLES / named["example"]).read_text())["task"] == "reconstruction"


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
