"""Live events over SSE: ``GET /v1/jobs/{id}/events`` and ``GET /v1/experiments/{id}/events``.

Thin: the stream is opened in a worker thread (tenant check, ``Last-Event-ID``) before the
response starts, so a missing id is a plain 404; the events come from the process's
``EventHub``; FastAPI's ``EventSourceResponse`` and ``format_sse_event`` do the SSE framing.
A reconnect after the end is answered 204, which tells an ``EventSource`` (and our client)
to stop reconnecting; that is why the routes return a response (the stream or the 204)
rather than being generators, which FastAPI would always answer 200."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.db import get_sessionmaker
from app.deps import TenantDep
from app.schemas import error_responses
from app.services import events
from app.services.event_hub import EventHub, follow

router = APIRouter()
RETRY_MS = 2000  # the reconnection delay a browser's EventSource uses after a drop
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies pass it on
# A plain string with "" for absent: as `str | None` the schema allowed null, which a header
# cannot carry (Schemathesis sent the text "null")
LastEventId = Annotated[str, Header(
    alias="Last-Event-ID", max_length=16_000, pattern=r"^[0-9]+(\.[0-9]+)*$",
    description="Resume after this event (the `id` of the last one received): exactly the "
    "events after it follow, none lost, none repeated.")]
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}},
          "description": "Server-sent events: `data` is an EventOut as JSON, `event` its "
                         "kind, `id` the cursor to resume from. A comment line every "
                         "TRAINYARD_EVENTS_HEARTBEAT_SECONDS; the server ends the stream "
                         "after the terminal status."},
    204: {"description": "Nothing can follow Last-Event-ID: the stream is complete (an "
                         "EventSource stops reconnecting)."},
    **error_responses(404)}


def hub_of(app: FastAPI) -> EventHub:
    hub: EventHub | None = getattr(app.state, "event_hub", None)
    if hub is None:
        hub = app.state.event_hub = EventHub(get_sessionmaker(), get_settings())
    return hub


def _open(opener: Callable[..., events.Stream], **kwargs: Any) -> events.Stream:
    with get_sessionmaker()() as session:
        return opener(session, **kwargs)


async def job_stream(request: Request, job_id: str, tenant: TenantDep,
                     last_event_id: LastEventId = "") -> events.Stream:
    hub_of(request.app).check_room()
    return await run_in_threadpool(_open, events.open_job_stream, tenant_id=tenant,
                                   job_id=job_id, last_event_id=last_event_id or None)


async def experiment_stream(request: Request, experiment_id: str, tenant: TenantDep,
                            last_event_id: LastEventId = "") -> events.Stream:
    hub_of(request.app).check_room()
    return await run_in_threadpool(_open, events.open_experiment_stream, tenant_id=tenant,
                                   experiment_id=experiment_id,
                                   last_event_id=last_event_id or None)


def _respond(request: Request, stream: events.Stream) -> Response:
    if stream.complete:
        return Response(status_code=204)
    return EventSourceResponse(_frames(hub_of(request.app), stream.cursor),
                               headers=NO_BUFFERING)


async def _frames(hub: EventHub, cursor: events.Cursor) -> AsyncIterator[bytes]:
    yield format_sse_event(comment="stream open", retry=RETRY_MS)
    async for batch in follow(hub, cursor, get_settings().events_heartbeat_seconds):
        if batch is None:
            yield format_sse_event(comment="heartbeat")
        else:  # one write for what is queued: a catch-up costs a few sends, not thousands
            yield b"".join(format_sse_event(data_str=d.data, event=d.name, id=d.id)
                           for d in batch)


@router.get("/v1/jobs/{job_id}/events", response_class=Response, tags=["jobs"],
            responses=STREAM_DOC)
async def job_events(request: Request,
                     stream: Annotated[events.Stream, Depends(job_stream)]) -> Response:
    """The job's status changes, progress steps and metric points as they are written, from
    its first event (or after ``Last-Event-ID``) to its terminal status."""
    return _respond(request, stream)


@router.get("/v1/experiments/{experiment_id}/events", response_class=Response,
            tags=["experiments"], responses=STREAM_DOC)
async def experiment_events(request: Request,
                            stream: Annotated[events.Stream, Depends(experiment_stream)]
                            ) -> Response:
    """The experiment's own events (status, stage, each child it starts) and every child's
    job events, until the experiment and all its children have ended. Ids are composite:
    the experiment's sequence, then each child's in the order the ``child`` events came."""
    return _respond(request, stream)
