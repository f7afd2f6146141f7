"""GET /v1/compare: curves aligned by epoch, summaries, spec differences, and refusals."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

MOONS: dict[str, Any] = {
    "data": {"source": {"synthetic": "moons", "n_samples": 200}},
    "model": {"kind": "mlp", "hidden": [8]}, "optimizer": {"kind": "sgd", "lr": 0.1},
    "training": {"epochs": 5, "batch_size": 32}}


def submit(client: TestClient, **changes: Any) -> str:
    spec = {**MOONS, **changes}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def log_points(job_id: str, split: str, name: str, values: list[float]) -> None:
    """Metric rows as a worker's sink writes them (the compare route only reads)."""
    from app.db import session_scope
    from app.models import Metric

    with session_scope() as session:
        session.add_all(Metric(job_id=job_id, epoch=epoch, split=split, name=name, value=value,
                               attempt=1) for epoch, value in enumerate(values, start=1))


def test_curves_align_by_epoch_and_only_differing_spec_paths_are_listed(
        client: TestClient) -> None:
    a = submit(client, name="a")
    b = submit(client, name="b", optimizer={"kind": "sgd", "lr": 0.5})
    log_points(a, "val", "loss", [0.9, 0.7, 0.6])
    log_points(b, "val", "loss", [0.8, 0.5])  # stopped (or still running) after two epochs
    log_points(a, "train", "loss", [1.0])

    body = client.get("/v1/compare", params={"jobs": f"{a},{b}",
                                             "metrics": "val_loss,train_loss"}).json()
    assert [j["id"] for j in body["jobs"]] == [a, b]
    assert body["curves"]["val_loss"] == {"epochs": [1, 2, 3],
                                          "values": {a: [0.9, 0.7, 0.6], b: [0.8, 0.5, None]}}
    assert body["curves"]["train_loss"]["values"] == {a: [1.0], b: [None]}
    differences = {d["path"]: d["values"] for d in body["spec_differences"]}
    assert differences == {"optimizer.lr": {a: 0.1, b: 0.5}}  # the name is a label, not training


def test_a_default_is_compared_with_a_value_set_explicitly(client: TestClient) -> None:
    a = submit(client)
    b = submit(client, model={"kind": "mlp", "hidden": [8], "dropout": 0.2})
    body = client.get("/v1/compare", params={"jobs": f"{a},{b}"}).json()
    paths = {d["path"]: d["values"] for d in body["spec_differences"]}
    assert paths == {"model.dropout": {a: 0.0, b: 0.2}}
    assert set(body["curves"]) == {"train_loss", "val_loss"}  # the default metrics


def test_a_path_only_one_spec_has_is_a_difference() -> None:
    from app.services.compare import spec_differences

    found = spec_differences({"a": {"model": {"kind": "mlp", "hidden": [8]}},
                              "b": {"model": {"kind": "cnn", "channels": [4]}}})
    assert [(d.path, d.values) for d in found] == [
        ("model.channels", {"b": [4]}), ("model.hidden", {"a": [8]}),
        ("model.kind", {"a": "mlp", "b": "cnn"})]


def test_a_foreign_or_missing_job_answers_404(client: TestClient,
                                              other_client: TestClient) -> None:
    mine, theirs = submit(client), submit(other_client)
    for ids in (f"{mine},{theirs}", f"{mine},job_missing"):
        response = client.get("/v1/compare", params={"jobs": ids})
        assert response.status_code == 404, response.text
    foreign = client.get("/v1/compare", params={"jobs": f"{mine},{theirs}"}).json()
    missing = client.get("/v1/compare", params={"jobs": f"{mine},job_missing"}).json()
    assert foreign["error"]["code"] == missing["error"]["code"] == "not_found"


def test_bad_lists_are_refused_naming_the_field(client: TestClient) -> None:
    a, b = submit(client), submit(client)
    cases = {
        "jobs": {"jobs": a},
        "metrics": {"jobs": f"{a},{b}", "metrics": "val_loss,nonsense"},
    }
    for field, params in cases.items():
        response = client.get("/v1/compare", params=params)
        assert response.status_code == 422, (field, response.text)
        assert field in response.text
    repeated = client.get("/v1/compare", params={"jobs": f"{a},{a}"})
    assert repeated.status_code == 422 and "repeated" in repeated.text
    too_many = client.get("/v1/compare", params={"jobs": ",".join([a] * 11)})
    assert too_many.status_code == 422 and "at most 10" in too_many.text
