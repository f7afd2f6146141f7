"""Event streams: what an event says (typed), where a stream stands (its cursor, the SSE id),
and opening a stream for a tenant (404 for another tenant's id, 422 for an id the API never
issued).

A job stream's id is the job's own event sequence. An experiment stream spans the
experiment's own events and its children's, so its id is composite: the experiment's
sequence, then each announced child's, in the order the experiment announced them
(``child`` events): ``"7.12.0.3"``. Every sequence is assigned in its writer's transaction
on the subject's row (migration 0006), so a subject's events commit in sequence order and
resuming from an id delivers exactly the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, cast

from pydantic import BaseModel
from sqlalchemy.orm import Session

from app import event_store as store
from app import repository as repo
from app.errors import ApiError, Unprocessable
from app.event_store import EventRow, Head, Subject
from app.services.rows import found
from app.statuses import ExperimentStatus, FailureReason, JobStatus


class Unavailable(ApiError):
    status, code = 503, "unavailable"


# ------------------------------------------------------------------ what an event says


class JobStatusData(BaseModel):
    status: JobStatus
    attempt: int
    cancel_requested: bool
    reason: FailureReason | None
    message: str | None


class ProgressData(BaseModel):
    epoch: int
    total_epochs: int


class MetricData(BaseModel):
    epoch: int
    split: str
    name: str
    value: float | None  # null when not finite


class ExperimentStatusData(BaseModel):
    status: ExperimentStatus
    stage: int
    message: str | None


class StageData(BaseModel):
    stage: int


class ChildData(BaseModel):
    job_id: str


EventData = (JobStatusData | ProgressData | MetricData | ExperimentStatusData | StageData
             | ChildData)
EventName = Literal["status", "progress", "metric", "experiment_status", "experiment_progress",
                    "child"]
# (subject kind, stored kind) -> the SSE event name and its payload
PAYLOADS: dict[tuple[str, str], tuple[EventName, type[BaseModel]]] = {
    ("job", "status"): ("status", JobStatusData),
    ("job", "progress"): ("progress", ProgressData),
    ("job", "metric"): ("metric", MetricData),
    ("experiment", "status"): ("experiment_status", ExperimentStatusData),
    ("experiment", "progress"): ("experiment_progress", StageData),
    ("experiment", "child"): ("child", ChildData),
}


class EventOut(BaseModel):
    """The ``data`` of one SSE event; its ``event`` is ``kind`` and its ``id`` the cursor."""

    kind: EventName
    seq: int
    job_id: str | None
    experiment_id: str | None
    at: datetime
    data: EventData


@dataclass(frozen=True)
class Ready:
    """An event rendered once per poll round, for every stream that follows its subject."""

    row: EventRow
    name: EventName
    data: str  # the EventOut as JSON


@dataclass(frozen=True)
class Delivered:
    id: str  # the stream's cursor after this event
    name: EventName
    data: str


def render(row: EventRow) -> Ready:
    """The row as the typed EventOut (checked against its kind's payload), in JSON."""
    name, model = PAYLOADS[(row.subject.kind, row.kind)]
    job_id = row.subject.id if row.subject.kind == "job" else None
    data = cast(EventData, model.model_validate(row.data))
    event = EventOut(kind=name, seq=row.seq, job_id=job_id, experiment_id=row.experiment_id,
                     at=row.at, data=data)
    return Ready(row, name, event.model_dump_json())


Rows = dict[Subject, list[Ready]]


def _next_rows(rows: Rows, subject: Subject, after: int) -> Iterator[Ready]:
    """The subject's events that follow ``after`` without a gap (a gap is never skipped)."""
    for ready in rows.get(subject, []):
        if ready.row.seq <= after:
            continue
        if ready.row.seq != after + 1:
            return
        after = ready.row.seq
        yield ready


# ------------------------------------------------------------------ where a stream stands


@dataclass
class JobCursor:
    job_id: str
    seq: int

    def positions(self) -> dict[Subject, int]:
        return {Subject("job", self.job_id): self.seq}

    def encode(self) -> str:
        return str(self.seq)

    def take(self, rows: Rows) -> Iterator[Delivered]:
        """The next events, the cursor moving past each as it is taken."""
        for ready in _next_rows(rows, Subject("job", self.job_id), self.seq):
            self.seq = ready.row.seq
            yield Delivered(self.encode(), ready.name, ready.data)

    def finished(self, heads: dict[Subject, Head]) -> bool:
        head = heads.get(Subject("job", self.job_id))
        return head is None or (head.ended and self.seq >= head.seq)


@dataclass
class ExperimentCursor:
    experiment_id: str
    seq: int
    children: list[str] = field(default_factory=list)
    child_seqs: list[int] = field(default_factory=list)

    def positions(self) -> dict[Subject, int]:
        own = {Subject("experiment", self.experiment_id): self.seq}
        return own | {Subject("job", c): s for c, s in zip(self.children, self.child_seqs,
                                                              strict=True)}

    def encode(self) -> str:
        return ".".join(str(n) for n in (self.seq, *self.child_seqs))

    def take(self, rows: Rows) -> Iterator[Delivered]:
        """The experiment's own events first (they announce children), then each child's."""
        for ready in _next_rows(rows, Subject("experiment", self.experiment_id), self.seq):
            self.seq = ready.row.seq
            if ready.row.kind == "child":
                self.children.append(str(ready.row.data["job_id"]))
                self.child_seqs.append(0)
            yield Delivered(self.encode(), ready.name, ready.data)
        for i, child in enumerate(self.children):
            for ready in _next_rows(rows, Subject("job", child), self.child_seqs[i]):
                self.child_seqs[i] = ready.row.seq
                yield Delivered(self.encode(), ready.name, ready.data)

    def finished(self, heads: dict[Subject, Head]) -> bool:
        """The experiment ended and so did every child, all delivered."""
        own = heads.get(Subject("experiment", self.experiment_id))
        if own is None:
            return True
        return own.ended and self.seq >= own.seq and all(
            (head := heads.get(Subject("job", c))) is not None and head.ended and s >= head.seq
            for c, s in zip(self.children, self.child_seqs, strict=True))


Cursor = JobCursor | ExperimentCursor


@dataclass(frozen=True)
class Stream:
    """A stream to serve: where it starts, and whether nothing can follow (the subject
    ended and everything up to its end was delivered before this reconnect)."""

    cursor: Cursor
    complete: bool


# ------------------------------------------------------------------ opening a stream

EVENT_ID = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})*")


def _refused(message: str) -> Unprocessable:
    return Unprocessable(f"Last-Event-ID {message}",
                         fields=[{"loc": "Last-Event-ID", "message": message}])


def _numbers(last_event_id: str | None) -> list[int]:
    if not last_event_id:
        return [0]
    if EVENT_ID.fullmatch(last_event_id) is None:
        raise _refused("is not an event id this API issued")
    return [int(n) for n in last_event_id.split(".")]


def open_job_stream(session: Session, *, tenant_id: str, job_id: str,
                    last_event_id: str | None) -> Stream:
    """A job's stream from its start, or just after ``Last-Event-ID``."""
    job = found(repo.get_job(session, tenant_id, job_id), "job", job_id)
    numbers = _numbers(last_event_id)
    if len(numbers) != 1:
        raise _refused("is an experiment stream's id, not a job's")
    if numbers[0] > job.event_seq:
        raise _refused(f"is past the job's last event ({job.event_seq})")
    cursor = JobCursor(job.id, numbers[0])
    return Stream(cursor, cursor.finished(store.heads(session, [Subject("job", job.id)])))


def open_experiment_stream(session: Session, *, tenant_id: str, experiment_id: str,
                           last_event_id: str | None) -> Stream:
    """An experiment's stream (its children's events included), from its start or just
    after ``Last-Event-ID``."""
    exp = found(repo.get_experiment(session, tenant_id, experiment_id), "experiment",
                experiment_id)
    own, *child_seqs = _numbers(last_event_id)
    if own > exp.event_seq:
        raise _refused(f"is past the experiment's last event ({exp.event_seq})")
    children = store.announced_children(session, exp.id, own)
    if len(child_seqs) > len(children):
        raise _refused(f"names {len(child_seqs)} children; {len(children)} were announced")
    child_seqs += [0] * (len(children) - len(child_seqs))
    heads = store.heads(session, [Subject("experiment", exp.id),
                                  *(Subject("job", c) for c in children)])
    for child, seq in zip(children, child_seqs, strict=True):
        head = heads.get(Subject("job", child))
        if head is not None and seq > head.seq:
            raise _refused(f"is past child {child}'s last event ({head.seq})")
    cursor = ExperimentCursor(exp.id, own, children, child_seqs)
    return Stream(cursor, cursor.finished(heads))
