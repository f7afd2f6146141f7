"""/v1/datasets: upload (CSV or NPZ), list, inspect."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile

from app.deps import SessionDep, SettingsDep, TenantDep
from app.routes import responses
from app.schemas import DatasetOut, DatasetPage, DatasetSummary, error_responses
from app.services import datasets as service
from app.services import deletion

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201, response_model=DatasetOut,
             responses={200: {"model": DatasetOut, "description": "Idempotent replay"},
                        **error_responses(400, 403, 409, 413)})
def upload_dataset(
    session: SessionDep, settings: SettingsDep, tenant: TenantDep,
    file: Annotated[UploadFile, File(description="CSV with a header row, or NPZ with X and y.")],
    target: Annotated[str | None, Form(max_length=200, description="CSV target column.")] = None,
    task: Annotated[Literal["auto", "classification", "regression", "unlabeled"], Form(
        description="unlabeled: every column (CSV) or X alone (NPZ) is a feature and there "
        "is no target; only task reconstruction jobs can use it.")] = "auto",
    format: Annotated[Literal["csv", "npz"] | None, Form()] = None,
    input_shape: Annotated[str | None, Form(max_length=100, examples=["[1, 8, 8]"])] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Any:
    """Validated completely before anything is stored; bad data gets 422 naming the problem.

    A plain ``def``: parsing is CPU-bound and runs in a worker thread, so the event loop
    (``/healthz``, other requests) keeps answering while a large upload parses."""
    stored, created = service.upload(
        session, tenant_id=tenant, idempotency_key=idempotency_key, limits=settings.limits,
        content=file.file.read(settings.limits.max_dataset_bytes + 1), filename=file.filename,
        fmt=format, target=target, task=task, input_shape=input_shape, name=name)
    return responses.created(DatasetOut.of(stored), created, f"/v1/datasets/{stored.id}")


@router.get("", response_model=DatasetPage)
def list_datasets(session: SessionDep, tenant: TenantDep,
                  cursor: Annotated[str | None, Query(max_length=300)] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> DatasetPage:
    """Newest first, with cursor pagination; items leave out ``info`` (GET one for it)."""
    rows, next_cursor = service.list_page(session, tenant, cursor=cursor, limit=limit)
    return DatasetPage(items=[DatasetSummary.of(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetOut:
    return DatasetOut.of(service.get(session, tenant, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses=error_responses(404, 409))
def delete_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Removes the dataset and its blob. A queued or running job or a running experiment
    that reads it gets 409 naming them; finished jobs keep their results and exports."""
    deletion.delete_dataset(session, tenant, dataset_id)
    return Response(status_code=204)
