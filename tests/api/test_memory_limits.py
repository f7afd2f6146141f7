"""POST /v1/jobs refuses specs a worker could not hold (shapes.memory_estimate), with one
422 naming the estimate, the cap and the field to change, before anything is stored."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec

WIDE_CNN = tiny_spec(  # 1024 channels on 1x100x100 rows: 14 GiB per batch of 64
    data={"source": {"synthetic": "blobs", "n_features": 10_000, "n_samples": 1000},
          "input_shape": [1, 100, 100]},
    model={"kind": "cnn", "channels": [1024]}, training={"epochs": 1, "batch_size": 64})
PREDICTIONS = tiny_spec(  # 1M rows x 1000 class probabilities in the summary
    data={"source": {"synthetic": "blobs", "n_samples": 1_000_000, "centers": 1000}},
    training={"epochs": 1, "record_predictions": True})


@pytest.mark.parametrize(("spec", "loc", "says"), [
    (WIDE_CNN, "training.batch_size", ["GiB of activations per training batch of 64 rows",
                                       "the limit max_activation_bytes is 2.0 GiB"]),
    (PREDICTIONS, "training.record_predictions", ["GiB of memory in a worker",
                                                  "recorded predictions",
                                                  "the limit max_memory_bytes is 8.0 GiB"]),
], ids=["activations", "predictions"])
def test_a_spec_beyond_the_memory_caps_is_a_422_naming_estimate_and_cap(
        client: TestClient, spec: dict[str, Any], loc: str, says: list[str]) -> None:
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["fields"][0]["loc"] == loc
    message = error["fields"][0]["message"]
    assert message.startswith("needs about ") and all(s in message for s in says), message
    assert client.get("/v1/jobs").json()["items"] == []


def test_the_same_spec_fits_once_it_asks_for_less(client: TestClient) -> None:
    small = tiny_spec(data=WIDE_CNN["data"], model={"kind": "cnn", "channels": [8]},
                      training={"epochs": 1, "batch_size": 8})
    assert client.post("/v1/jobs", json=small).status_code == 201
