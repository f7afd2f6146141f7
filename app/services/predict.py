"""POST /v1/jobs/{id}/predict: raw rows or named records through the job's ONNX graph, in the
API process (onnxruntime; never torch). Every refusal names the row and column at fault."""

from __future__ import annotations

import math

import numpy as np
from sqlalchemy.orm import Session

from app import export_repository as exports
from app.config import Limits
from app.errors import Conflict, NotFound, Unprocessable
from app.prediction_schemas import (
    ClassPrediction,
    PredictRequest,
    PredictResponse,
    ValuePrediction,
)
from app.services import models
from app.services.inference import Loaded, sessions
from app.services.rows import found
from app.training.blobs import CorruptBlob, verify
from app.training.manifest import LABEL, PROBABILITIES, VALUE, ModelManifest


def _bad(loc: str, message: str) -> Unprocessable:
    return Unprocessable(f"{loc}: {message}", fields=[{"loc": loc, "message": message}])


def predict(session: Session, *, tenant_id: str, job_id: str, body: PredictRequest,
            limits: Limits) -> PredictResponse:
    check_count(body, limits)
    loaded = model(session, tenant_id, job_id)
    return answer(job_id, loaded, run(loaded, matrix(body, loaded)))


def check_count(body: PredictRequest, limits: Limits) -> None:
    if body.count > limits.max_predict_rows:
        field = "rows" if body.rows is not None else "records"
        raise _bad(field, f"{body.count:,} rows exceed the limit max_predict_rows "
                   f"{limits.max_predict_rows:,}")


def run(loaded: Loaded, x: np.ndarray) -> list[np.ndarray]:
    """The graph's outputs for rows ``x``, in ``loaded.manifest.outputs`` order."""
    return loaded.session.run(None, {loaded.manifest.input_name: x})


def model(session: Session, tenant_id: str, job_id: str) -> Loaded:
    """The job's inference session: from the cache when its graph's sha256 is there, else
    read, verified and loaded once."""
    state = found(exports.serving(session, tenant_id, job_id), "job", job_id)
    models.refuse_unless_ready(job_id, state)
    sha = state.onnx_sha256
    if sha is None:
        raise NotFound(f"job '{job_id}' has no stored model")
    cache = sessions()
    cached = cache.get(job_id, sha)
    if cached is not None:
        return cached
    meta, graph = exports.meta(session, job_id), exports.onnx_blob(session, job_id)
    if meta is None or graph is None:
        raise NotFound(f"job '{job_id}' has no stored model")
    try:
        verify(graph, meta.onnx_sha256)
    except CorruptBlob as exc:
        raise Conflict(f"the stored model of job '{job_id}' failed its checksum") from exc
    manifest = ModelManifest.model_validate(meta.manifest)
    return cache.load(job_id, graph, meta.onnx_sha256, manifest)


def matrix(body: PredictRequest, loaded: Loaded) -> np.ndarray:
    x = from_rows(body.rows, loaded) if body.rows is not None else from_records(body, loaded)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        field = "rows" if body.rows is not None else "records"
        name = loaded.manifest.feature_names[c] if c < len(loaded.manifest.feature_names) else c
        raise _bad(f"{field}.{r}", f"feature '{name}' is NaN, infinite or beyond float32's "
                   "range")
    return x


def from_rows(rows: list[list[float | int]], loaded: Loaded) -> np.ndarray:
    width = loaded.manifest.input_width
    wrong = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if wrong is not None:
        raise _bad(f"rows.{wrong}", f"has {len(rows[wrong])} values; the model takes {width} "
                   "(model.json's feature_names, in order)")
    if not rows:
        raise _bad("rows", "no rows to predict")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused by the caller
        return np.asarray(rows, dtype=np.float32)


def from_records(body: PredictRequest, loaded: Loaded) -> np.ndarray:
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


def answer(job_id: str, loaded: Loaded, outputs: list[np.ndarray]) -> PredictResponse:
    card = loaded.manifest
    named = dict(zip(card.outputs, outputs, strict=True))
    predictions: list[ClassPrediction] | list[ValuePrediction]
    # model_construct: the values come from the graph, typed already (validating 1,000
    # rows of them cost ~10 ms)
    if card.task == "regression":
        predictions = [ValuePrediction.model_construct(value=finite(v))
                       for v in named[VALUE].tolist()]
    else:
        labels = named[LABEL].tolist()
        predictions = [ClassPrediction.model_construct(label=card.label_of(k), probabilities=p)
                       for k, p in zip(labels, named[PROBABILITIES].tolist(), strict=True)]
    return PredictResponse(job_id=job_id, task=card.task, classes=card.classes,
                           predictions=predictions, model_sha256=loaded.sha256)


def finite(value: float) -> float:
    """A value too large for float32 (an input far outside the training data) is not JSON."""
    if not math.isfinite(value):
        raise _bad("rows", "the model's output overflowed float32 for this input")
    return value
