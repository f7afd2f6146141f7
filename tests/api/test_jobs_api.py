"""Job endpoints on SQLite: submission, validation errors, listing, cancel, auth, tenancy."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


def submit(client: TestClient, spec: dict[str, Any] | None = None, **headers: str) -> Any:
    return client.post("/v1/jobs", json=tiny_spec() if spec is None else spec, headers=headers)


def test_submit_returns_201_with_location_and_queued_job(client: TestClient) -> None:
    r = submit(client)
    assert r.status_code == 201
    job = r.json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == {"epoch": 0, "total": 5}
    assert job["spec"]["model"]["hidden"] == [16]
    assert client.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


def test_defaults_fill_the_spec(client: TestClient) -> None:
    job = submit(client, {}).json()
    assert job["spec"]["data"]["source"] == {"builtin": "digits"}
    assert job["spec"]["optimizer"]["kind"] == "adam"


def test_bad_field_gets_422_with_json_path(client: TestClient) -> None:
    r = submit(client, tiny_spec(optimizer={"kind": "adam", "lr": -1}))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert err["fields"][0]["loc"] == "optimizer.lr"
    r = submit(client, tiny_spec(data={"source": {"synthetic": "moons", "noise": "x"}}))
    assert r.json()["error"]["fields"][0]["loc"] == "data.source.noise"


def test_unknown_field_is_refused(client: TestClient) -> None:
    r = submit(client, tiny_spec(model={"kind": "mlp", "hiden": [3]}))
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["loc"] == "model.hiden"


def test_loss_must_agree_with_task(client: TestClient) -> None:
    r = submit(client, tiny_spec(loss={"kind": "mse"}))
    assert r.status_code == 422
    field = r.json()["error"]["fields"][0]
    assert field["loc"] == "loss.kind" and "classification" in field["message"]
    reg = {"data": {"source": {"builtin": "diabetes"}}, "loss": {"kind": "cross_entropy"}}
    assert submit(client, reg).status_code == 422


def test_parameter_cap_refused_before_queueing(client: TestClient) -> None:
    r = submit(client, tiny_spec(model={"kind": "mlp", "hidden": [4096, 4096]}))
    assert r.status_code == 422
    assert "parameters" in r.json()["error"]["message"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_monitor_must_be_a_logged_metric(client: TestClient) -> None:
    spec = tiny_spec(regularization={"early_stopping": {"monitor": "val_rmse"}})
    r = submit(client, spec)
    assert r.status_code == 422
    assert r.json()["error"]["fields"][0]["loc"] == "regularization.early_stopping.monitor"


def test_list_newest_first_with_cursor_and_filters(client: TestClient) -> None:
    ids = [submit(client, tiny_spec(name=f"j{i}")).json()["id"] for i in range(5)]
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["items"]] == ids[::-1][:2]
    second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in second["items"]] == ids[::-1][2:4]
    named = client.get("/v1/jobs", params={"name": "j3"}).json()["items"]
    assert [j["id"] for j in named] == [ids[3]]
    assert client.get("/v1/jobs", params={"status": "running"}).json()["items"] == []
    assert client.get("/v1/jobs", params={"cursor": "%%%"}).status_code == 422


def test_cancel_queued_job_is_immediate(client: TestClient) -> None:
    job = submit(client).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None


def test_idempotency_key(client: TestClient) -> None:
    a = submit(client, tiny_spec(), **{"Idempotency-Key": "k1"})
    b = submit(client, tiny_spec(), **{"Idempotency-Key": "k1"})
    assert a.status_code == 201 and b.status_code == 200 and a.json()["id"] == b.json()["id"]
    c = submit(client, tiny_spec(name="other"), **{"Idempotency-Key": "k1"})
    assert c.status_code == 409
    assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_missing_and_wrong_keys_are_401(client: TestClient) -> None:
    assert client.get("/v1/jobs", headers={"Authorization": ""}).status_code == 401
    r = client.get("/v1/jobs", headers={"Authorization": "Bearer ty_nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200


def test_other_tenants_see_404(client: TestClient, other_client: TestClient) -> None:
    job = submit(client).json()
    for path in ("", "/metrics", "/checkpoints", "/checkpoints/latest"):
        r = other_client.get(f"/v1/jobs/{job['id']}{path}")
        assert r.status_code == 404, path
    assert other_client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert other_client.get("/v1/jobs").json()["items"] == []


def test_unknown_job_404_shape(client: TestClient) -> None:
    r = client.get("/v1/jobs/job_missing")
    assert r.status_code == 404
    assert r.json()["error"] == {"code": "not_found", "message": "no job 'job_missing'",
                                 "fields": []}


def test_metrics_of_queued_job_are_empty(client: TestClient) -> None:
    job = submit(client).json()
    page = client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert page == {"job_status": "queued", "points": [], "next_after": 0}
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints/latest").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints/nope").status_code == 422


def test_body_over_cap_is_413(client: TestClient, monkeypatch: Any) -> None:
    big = {"name": "x" * 100, "pad": "y" * (9 * 1024 * 1024)}
    r = client.post("/v1/jobs", json=big)
    assert r.status_code == 413 and "max_json_bytes" in r.json()["error"]["message"]


def test_catalog_lists_every_option(client: TestClient) -> None:
    cat = client.get("/v1/catalog").json()
    comps = cat["components"]
    assert set(comps["optimizer"]["options"]) == {"sgd", "adagrad", "adadelta", "rmsprop",
                                                   "adam", "adamw"}
    assert comps["optimizer"]["options"]["adam"]["parameters"]["eps"]["default"] == 1e-8
    assert set(comps["model"]["options"]) == {"mlp", "cnn", "rnn", "transformer"}
    rnn, transformer = (comps["model"]["options"][k]["parameters"] for k in ("rnn", "transformer"))
    assert rnn["cell"]["enum"] == ["gru", "lstm"] and rnn["pooling"]["default"] == "last"
    assert transformer["positional"]["enum"] == ["learned", "sinusoidal"]
    assert transformer["pooling"]["enum"] == ["cls", "mean"]
    assert "motif_order" in comps["data.source"]["options"]
    assert "function" in comps["data.source"]["options"]
    assert "early_stopping" in cat["blocks"]["regularization"]["parameters"]
    assert all(o["description"] for c in comps.values() for o in c["options"].values())
    assert all(b["description"] for b in cat["blocks"].values())


def test_catalog_lists_every_experiment_kind(client: TestClient) -> None:
    cat = client.get("/v1/catalog").json()
    kinds = cat["experiments"]
    assert set(kinds) == {"cross_validation", "sweep", "bagging", "boosting", "bias_variance",
                          "batch_size", "optimizer_comparison", "depth"}
    sweep = kinds["sweep"]["parameters"]
    assert "base" not in sweep and "kind" not in sweep
    # example values are user data: shown whole, not filtered like schema keywords
    assert sweep["parameters"]["examples"][0]["optimizer.lr"] == {"log_uniform": [1e-4, 1e-1]}
    assert kinds["cross_validation"]["parameters"]["k"]["minimum"] == 2
    depth = kinds["depth"]
    assert "ResNet" in depth["description"] and depth["parameters"]["width"]["default"] == 32
    assert depth["parameters"]["depths"]["minItems"] == 2
    assert cat["blocks"]["training"]["parameters"]["record_grad_norms"]["default"] is False
    rule = cat["blocks"]["sweep.early_termination"]
    assert rule["parameters"]["grace_epochs"]["default"] == 3 and "median" in rule["description"]


def test_readyz_reports_sql_and_broker(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"sql": "ok", "broker": "ok"}


def test_control_characters_in_names_are_refused(client: TestClient) -> None:
    r = submit(client, tiny_spec(name="bad\x00name"))
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["loc"] == "name"
