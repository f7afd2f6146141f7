"""Live events over SSE: ``GET /v1/jobs/{id}/events`` and ``GET /v1/experiments/{id}/events``.

Thin: the cursor is opened in a worker thread (tenant check, ``Last-Event-ID``) before the
response starts, so a missing id is a plain 404; the events come from the process's
``EventHub``; FastAPI's ``EventSourceResponse`` writes the SSE framing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.db import get_sessionmaker
from app.deps import TenantDep
from app.schemas import error_responses
from app.services import events
from app.services.event_hub import EventHub, follow

router = APIRouter()
RETRY_MS = 2000  # the reconnection delay a browser's EventSource uses after a drop
LastEventId = Annotated[str | None, Header(
    alias="Last-Event-ID", max_length=16_000,
    description="Resume after this event (the `id` of the last one received): exactly the "
    "events after it follow, none lost, none repeated.")]
STREAM_DOC = {200: {"content": {"text/event-stream": {}},
                    "description": "Server-sent events; `data` is an EventOut as JSON, "
                                   "`event` its kind, `id` the cursor to resume from. A "
                                   "comment line every TRAINYARD_EVENTS_HEARTBEAT_SECONDS; "
                                   "the stream ends after the terminal status."},
              **error_responses(404)}


def hub_of(app: FastAPI) -> EventHub:
    hub: EventHub | None = getattr(app.state, "event_hub", None)
    if hub is None:
        hub = app.state.event_hub = EventHub(get_sessionmaker(), get_settings())
    return hub


def _open(opener: Any, **kwargs: Any) -> events.Cursor:
    with get_sessionmaker()() as session:
        cursor: events.Cursor = opener(session, **kwargs)
        return cursor


async def job_cursor(request: Request, job_id: str, tenant: TenantDep,
                     last_event_id: LastEventId = None) -> events.Cursor:
    hub_of(request.app).check_room()
    return await run_in_threadpool(_open, events.open_job_stream, tenant_id=tenant,
                                   job_id=job_id, last_event_id=last_event_id)


async def experiment_cursor(request: Request, experiment_id: str, tenant: TenantDep,
                            last_event_id: LastEventId = None) -> events.Cursor:
    hub_of(request.app).check_room()
    return await run_in_threadpool(_open, events.open_experiment_stream, tenant_id=tenant,
                                   experiment_id=experiment_id, last_event_id=last_event_id)


async def _sse(request: Request, cursor: events.Cursor) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(comment="stream open", retry=RETRY_MS)
    heartbeat = get_settings().events_heartbeat_seconds
    async for delivered in follow(hub_of(request.app), cursor, heartbeat):
        if delivered is None:
            yield ServerSentEvent(comment="heartbeat")
        else:
            yield ServerSentEvent(id=delivered.id, event=delivered.event.kind,
                                  data=delivered.event)


@router.get("/v1/jobs/{job_id}/events", response_class=EventSourceResponse, tags=["jobs"],
            responses=STREAM_DOC)
async def job_events(request: Request,
                     cursor: Annotated[events.Cursor, Depends(job_cursor)]
                     ) -> AsyncIterator[ServerSentEvent]:
    """The job's status changes, progress steps and metric points as they are written, from
    its first event (or after ``Last-Event-ID``) to its terminal status."""
    async for item in _sse(request, cursor):
        yield item


@router.get("/v1/experiments/{experiment_id}/events", response_class=EventSourceResponse,
            tags=["experiments"], responses=STREAM_DOC)
async def experiment_events(request: Request,
                            cursor: Annotated[events.Cursor, Depends(experiment_cursor)]
                            ) -> AsyncIterator[ServerSentEvent]:
    """The experiment's own events (status, stage, each child it starts) and every child's
    job events, until the experiment and all its children have ended. Ids are composite:
    the experiment's sequence, then each child's in the order the ``child`` events came."""
    async for item in _sse(request, cursor):
        yield item
