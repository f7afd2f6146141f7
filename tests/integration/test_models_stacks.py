"""Use what you trained, on both deployments (the embedded default, and Postgres + Redis) with
real worker processes: the export follows the job, the CLI predicts from a CSV and downloads
the bundle, predictions reproduce the job's test metrics, the bundle runs without Trainyard."""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app import spec as s
from app.training.data import Uploaded, load_arrays
from app.training.export import held_out_rows, split_indices
from tests.api.test_models_api import CLASSES, bird_csv
from tests.conftest import Stack, tiny_spec, wait_for, wait_job

pytestmark = pytest.mark.integration
NAMES = ["wing", "beak", "leg", "neck", "mass", "tail"]


@pytest.fixture(params=["embedded", "distributed"])
def stack(request: pytest.FixtureRequest) -> Stack:
    deployment: Stack = request.getfixturevalue(request.param)
    deployment.start_worker("w1")
    deployment.env |= {"TRAINYARD_URL": deployment.url, "TRAINYARD_API_KEY": deployment.key}
    return deployment


def model_ready(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = wait_job(client, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["model"]["status"] in ("pending", "ready")  # never absent once succeeded

    def ready() -> dict[str, Any] | None:
        now = client.get(f"/v1/jobs/{job_id}").json()
        assert now["model"]["status"] != "failed", now["model"]
        return now if now["model"]["status"] == "ready" else None

    return wait_for(ready, 120, 0.3, f"the model of {job_id}")  # type: ignore[no-any-return]


def rows_csv(path: Path, rows: np.ndarray) -> Path:
    """The rows as a CSV with the feature names as its header (what `trainyard predict` reads)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(NAMES)
        writer.writerows(rows.tolist())
    return path


def bird_test_rows(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The job's held-out rows, re-derived here from the CSV it was trained on."""
    lines = list(csv.reader(bird_csv().decode().splitlines()))[1:]
    x = np.array([[float(v) for v in line[:-1]] for line in lines], dtype=np.float32)
    y = np.array([CLASSES.index(line[-1]) for line in lines])  # sorted, as the upload encodes
    parsed = s.JobSpec.model_validate(spec)
    arrays = load_arrays(parsed.data.source, lambda _: Uploaded(x, y), "classification")
    return held_out_rows(parsed.data, arrays), y[split_indices(y, parsed.data.split,
                                                                arrays.info).test]


def test_predict_and_download_reproduce_the_jobs_test_metrics(stack: Stack,
                                                              tmp_path: Path) -> None:
    client = stack.client()
    upload = client.post("/v1/datasets", files={"file": ("birds.csv", bird_csv())},
                         data={"target": "species"}).json()
    birds = tiny_spec(data={"source": {"dataset": upload["id"]}},
                      model={"kind": "mlp", "hidden": [16]}, training={"epochs": 8})
    diabetes = tiny_spec(data={"source": {"builtin": "diabetes"}}, loss={"kind": "mse"},
                         model={"kind": "mlp", "hidden": [32]}, training={"epochs": 15})
    ids = [client.post("/v1/jobs", json=spec).json()["id"] for spec in (birds, diabetes)]
    job = model_ready(client, ids[0])

    rows, y = bird_test_rows(birds)
    table = rows_csv(tmp_path / "rows.csv", rows)
    stack.cli("predict", job["id"], str(table), "-o", str(tmp_path / "out.csv"))
    with (tmp_path / "out.csv").open() as handle:
        predicted = list(csv.DictReader(handle))
    labels = [p["label"] for p in predicted]
    accuracy = float(np.mean([label == CLASSES[k] for label, k in zip(labels, y, strict=True)]))
    assert abs(accuracy - job["summary"]["test"]["accuracy"]) <= 1e-6

    shuffled = [dict(random.Random(i).sample(list(zip(NAMES, r, strict=True)), len(NAMES)))
                for i, r in enumerate(rows.tolist())]
    by_name = client.post(f"/v1/jobs/{job['id']}/predict", json={"records": shuffled}).json()
    assert [p["label"] for p in by_name["predictions"]] == labels

    folder = tmp_path / "bundle"
    stack.cli("download", job["id"], "-o", str(folder))
    assert bundle_runs_alone(folder, rows) == [[float(p[f"p_{c}"]) for c in CLASSES]
                                               for p in predicted]
    regression_in_original_units(client, model_ready(client, ids[1]), diabetes)

    stranger = stack.client(stack.new_key("stranger"))
    assert stranger.post(f"/v1/jobs/{job['id']}/predict",
                         json={"rows": rows[:1].tolist()}).status_code == 404


def bundle_runs_alone(folder: Path, rows: np.ndarray) -> list[list[float]]:
    """model.onnx under onnxruntime in a fresh, isolated interpreter: no Trainyard, no torch."""
    np.save(folder / "rows.npy", rows)
    script = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "card = json.load(open('model.json'))\n"
        "out = ort.InferenceSession('model.onnx').run(None, {'rows': np.load('rows.npy')})\n"
        "assert not {'app', 'worker', 'trainyard', 'torch'} & {m.split('.')[0] "
        "for m in sys.modules}\n"
        "print(json.dumps(out[0].tolist()))\n")
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def regression_in_original_units(client: httpx.Client, job: dict[str, Any],
                                 spec: dict[str, Any]) -> None:
    parsed = s.JobSpec.model_validate(spec)
    arrays = load_arrays(parsed.data.source)
    rows = held_out_rows(parsed.data, arrays)
    y = arrays.y[split_indices(arrays.y, parsed.data.split, arrays.info).test]
    body = client.post(f"/v1/jobs/{job['id']}/predict", json={"rows": rows.tolist()}).json()
    values = np.array([p["value"] for p in body["predictions"]])
    rmse = math.sqrt(float(np.mean((values - y) ** 2)))
    assert rmse == pytest.approx(job["summary"]["test"]["rmse"], rel=1e-6)
