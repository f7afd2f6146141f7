"""POST /v1/jobs/{id}/predict: raw rows or named records through the job's ONNX graph, in the
API process (onnxruntime; never torch). Every refusal names the row and column at fault.

Per request: the rows as one float32 array, the cached session (no SQL while the job's ready
model was read in the last ``model_state_seconds``) and the answer as plain values for orjson
(bench/predict.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
from sqlalchemy.orm import Session

from app import export_repository as exports
from app.config import Limits, get_settings
from app.errors import Conflict, NotFound, Unprocessable
from app.prediction_schemas import ClassRow, PredictBody, Predictions, ValueRow
from app.services import models
from app.services.inference import Loaded, sessions
from app.services.rows import found
from app.training.blobs import CorruptBlob, verify
from app.training.manifest import LABEL, PROBABILITIES, VALUE, Label, ModelManifest


def _bad(loc: str, message: str) -> Unprocessable:
    return Unprocessable(f"{loc}: {message}", fields=[{"loc": loc, "message": message}])


def predict(session: Session, *, tenant_id: str, job_id: str, body: PredictBody,
            limits: Limits) -> Predictions:
    check_count(body, limits)
    loaded = model(session, tenant_id, job_id)
    return answer(job_id, loaded, run(loaded, matrix(body, loaded)))


def check_count(body: PredictBody, limits: Limits) -> None:
    if body.count > limits.max_predict_rows:
        raise _bad(body.field, f"{body.count:,} rows exceed the limit max_predict_rows "
                   f"{limits.max_predict_rows:,}")


def run(loaded: Loaded, x: np.ndarray) -> list[np.ndarray]:
    """The graph's outputs for rows ``x``, in ``loaded.manifest.outputs`` order."""
    outputs: list[np.ndarray] = loaded.session.run(None, {loaded.manifest.input_name: x})
    return outputs


class ReadyModels:
    """(tenant, job) -> the sha256 of its ready model and until when to trust it, so a
    prediction of a cached model costs no SQL (a single row's ~0.4 ms of ~1 ms in the
    service). Only ready models are kept: a refusal is read afresh every time. The bound:
    a job deleted at time T stops predicting from T + ttl on, in every API process, as a
    revoked key does (app/services/keys.py). A ready export is never replaced in place
    (re-exporting goes through pending, and a new graph is a new session key anyway)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str, job_id: str) -> str | None:
        entry = self._entries.get((tenant_id, job_id))
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def put(self, tenant_id: str, job_id: str, sha256: str, *, read_at: float) -> None:
        """Trusted until ``read_at + ttl``, counted from before the SQL read."""
        ttl = get_settings().model_state_seconds
        if ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_READY_ENTRIES:  # a bound on memory: start over
                self._entries.clear()
            self._entries[(tenant_id, job_id)] = (sha256, read_at + ttl)


MAX_READY_ENTRIES = 10_000
ready = ReadyModels()


def model(session: Session, tenant_id: str, job_id: str) -> Loaded:
    """The job's inference session: from the cache when its graph's sha256 is there, else
    read, verified and loaded once."""
    cache = sessions()
    trusted = ready.get(tenant_id, job_id)
    cached = cache.get(job_id, trusted) if trusted is not None else None
    if cached is not None:
        return cached
    read_at = time.monotonic()
    state = found(exports.serving(session, tenant_id, job_id), "job", job_id)
    models.refuse_unless_ready(job_id, state)
    sha = state.onnx_sha256
    if sha is None:
        raise NotFound(f"job '{job_id}' has no stored model")
    cached = cache.get(job_id, sha)
    if cached is not None:
        ready.put(tenant_id, job_id, sha, read_at=read_at)
        return cached
    meta, graph = exports.meta(session, job_id), exports.onnx_blob(session, job_id)
    if meta is None or graph is None:
        raise NotFound(f"job '{job_id}' has no stored model")
    try:
        verify(graph, meta.onnx_sha256)
    except CorruptBlob as exc:
        raise Conflict(f"the stored model of job '{job_id}' failed its checksum") from exc
    manifest = ModelManifest.model_validate(meta.manifest)
    loaded = cache.load(job_id, graph, meta.onnx_sha256, manifest)
    ready.put(tenant_id, job_id, loaded.sha256, read_at=read_at)
    return loaded


def matrix(body: PredictBody, loaded: Loaded) -> np.ndarray:
    x = from_rows(body.rows, loaded) if body.rows is not None else from_records(body, loaded)
    if not np.isfinite(x).all():
        r, c = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        name = loaded.manifest.feature_names[c] if c < len(loaded.manifest.feature_names) else c
        raise _bad(f"{body.field}.{r}", f"feature '{name}' is NaN, infinite or beyond "
                   "float32's range")
    return x


def from_rows(rows: np.ndarray | list[list[float]], loaded: Loaded) -> np.ndarray:
    if isinstance(rows, np.ndarray):  # parsed as one array already: every row is as wide
        return _checked_width(rows, loaded)
    width = loaded.manifest.input_width
    wrong = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if wrong is not None:
        raise _bad(f"rows.{wrong}", f"has {len(rows[wrong])} values; the model takes {width} "
                   "(model.json's feature_names, in order)")
    if not rows:
        raise _bad("rows", "no rows to predict")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused by the caller
        return np.asarray(rows, dtype=np.float32)


def _checked_width(rows: np.ndarray, loaded: Loaded) -> np.ndarray:
    width = loaded.manifest.input_width
    if len(rows) == 0:
        raise _bad("rows", "no rows to predict")
    if rows.shape[1] != width:
        raise _bad("rows.0", f"has {rows.shape[1]} values; the model takes {width} "
                   "(model.json's feature_names, in order)")
    return rows


def from_records(body: PredictBody, loaded: Loaded) -> np.ndarray:
    records = body.records or []
    columns = loaded.columns
    if columns is None:
        raise _bad("records", "this model's feature names are not unique; send 'rows'")
    if not records:
        raise _bad("records", "no records to predict")
    x = np.empty((len(records), len(columns)), dtype=np.float32)
    for i, record in enumerate(records):
        _check_names(i, record, columns)
        with np.errstate(over="ignore"):
            x[i] = [record[name] for name in loaded.manifest.feature_names]
    return x


def _check_names(i: int, record: dict[str, float | int], columns: dict[str, int]) -> None:
    if len(record) == len(columns) and all(name in columns for name in record):
        return
    unknown = next((name for name in record if name not in columns), None)
    if unknown is not None:
        raise _bad(f"records.{i}", f"unknown feature '{unknown[:100]}'")
    missing = next(name for name in columns if name not in record)
    raise _bad(f"records.{i}", f"missing feature '{missing}'")


def answer(job_id: str, loaded: Loaded, outputs: list[np.ndarray]) -> Predictions:
    card = loaded.manifest
    named = dict(zip(card.outputs, outputs, strict=True))
    predictions: list[ClassRow] | list[ValueRow]
    # plain values straight from the graph's arrays: they are typed already (validating
    # 1,000 rows of pydantic models cost ~10 ms)
    if card.task == "regression":
        predictions = values(named[VALUE])
    else:
        predictions = classes(card.classes or [], named[LABEL], named[PROBABILITIES])
    return Predictions(job_id=job_id, task=card.task, classes=card.classes,
                       predictions=predictions, model_sha256=loaded.sha256)


def values(value: np.ndarray) -> list[ValueRow]:
    return [{"value": v} for v in finite(value).tolist()]


def classes(names: list[Label], labels: np.ndarray, probabilities: np.ndarray) -> list[ClassRow]:
    """Each row's label as the data names it, and every class's probability."""
    return [{"label": names[k], "probabilities": p}
            for k, p in zip(labels.tolist(), probabilities.tolist(), strict=True)]


def finite(value: np.ndarray) -> np.ndarray:
    """A value too large for float32 (an input far outside the training data) is not JSON."""
    if not np.isfinite(value).all():
        raise _bad("rows", "the model's output overflowed float32 for this input")
    return value
