"""/v1/jobs/{id}/model, /model.onnx, /model/export and /predict: use what a job trained."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Limits
from app.deps import SessionDep, SettingsDep, TenantDep
from app.prediction_schemas import ModelState, PredictRequest, PredictResponse
from app.schemas import error_responses
from app.services import models as service
from app.services import predict as predictor

router = APIRouter(prefix="/v1/jobs", tags=["models"])
REFUSED = {**error_responses(404), 409: {
    "model": error_responses(409)[409]["model"],
    "description": "The job has not succeeded, its model is being exported (Retry-After), "
                   "its export failed, or it has none (export it on request)."}}
PREDICT_BODY = {"required": True, "content": {"application/json": {
    "schema": PredictRequest.model_json_schema(),
    "examples": {"rows": {"value": {"rows": [[5.1, 3.5, 1.4, 0.2]]}},
                 "records": {"value": {"records": [{"sepal length (cm)": 5.1,
                                                    "sepal width (cm)": 3.5,
                                                    "petal length (cm)": 1.4,
                                                    "petal width (cm)": 0.2}]}}}}}}


@router.post("/{job_id}/predict", response_model=PredictResponse, responses=REFUSED,
             openapi_extra={"requestBody": PREDICT_BODY})
async def predict(job_id: str, request: Request, session: SessionDep, settings: SettingsDep,
                  tenant: TenantDep) -> Any:
    """Predictions of the job's ONNX model for raw ``rows`` or named ``records``: the label
    and every class's probability, or the value in the target's original units. Up to
    ``max_predict_rows`` rows and ``max_predict_bytes`` per request.

    The body is read here and parsed in a worker thread, never on the event loop."""
    raw = await request.body()
    answer = await run_in_threadpool(_predict, raw, job_id, session, tenant, settings.limits)
    return Response(answer.to_json(), media_type="application/json")


def _predict(raw: bytes, job_id: str, session: Session, tenant: str,
             limits: Limits) -> PredictResponse:
    return predictor.predict(session, tenant_id=tenant, job_id=job_id, body=parse_body(raw),
                             limits=limits)


def parse_body(raw: bytes) -> PredictRequest:
    """A predict body, parsed (in the caller's worker thread); a bad one is a 422 by path."""
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


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
