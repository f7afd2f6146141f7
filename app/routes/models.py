"""/v1/jobs/{id}/model, /model.onnx, /model/export and /predict: use what a job trained."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.db import get_sessionmaker
from app.deps import SessionDep, TenantDep
from app.errors import Unprocessable
from app.prediction_schemas import (
    NPY,
    BadBody,
    ModelState,
    PredictBody,
    Predictions,
    PredictRequest,
    PredictResponse,
    read_json,
    read_npy,
)
from app.schemas import error_responses
from app.services import models as service
from app.services import predict as predictor

router = APIRouter(prefix="/v1/jobs", tags=["models"])
REFUSED = {**error_responses(404), 409: {
    "model": error_responses(409)[409]["model"],
    "description": "The job has not succeeded, its model is being exported (Retry-After), "
                   "its export failed, or it has none (export it on request)."}}
JSON_BODY: dict[str, Any] = {"application/json": {
    "schema": PredictRequest.model_json_schema(),
    "examples": {"rows": {"value": {"rows": [[5.1, 3.5, 1.4, 0.2]]}},
                 "records": {"value": {"records": [{"sepal length (cm)": 5.1,
                                                    "sepal width (cm)": 3.5,
                                                    "petal length (cm)": 1.4,
                                                    "petal width (cm)": 0.2}]}}}}}
# a predict also reads a float32 .npy matrix (no JSON to parse or to build)
PREDICT_BODY = {"required": True, "content": {**JSON_BODY, NPY: {"schema": {
    "type": "string", "format": "binary", "description": "A .npy file (numpy.save) of float32 "
    "rows, shape [n, input_width], columns in model.json's feature order; no pickle."}}}}


@router.post("/{job_id}/predict", response_model=PredictResponse, responses=REFUSED,
             openapi_extra={"requestBody": PREDICT_BODY})
async def predict(job_id: str, request: Request, tenant: TenantDep) -> Any:
    """Predictions of the job's ONNX model for raw ``rows`` or named ``records``, or for a
    float32 ``.npy`` matrix of rows (``Content-Type: application/x-npy``): the label and
    every class's probability, or the value in the target's original units. Up to
    ``max_predict_rows`` rows and ``max_predict_bytes`` per request.

    The body is read here, then parsed and answered in one worker thread, never on the
    event loop; the SQL session and the settings are taken there too (as dependencies they
    would cost two more thread hops: a third of a single row's CPU)."""
    raw = await request.body()
    answer = await run_in_threadpool(_predict, raw, is_npy(request), job_id, tenant)
    return Response(answer.to_json(), media_type="application/json")


def is_npy(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == NPY


def _predict(raw: bytes, npy: bool, job_id: str, tenant: str) -> Predictions:
    body = parse_npy(raw) if npy else parse_body(raw)
    with get_sessionmaker()() as session:  # connects only when the model is not cached
        return predictor.predict(session, tenant_id=tenant, job_id=job_id, body=body,
                                 limits=get_settings().limits)


def parse_body(raw: bytes) -> PredictBody:
    """A JSON predict body, parsed (in the caller's worker thread); a bad one is a 422 by
    path."""
    try:
        return read_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def parse_npy(raw: bytes) -> PredictBody:
    try:
        return read_npy(raw)
    except BadBody as exc:
        raise Unprocessable(f"body: {exc}", fields=[{"loc": "body", "message": str(exc)}]
                            ) from None


@router.get("/{job_id}/model", response_class=Response, responses={
    200: {"content": {"application/zip": {}}, "description": "model.onnx, model.safetensors, "
          "model.json and README.md."}, **REFUSED})
def download_bundle(job_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """The model bundle as a zip: the ONNX graph (raw rows in; preprocessing and
    probabilities inside), the weights the summary's test metrics came from, model.json
    (feature names, classes, standardization, test metrics, versions, sha256 of each file)
    and a README with an onnxruntime example."""
    row = service.export_row(session, tenant, job_id)
    return Response(service.bundle(row), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{job_id}-model.zip"'})


@router.get("/{job_id}/model.onnx", response_class=Response, responses={
    200: {"content": {"application/octet-stream": {}}, "description": "The ONNX graph."},
    **REFUSED})
def download_onnx(job_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """The ONNX graph alone (its sha256 in the ``X-Model-SHA256`` header)."""
    graph, sha = service.onnx_file(session, tenant, job_id)
    return Response(graph, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{job_id}.onnx"', "X-Model-SHA256": sha})


@router.post("/{job_id}/model/export", response_model=ModelState, status_code=202,
             responses={200: {"model": ModelState,
                              "description": "Already exported or being exported."},
                        **REFUSED})
def export_model(job_id: str, session: SessionDep, tenant: TenantDep) -> Any:
    """Export a succeeded job that has no model (it succeeded before exports, or is an
    experiment child not exported by default), or retry a failed export. 202 when sent."""
    state, sent = service.request_export(session, tenant, job_id)
    return JSONResponse(state.model_dump(mode="json"), status_code=202 if sent else 200)
