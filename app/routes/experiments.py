"""/v1/experiments: multi-run studies whose children are ordinary jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app import experiment_spec as e
from app.config import get_settings
from app.db import get_sessionmaker
from app.deps import SessionDep, SettingsDep, TenantDep
from app.prediction_schemas import EnsemblePredictions, EnsemblePredictResponse
from app.routes import responses
from app.routes.jobs import TagQuery
from app.routes.models import PREDICT_BODY, is_npy, parse_body, parse_npy
from app.run_metadata import MetadataPatch
from app.schemas import ExperimentOut, ExperimentPage, JobItem, JobListPage, error_responses
from app.services import deletion, tagging
from app.services import ensemble_predict as ensembles
from app.services import experiments as service
from app.statuses import ExperimentStatus

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
NOT_FOUND = error_responses(404)


@router.post("", status_code=201, response_model=ExperimentOut,
             responses={200: {"model": ExperimentOut, "description": "Idempotent replay"},
                        **error_responses(400, 403, 409, 413, 429)})
def submit_experiment(exp: Annotated[e.Experiment, Body()], session: SessionDep,
                      settings: SettingsDep, tenant: TenantDep,
                      idempotency_key: Annotated[str | None, Header(
                          alias="Idempotency-Key", max_length=200)] = None) -> Any:
    """Plan, validate and queue every child of the first stage; they run on any worker."""
    created_exp, created = service.submit(session, tenant_id=tenant, exp=exp, settings=settings,
                                          idempotency_key=idempotency_key)
    counts = service.progress(session, [created_exp]).get(created_exp.id, {})
    return responses.created(ExperimentOut.of(created_exp, counts), created,
                             f"/v1/experiments/{created_exp.id}")


@router.get("", response_model=ExperimentPage)
def list_experiments(session: SessionDep, tenant: TenantDep,
                     status: ExperimentStatus | None = None,
                     kind: Annotated[str | None, Query(max_length=32)] = None,
                     tag: TagQuery = [],  # noqa: B006  (FastAPI copies a query default)
                     cursor: Annotated[str | None, Query(max_length=300)] = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50) -> ExperimentPage:
    rows, next_cursor = service.list_page(session, tenant, status=status, kind=kind, tags=tag,
                                          cursor=cursor, limit=limit)
    counts = service.progress(session, rows)
    return ExperimentPage(items=[ExperimentOut.of(x, counts.get(x.id, {})) for x in rows],
                          next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentOut, responses=NOT_FOUND)
def get_experiment(experiment_id: str, session: SessionDep, tenant: TenantDep) -> ExperimentOut:
    exp = service.get(session, tenant, experiment_id)
    return ExperimentOut.of(exp, service.progress(session, [exp]).get(exp.id, {}))


@router.get("/{experiment_id}/jobs", response_model=JobListPage, responses=NOT_FOUND)
def experiment_jobs(experiment_id: str, session: SessionDep, tenant: TenantDep,
                    cursor: Annotated[str | None, Query(max_length=300)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 200) -> JobListPage:
    """The children, with their roles in the design and their headline summaries, oldest
    first (the design's order); slim like every list (GET a child for its spec). The
    default page holds a whole first stage at the default max_experiment_children;
    ``next_cursor`` is set when more remain."""
    rows, next_cursor = service.jobs_of(session, tenant, experiment_id, cursor=cursor,
                                        limit=limit)
    return JobListPage(items=[JobItem.of(j) for j in rows], next_cursor=next_cursor)


@router.post("/{experiment_id}/cancel", response_model=ExperimentOut, responses=NOT_FOUND)
def cancel_experiment(experiment_id: str, session: SessionDep,
                      tenant: TenantDep) -> ExperimentOut:
    """Cancels every child: queued ones at once, running ones at the next batch boundary."""
    exp = service.cancel(session, tenant, experiment_id)
    return ExperimentOut.of(exp, service.progress(session, [exp]).get(exp.id, {}))


@router.patch("/{experiment_id}", response_model=ExperimentOut,
              responses=error_responses(400, 404))
def annotate_experiment(experiment_id: str, patch: MetadataPatch, session: SessionDep,
                        tenant: TenantDep) -> ExperimentOut:
    """Tags, note, keep of the experiment itself (its children keep their own)."""
    exp = tagging.patch_experiment(session, tenant, experiment_id, patch)
    return ExperimentOut.of(exp, service.progress(session, [exp]).get(exp.id, {}))


@router.delete("/{experiment_id}", status_code=204, responses=error_responses(404, 409))
def delete_experiment(experiment_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Removes the experiment with every child job (metrics, events, checkpoints, model
    exports). A running experiment, or one whose children are still stopping, gets 409."""
    deletion.delete_experiment(session, tenant, experiment_id)
    return Response(status_code=204)


@router.post("/{experiment_id}/predict", response_model=EnsemblePredictResponse,
             openapi_extra={"requestBody": PREDICT_BODY}, responses={**NOT_FOUND, 409: {
                 "model": error_responses(409)[409]["model"],
                 "description": "The experiment has not succeeded, its kind produces no "
                                "model (the message names it), a member's model is being "
                                "exported (model_pending, Retry-After) or its export failed."}})
async def predict(experiment_id: str, request: Request, tenant: TenantDep) -> Any:
    """Predictions of the model the experiment produced, for raw ``rows``, named
    ``records`` or a float32 ``.npy`` matrix (the body and its limits as for a job's
    predict, parsed and answered in one worker thread): bagging's soft vote (mean
    of the members' probabilities, or values), boosting's SAMME vote or gradient sum, a
    sweep's retrained best. ``members`` names the children combined and their weights."""
    raw = await request.body()
    answer = await run_in_threadpool(_predict, raw, is_npy(request), experiment_id, tenant)
    return Response(answer.to_json(), media_type="application/json")


def _predict(raw: bytes, npy: bool, experiment_id: str, tenant: str) -> EnsemblePredictions:
    body = parse_npy(raw) if npy else parse_body(raw)
    with get_sessionmaker()() as session:
        return ensembles.predict_experiment(session, tenant_id=tenant,
                                            experiment_id=experiment_id, body=body,
                                            limits=get_settings().limits)
