"""A job's model: its export state, an export on request, the bundle and the graph.

A job that has not succeeded, or whose model is not ready, is refused with 409 and the
reason (pending: Retry-After); another tenant's job is a 404 like a missing one."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from typing import Protocol

from sqlalchemy.orm import Session

from app import export_repository as exports
from app.clock import utcnow
from app.errors import Conflict, NotFound
from app.models import Job, ModelExport
from app.prediction_schemas import ModelState
from app.queue import enqueue_export
from app.services import jobs
from app.statuses import JobStatus, ModelStatus
from app.training.blobs import CorruptBlob, verify

log = logging.getLogger("trainyard.models")
RETRY_AFTER_SECONDS = 5


class ModelPending(Conflict):
    code = "model_pending"


class NoModel(Conflict):
    code = "no_model"


def state(job: Job) -> ModelState | None:
    return (ModelState(status=job.model_status, reason=job.model_error)
            if job.model_status is not None else None)


class ModelColumns(Protocol):
    """A job row, or the narrow read of it that predict makes."""

    @property
    def status(self) -> JobStatus: ...
    @property
    def model_status(self) -> ModelStatus | None: ...
    @property
    def model_error(self) -> str | None: ...


def ready_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """The job, if its model can be served; else 404 or 409 saying why."""
    job = jobs.get(session, tenant_id, job_id)
    refuse_unless_ready(job_id, job)
    return job


def refuse_unless_ready(job_id: str, job: ModelColumns) -> None:
    if job.status != JobStatus.SUCCEEDED:
        raise NoModel(f"job '{job_id}' is {job.status}; only a succeeded job has a model")
    if job.model_status == ModelStatus.PENDING:
        raise ModelPending(f"the model of job '{job_id}' is being exported; retry shortly",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if job.model_status == ModelStatus.FAILED:
        raise NoModel(f"the export of job '{job_id}' failed: {job.model_error}; "
                      f"POST /v1/jobs/{job_id}/model/export to try again")
    if job.model_status is None:
        raise NoModel(f"job '{job_id}' has no exported model (it succeeded before exports, "
                      f"or is an experiment child); POST /v1/jobs/{job_id}/model/export")


def request_export(session: Session, tenant_id: str, job_id: str) -> tuple[ModelState, bool]:
    """Export a succeeded job with no model (or a failed export). Returns (state, sent)."""
    job = jobs.get(session, tenant_id, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise NoModel(f"job '{job_id}' is {job.status}; only a succeeded job can be exported")
    sent = exports.mark_pending(session, job_id, utcnow())
    session.commit()
    if sent:
        try:
            enqueue_export(job.id, job.queue)
        except Exception as exc:  # the broker is down: the reaper re-sends pending exports
            log.warning("export of %s not enqueued (%s)", job_id, type(exc).__name__)
    session.refresh(job)
    current = state(job)
    assert current is not None  # pending, or already pending/ready
    return current, sent


def export_row(session: Session, tenant_id: str, job_id: str) -> ModelExport:
    ready_job(session, tenant_id, job_id)
    row = exports.with_blobs(session, job_id)
    if row is None:
        raise NotFound(f"job '{job_id}' has no stored model")
    _verified(row.onnx, row.onnx_sha256, job_id)
    _verified(row.weights, row.weights_sha256, job_id)
    return row


def _verified(blob: bytes, expected: str, job_id: str) -> None:
    try:
        verify(blob, expected)
    except CorruptBlob as exc:
        raise Conflict(f"the stored model of job '{job_id}' failed its checksum and is not "
                       "served") from exc


def bundle(row: ModelExport) -> bytes:
    """model.onnx, model.safetensors, model.json and a README, as one zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", row.onnx)
        archive.writestr("model.safetensors", row.weights)
        archive.writestr("model.json", json.dumps(row.manifest, indent=2))
        archive.writestr("README.md", readme(row))
    return buffer.getvalue()


def readme(row: ModelExport) -> str:
    card = row.manifest
    width, outputs = card["input_width"], ", ".join(card["outputs"])
    return f"""# Model of job {row.job_id}

`model.onnx` takes raw feature rows (float32, shape [batch, {width}], the columns of
`model.json`'s `feature_names` in order); standardization and the row's view happen inside
the graph. Its outputs: {outputs} (`label` indexes `classes` in model.json; `value` is in the
target's original units). `model.safetensors` holds the same weights for PyTorch.

```python
import json, numpy as np, onnxruntime as ort
card = json.load(open("model.json"))
session = ort.InferenceSession("model.onnx")
rows = np.zeros((1, card["input_width"]), dtype=np.float32)  # your rows here
print(dict(zip(card["outputs"], session.run(None, {{card["input_name"]: rows}}))))
```

sha256: model.onnx {row.onnx_sha256}, model.safetensors {row.weights_sha256}
"""


def onnx_file(session: Session, tenant_id: str, job_id: str) -> tuple[bytes, str]:
    """The graph alone, and its sha256."""
    ready_job(session, tenant_id, job_id)
    blob = exports.onnx_blob(session, job_id)
    meta = exports.meta(session, job_id)
    if blob is None or meta is None:
        raise NotFound(f"job '{job_id}' has no stored model")
    _verified(blob, meta.onnx_sha256, job_id)
    return blob, meta.onnx_sha256
