"""An experiment's model on the embedded default with a real worker process: members trained,
exported and aggregated by the worker, predictions served by the API process. Bagging through
the CLI (`trainyard predict exp_...`), gradient boosting through HTTP; each reproduces the
ensemble test metric the experiment reports."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app import spec as s
from app.training.data import load_arrays
from app.training.export import held_out_rows, split_indices
from tests.api.test_models_api import CLASSES, bird_csv
from tests.conftest import Stack, tiny_spec, wait_for
from tests.integration.test_experiments import SINE, wait_experiment
from tests.integration.test_models_stacks import bird_test_rows, rows_csv

pytestmark = pytest.mark.integration


def served(client: httpx.Client, exp_id: str, rows: np.ndarray) -> dict[str, Any]:
    """The ensemble's answer once every member's export is stored (409 model_pending until
    then)."""
    def answer() -> dict[str, Any] | None:
        reply = client.post(f"/v1/experiments/{exp_id}/predict", json={"rows": rows.tolist()})
        if reply.status_code == 409 and reply.json()["error"]["code"] == "model_pending":
            assert reply.headers["Retry-After"]
            return None
        assert reply.status_code == 200, reply.text
        return reply.json()  # type: ignore[no-any-return]

    return wait_for(answer, 120, 0.3, f"the models of {exp_id}")  # type: ignore[no-any-return]


def test_ensembles_reproduce_their_reported_test_metrics(embedded: Stack,
                                                         tmp_path: Path) -> None:
    embedded.start_worker("w1")
    embedded.env |= {"TRAINYARD_URL": embedded.url, "TRAINYARD_API_KEY": embedded.key}
    client = embedded.client()
    upload = client.post("/v1/datasets", files={"file": ("birds.csv", bird_csv())},
                         data={"target": "species"}).json()
    birds = tiny_spec(data={"source": {"dataset": upload["id"]}},
                      model={"kind": "mlp", "hidden": [16]}, training={"epochs": 3})
    ids = [client.post("/v1/experiments", json=request).json()["id"] for request in (
        {"kind": "bagging", "n_models": 2, "base": birds},
        {"kind": "boosting", "rounds": 2, "base": SINE})]
    bagging, boosting = (wait_experiment(client, i, timeout=300) for i in ids)
    assert bagging["status"] == boosting["status"] == "succeeded", (bagging, boosting)

    rows, y = bird_test_rows(birds)
    table = rows_csv(tmp_path / "rows.csv", rows)
    served(client, bagging["id"], rows[:1])  # every member exported
    embedded.cli("predict", bagging["id"], str(table), "-o", str(tmp_path / "out.csv"))
    with (tmp_path / "out.csv").open() as handle:
        labels = [p["label"] for p in csv.DictReader(handle)]
    accuracy = float(np.mean([label == CLASSES[k] for label, k in zip(labels, y, strict=True)]))
    assert abs(accuracy - bagging["result"]["ensemble_test"]["accuracy"]) <= 1e-6

    parsed = s.JobSpec.model_validate(SINE)
    arrays = load_arrays(parsed.data.source)
    sine_rows = held_out_rows(parsed.data, arrays)
    sine_y = arrays.y[split_indices(arrays.y, parsed.data.split, arrays.info).test]
    body = served(client, boosting["id"], sine_rows)
    values = np.array([p["value"] for p in body["predictions"]])
    rmse = math.sqrt(float(np.mean((values - sine_y) ** 2)))
    reported = boosting["result"]["rounds"][-1]["ensemble_test"]["rmse"]
    assert rmse == pytest.approx(reported, abs=1e-6)
    assert [m["job_id"] for m in body["members"]] == [
        r["job_id"] for r in boosting["result"]["rounds"]]

    stranger = embedded.client(embedded.new_key("stranger"))
    assert stranger.post(f"/v1/experiments/{ids[0]}/predict",
                         json={"rows": rows[:1].tolist()}).status_code == 404
