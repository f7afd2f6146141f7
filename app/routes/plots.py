"""Plots as images: ``GET /v1/jobs/{id}/plots/{name}.svg`` (or ``.png``) and the same under
``/v1/experiments/{id}``; the plain GET lists the names. Plain ``def`` routes: drawing runs
in the threadpool, never on the event loop."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel

from app.deps import SessionDep, TenantDep
from app.plots.render import MEDIA_TYPES, Format
from app.schemas import ErrorBody, error_responses
from app.services import plots as service

router = APIRouter()
PlotName = Annotated[str, Path(max_length=40, description="A name from the plot list.")]
IMAGE = {200: {"content": {"image/svg+xml": {}, "image/png": {}},
               "description": "The plot, drawn with matplotlib."},
         **error_responses(404),
         409: {"model": ErrorBody,
               "description": "Nothing to draw yet (no epoch logged, no result yet)."}}


class PlotOut(BaseModel):
    name: str
    svg: str
    png: str


class PlotList(BaseModel):
    plots: list[PlotOut]


def _image(body: bytes, fmt: Format) -> Response:
    # no-cache: a running job's curve changes between two requests for it
    return Response(body, media_type=MEDIA_TYPES[fmt], headers={"Cache-Control": "no-cache"})


def _listed(links: list[service.PlotLink]) -> PlotList:
    return PlotList(plots=[PlotOut(name=p.name, svg=p.svg, png=p.png) for p in links])


@router.get("/v1/jobs/{job_id}/plots", response_model=PlotList, tags=["jobs"],
            responses=error_responses(404))
def job_plots(job_id: str, session: SessionDep, tenant: TenantDep) -> PlotList:
    """The job's plot names (the confusion matrix for classification only)."""
    return _listed(service.job_plots(session, tenant, job_id))


@router.get("/v1/jobs/{job_id}/plots/{name}.{fmt}", response_class=Response, tags=["jobs"],
            responses=IMAGE)
def job_plot(job_id: str, name: PlotName, fmt: Literal["svg", "png"], session: SessionDep,
             tenant: TenantDep) -> Response:
    """Learning curves (``loss``, ``metric``: accuracy or RMSE, ``lr``, ``grad_norm``),
    training against validation with the best epoch marked, or ``confusion_matrix``."""
    return _image(service.job_plot(session, tenant, job_id, name, fmt), fmt)


@router.get("/v1/experiments/{experiment_id}/plots", response_model=PlotList,
            tags=["experiments"], responses=error_responses(404))
def experiment_plots(experiment_id: str, session: SessionDep, tenant: TenantDep) -> PlotList:
    """The plot names of the experiment's kind."""
    return _listed(service.experiment_plots(session, tenant, experiment_id))


@router.get("/v1/experiments/{experiment_id}/plots/{name}.{fmt}", response_class=Response,
            tags=["experiments"], responses=IMAGE)
def experiment_plot(experiment_id: str, name: PlotName, fmt: Literal["svg", "png"],
                    session: SessionDep, tenant: TenantDep) -> Response:
    """Per kind: cross_validation ``folds``; sweep ``trials`` and ``leaderboard``; bagging
    ``members``; boosting ``rounds``; bias_variance ``decomposition``; batch_size
    ``sharpness``; optimizer_comparison ``curves``; depth ``errors`` and ``gradients``."""
    return _image(service.experiment_plot(session, tenant, experiment_id, name, fmt), fmt)
