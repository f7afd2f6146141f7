"""Predictions and downloads through the real app in-process (SQLite); the job is trained and
exported by the worker's own functions in this process. The real stacks (embedded and
Postgres + Redis, real worker processes) are tests/integration/test_models_stacks.py."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import spec as s
from tests.conftest import tiny_spec

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["heron", "ibis", "stork"]


def bird_csv(rows: int = 180) -> bytes:
    """Three string classes, six features, separable enough to learn in a few epochs."""
    rng = np.random.default_rng(7)
    lines = ["wing,beak,leg,neck,mass,tail,species"]
    for i in range(rows):
        k = i % 3
        values = rng.normal(loc=[k, 2 * k, -k, 0.5 * k, 3.0, k * k], scale=0.6)
        lines.append(",".join(f"{v:.4f}" for v in values) + f",{CLASSES[k]}")
    return ("\n".join(lines) + "\n").encode()


def trained(client: TestClient, spec: dict[str, Any], *, export: bool = True) -> dict[str, Any]:
    """Submit through the API, then run the job (and its export) with the worker's code."""
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute
    from worker.export import export_model

    job = client.post("/v1/jobs", json=spec).json()
    assert execute(job["id"], get_sessionmaker(), get_settings()) == "succeeded"
    assert client.get(f"/v1/jobs/{job['id']}").json()["model"]["status"] == "pending"
    if export:
        assert export_model(job["id"], get_sessionmaker(), get_settings()) == "ready"
    return client.get(f"/v1/jobs/{job['id']}").json()  # type: ignore[no-any-return]


def held_out(spec: dict[str, Any], tenant: str) -> tuple[np.ndarray, np.ndarray]:
    """The job's test rows as uploaded, and their targets (class indices or values)."""
    from app.db import get_sessionmaker
    from app.training.data import load_arrays
    from app.training.export import held_out_rows, split_indices
    from worker.datasets import dataset_loader

    parsed = s.JobSpec.model_validate(spec)
    task = "regression" if parsed.loss.kind == "mse" else "classification"
    arrays = load_arrays(parsed.data.source, dataset_loader(get_sessionmaker(), tenant), task)
    test = split_indices(arrays.y, parsed.data.split, arrays.info).test
    return held_out_rows(parsed.data, arrays), arrays.y[test]


@pytest.fixture()
def birds(client: TestClient) -> dict[str, Any]:
    upload = client.post("/v1/datasets", files={"file": ("birds.csv", bird_csv())},
                         data={"target": "species"}).json()
    spec = tiny_spec(data={"source": {"dataset": upload["id"]}},
                     model={"kind": "mlp", "hidden": [16], "norm": "batch"},
                     training={"epochs": 8, "batch_size": 32})
    return {"spec": spec, "job": trained(client, spec)}


def test_predictions_reproduce_the_test_accuracy_with_the_csvs_string_labels(
        client: TestClient, birds: dict[str, Any]) -> None:
    job, spec = birds["job"], birds["spec"]
    assert job["model"] == {"status": "ready", "reason": None}
    rows, y = held_out(spec, "alice")
    answer = client.post(f"/v1/jobs/{job['id']}/predict", json={"rows": rows.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["classes"] == CLASSES and body["task"] == "classification"
    labels = [p["label"] for p in body["predictions"]]
    assert set(labels) <= set(CLASSES)
    accuracy = float(np.mean([label == CLASSES[k] for label, k in zip(labels, y, strict=True)]))
    assert abs(accuracy - job["summary"]["test"]["accuracy"]) <= 1e-6
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in body["predictions"])


def test_records_by_feature_name_in_any_order_match_rows(
        client: TestClient, birds: dict[str, Any]) -> None:
    job_id = birds["job"]["id"]
    rows, _ = held_out(birds["spec"], "alice")
    names = ["wing", "beak", "leg", "neck", "mass", "tail"]
    records = [dict(reversed(list(zip(names, row.tolist(), strict=True)))) for row in rows[:7]]
    by_name = client.post(f"/v1/jobs/{job_id}/predict", json={"records": records}).json()
    by_row = client.post(f"/v1/jobs/{job_id}/predict", json={"rows": rows[:7].tolist()}).json()
    assert by_name["predictions"] == by_row["predictions"]


def test_the_bundle_runs_under_onnxruntime_in_a_fresh_process(
        client: TestClient, birds: dict[str, Any], tmp_path: Path) -> None:
    job_id = birds["job"]["id"]
    rows, _ = held_out(birds["spec"], "alice")
    reply = client.get(f"/v1/jobs/{job_id}/model")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.content)) as archive:
        assert sorted(archive.namelist()) == ["README.md", "model.json", "model.onnx",
                                              "model.safetensors"]
        archive.extractall(tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["classes"] == CLASSES and len(card["feature_names"]) == 6
    assert card["standardization"]["features"]["mean"] and card["test_metrics"]["accuracy"] > 0
    graph = client.get(f"/v1/jobs/{job_id}/model.onnx")
    assert graph.content == (tmp_path / "model.onnx").read_bytes()
    assert graph.headers["X-Model-SHA256"] == card["files"]["model.onnx"]
    np.save(tmp_path / "rows.npy", rows)
    script = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "card = json.load(open('model.json'))\n"
        "session = ort.InferenceSession('model.onnx')\n"
        "out = session.run(None, {card['input_name']: np.load('rows.npy')})\n"
        "assert not any(m.split('.')[0] in ('app', 'worker', 'trainyard', 'torch') "
        "for m in sys.modules), 'a Trainyard or torch import'\n"
        "print(json.dumps(out[0].tolist()))\n")
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    offline = json.loads(done.stdout)
    online = client.post(f"/v1/jobs/{job_id}/predict", json={"rows": rows.tolist()}).json()
    assert offline == [p["probabilities"] for p in online["predictions"]]


def test_regression_values_come_back_in_the_targets_original_units(
        client: TestClient) -> None:
    spec = tiny_spec(data={"source": {"builtin": "diabetes"}}, loss={"kind": "mse"},
                     model={"kind": "mlp", "hidden": [32]}, training={"epochs": 20})
    job = trained(client, spec)
    rows, y = held_out(spec, "alice")
    body = client.post(f"/v1/jobs/{job['id']}/predict", json={"rows": rows.tolist()}).json()
    values = np.array([p["value"] for p in body["predictions"]])
    rmse = math.sqrt(float(np.mean((values - y) ** 2)))
    assert rmse == pytest.approx(job["summary"]["test"]["rmse"], rel=1e-6)
    assert 25 < values.mean() < 350  # diabetes progression, not standardized units


def refusal(client: TestClient, job_id: str, body: Any, *, status: int = 422,
            **kwargs: Any) -> dict[str, Any]:
    reply = client.post(f"/v1/jobs/{job_id}/predict", json=body, **kwargs)
    assert reply.status_code == status, reply.text
    return reply.json()["error"]  # type: ignore[no-any-return]


def test_bad_input_gets_a_4xx_naming_the_problem(client: TestClient,
                                                 birds: dict[str, Any]) -> None:
    job_id = birds["job"]["id"]
    row = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    names = ["wing", "beak", "leg", "neck", "mass", "tail"]
    record = dict(zip(names, row, strict=True))
    wrong = refusal(client, job_id, {"rows": [row, row[:5]]})
    assert wrong["fields"][0]["loc"] == "rows.1" and "takes 6" in wrong["message"]
    unknown = refusal(client, job_id, {"records": [record, {**record, "wingspan": 1.0}]})
    assert unknown["fields"][0]["loc"] == "records.1" and "'wingspan'" in unknown["message"]
    missing = refusal(client, job_id, {"records": [{k: v for k, v in record.items()
                                                    if k != "neck"}]})
    assert "missing feature 'neck'" in missing["message"]
    nan = client.post(f"/v1/jobs/{job_id}/predict", content=b'{"rows": [[0, 0, NaN, 0, 0, 0]]}',
                      headers={"Content-Type": "application/json"})
    assert nan.status_code == 422 and "'leg'" in nan.json()["error"]["message"], nan.text
    huge = refusal(client, job_id, {"rows": [[0, 0, 0, 1e39, 0, 0]]})
    assert "'neck'" in huge["message"] and "float32" in huge["message"]
    assert refusal(client, job_id, {"rows": [row], "records": [record]})["fields"]
    assert refusal(client, job_id, {})["fields"]
    strings = refusal(client, job_id, {"rows": [["0.1", 0, 0, 0, 0, 0]]})
    assert strings["fields"][0]["loc"].startswith("rows.0.0")
    assert refusal(client, job_id, {"rows": [[True, 0, 0, 0, 0, 0]]})["fields"]
    assert "no rows" in refusal(client, job_id, {"rows": []})["message"]
    assert "max_predict_rows" in refusal(client, job_id, {"rows": [row] * 10_001})["message"]
    big = b'{"rows": [' + b",".join([b"[0,0,0,0,0,0]"] * 1_300_000) + b"]}"
    too_large = client.post(f"/v1/jobs/{job_id}/predict", content=big,
                            headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413 and "max_predict_bytes" in too_large.text


def test_another_tenants_job_is_a_404_like_a_missing_one(
        client: TestClient, other_client: TestClient, birds: dict[str, Any]) -> None:
    job_id = birds["job"]["id"]
    for method, path in [("POST", "predict"), ("GET", "model"), ("GET", "model.onnx"),
                         ("POST", "model/export")]:
        theirs = other_client.request(method, f"/v1/jobs/{job_id}/{path}",
                                      json={"rows": [[0] * 6]})
        missing = other_client.request(method, f"/v1/jobs/job_missing/{path}",
                                       json={"rows": [[0] * 6]})
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"].replace(job_id, "job_missing") == \
            missing.json()["error"]["message"]


def set_model(job_id: str, status: str | None, error: str | None = None) -> None:
    from app.db import session_scope
    from app.models import Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.model_status, job.model_error = status, error  # type: ignore[assignment]
        session.commit()


def test_a_model_not_ready_is_a_409_saying_why(client: TestClient,
                                               birds: dict[str, Any]) -> None:
    job_id, row = birds["job"]["id"], [[0.0] * 6]
    set_model(job_id, "pending")
    for reply in (client.post(f"/v1/jobs/{job_id}/predict", json={"rows": row}),
                  client.get(f"/v1/jobs/{job_id}/model"),
                  client.get(f"/v1/jobs/{job_id}/model.onnx")):
        assert reply.status_code == 409 and reply.headers["Retry-After"] == "5"
        assert reply.json()["error"]["code"] == "model_pending"
    set_model(job_id, "failed", "the ONNX graph differs from the torch model by 0.3")
    failed = refusal(client, job_id, {"rows": row}, status=409)
    assert "differs from the torch model" in failed["message"]
    queued = client.post("/v1/jobs", json=tiny_spec()).json()
    assert "is queued" in refusal(client, queued["id"], {"rows": [[0, 0]]}, status=409)["message"]


def test_a_job_from_before_exports_is_exported_on_request(
        client: TestClient, birds: dict[str, Any]) -> None:
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.export import export_model

    job_id = birds["job"]["id"]
    assert client.post(f"/v1/jobs/{job_id}/model/export").status_code == 200  # ready already
    set_model(job_id, None)
    assert client.get(f"/v1/jobs/{job_id}").json()["model"] is None
    assert "POST /v1/jobs" in refusal(client, job_id, {"rows": [[0] * 6]}, status=409)["message"]
    sent = client.post(f"/v1/jobs/{job_id}/model/export")
    assert sent.status_code == 202 and sent.json() == {"status": "pending", "reason": None}
    assert client.post(f"/v1/jobs/{job_id}/model/export").status_code == 200  # sent once
    assert export_model(job_id, get_sessionmaker(), get_settings()) == "ready"
    assert client.get(f"/v1/jobs/{job_id}").json()["model"]["status"] == "ready"
    assert client.post(f"/v1/jobs/{job_id}/predict", json={"rows": [[0] * 6]}).status_code == 200


def modules_after_predicting(app_home: Path, key: str, path: str, check: str) -> Any:
    """A fresh interpreter builds the app and serves one prediction at ``path`` (``check``:
    a Python condition on ``r``); which of torch, sklearn and onnxruntime it loaded."""
    script = (
        "import sys, json\n"
        "from fastapi.testclient import TestClient\n"
        "from app.main import create_app\n"
        "with TestClient(create_app()) as c:\n"
        f"    r = c.post('{path}', json={{'rows': [[0.5] * 6]}},\n"
        f"               headers={{'Authorization': 'Bearer {key}'}})\n"
        f"    assert {check}, r.text\n"
        "print(json.dumps({n: n in sys.modules for n in ('torch', 'sklearn', 'onnxruntime')}))\n")
    env = {"TRAINYARD_HOME": str(app_home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_api_process_predicts_without_importing_torch(
        client: TestClient, birds: dict[str, Any], app_home: Path) -> None:
    """A fresh interpreter: the app built, a prediction served, and no torch loaded."""
    from tests.api.conftest import make_key

    seen = modules_after_predicting(app_home, make_key("alice"),
                                    f"/v1/jobs/{birds['job']['id']}/predict",
                                    "r.status_code == 200")
    assert seen == {"torch": False, "sklearn": False, "onnxruntime": True}


def test_the_session_cache_keeps_the_most_recent_models_within_its_bytes() -> None:
    from app.services.inference import MEMORY_PER_GRAPH_BYTE, SessionCache
    from app.training.manifest import ModelManifest

    graph = tiny_graph()
    cost = len(graph) * MEMORY_PER_GRAPH_BYTE
    card = ModelManifest.model_construct(feature_names=["a", "b"], input_width=2)
    cache = SessionCache(max_bytes=2 * cost, threads=1)
    for job in ("j1", "j2"):
        cache.load(job, graph, "sha-1", card)
    assert cache.get("j1", "sha-1") is not None  # j1 is now the most recent
    cache.load("j3", graph, "sha-1", card)
    assert cache.keys() == [("j1", "sha-1"), ("j3", "sha-1")] and cache.used == 2 * cost
    assert cache.get("j1", "sha-2") is None  # a re-exported graph is a new key
    tiny = SessionCache(max_bytes=cost - 1, threads=1)
    assert tiny.load("j1", graph, "sha-1", card).session is not None and tiny.keys() == []


def tiny_graph() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["rows"], ["value"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.30 reads (onnx 1.23 would write a newer one)
    return bytes(model.SerializeToString())


def test_an_upload_keeps_every_feature_name(client: TestClient) -> None:
    """model.json names every input column: uploads store all their names (once only the
    first 1,000 were kept, while 10,000 columns were allowed)."""
    names = [f"f{i}" for i in range(1_500)]
    content = (",".join([*names, "y"]) + "\n" + ",".join(["1"] * 1_500 + ["a"]) + "\n"
               + ",".join(["2"] * 1_500 + ["b"]) + "\n").encode()
    made = client.post("/v1/datasets", files={"file": ("wide.csv", content)},
                       data={"target": "y"})
    assert made.status_code == 201, made.text
    stored = client.get(f"/v1/datasets/{made.json()['id']}").json()
    assert stored["info"]["feature_names"] == names
