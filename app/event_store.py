"""The SQL of the event streams (kept apart from ``repository.py``, which is past 500 lines).

Events are written by the triggers of migration 0006; this module only reads them. A
subject is a job or an experiment; its ``event_seq`` is the sequence of its last event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.models import Experiment, ExperimentEvent, Job, JobEvent
from app.statuses import TERMINAL, ExperimentStatus

SubjectKind = Literal["job", "experiment"]
CHUNK = 200  # subjects per statement: bounds the size of an IN list or an OR of ranges


@dataclass(frozen=True)
class Subject:
    kind: SubjectKind
    id: str


@dataclass(frozen=True)
class Head:
    """A subject's last event and whether it has ended (no event can follow its last)."""

    seq: int
    ended: bool


@dataclass(frozen=True)
class EventRow:
    subject: Subject
    seq: int
    kind: str
    data: dict[str, Any]
    at: datetime
    experiment_id: str | None  # the experiment's, or the job's when it is a child


@dataclass(frozen=True)
class SeqRange:
    """Events of one subject with after < seq <= upto."""

    subject: Subject
    after: int
    upto: int


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def heads(session: Session, subjects: Sequence[Subject]) -> dict[Subject, Head]:
    """Each subject's last sequence and whether it ended; missing subjects are left out."""
    job_ids = [s.id for s in subjects if s.kind == "job"]
    experiment_ids = [s.id for s in subjects if s.kind == "experiment"]
    return {**_job_heads(session, job_ids), **_experiment_heads(session, experiment_ids)}


def _job_heads(session: Session, job_ids: Sequence[str]) -> dict[Subject, Head]:
    out: dict[Subject, Head] = {}
    for chunk in _chunks(job_ids):
        stmt = select(Job.id, Job.event_seq, Job.status).where(Job.id.in_(chunk))
        for job_id, seq, status in session.execute(stmt):
            out[Subject("job", job_id)] = Head(seq, status in TERMINAL)
    return out


def _experiment_heads(session: Session, experiment_ids: Sequence[str]) -> dict[Subject, Head]:
    out: dict[Subject, Head] = {}
    for chunk in _chunks(experiment_ids):
        stmt = (select(Experiment.id, Experiment.event_seq, Experiment.status)
                .where(Experiment.id.in_(chunk)))
        for exp_id, seq, status in session.execute(stmt):
            out[Subject("experiment", exp_id)] = Head(seq, status != ExperimentStatus.RUNNING)
    return out


def events(session: Session, ranges: Sequence[SeqRange]) -> list[EventRow]:
    """The events in the ranges, in (subject, seq) order."""
    out: list[EventRow] = []
    kinds: tuple[SubjectKind, ...] = ("job", "experiment")
    for kind in kinds:
        mine = [r for r in ranges if r.subject.kind == kind]
        for start in range(0, len(mine), CHUNK):
            out.extend(_read(session, kind, mine[start:start + CHUNK]))
    return out


def _read(session: Session, kind: SubjectKind, ranges: Sequence[SeqRange]) -> list[EventRow]:
    if kind == "job":
        table, owner = JobEvent.__table__, JobEvent.__table__.c.job_id
        experiment = (select(Job.experiment_id).where(Job.id == owner)
                      .scalar_subquery().label("experiment_id"))
    else:
        table, owner = ExperimentEvent.__table__, ExperimentEvent.__table__.c.experiment_id
        experiment = owner.label("experiment_id")
    wanted = or_(*(and_(owner == r.subject.id, table.c.seq > r.after, table.c.seq <= r.upto)
                   for r in ranges))
    stmt = (select(owner, table.c.seq, table.c.kind, table.c.data, table.c.created_at,
                   experiment).where(wanted).order_by(owner, table.c.seq))
    return [EventRow(Subject(kind, subject_id), seq, event_kind, data, at, experiment_id)
            for subject_id, seq, event_kind, data, at, experiment_id in session.execute(stmt)]


def announced_children(session: Session, experiment_id: str, upto: int) -> list[str]:
    """The children an experiment announced in its events up to ``upto``, in order."""
    stmt = (select(ExperimentEvent.data)
            .where(ExperimentEvent.experiment_id == experiment_id,
                   ExperimentEvent.kind == "child", ExperimentEvent.seq <= upto)
            .order_by(ExperimentEvent.seq))
    return [str(data["job_id"]) for data in session.scalars(stmt)]


def listen(conn: Any, channel: str) -> None:
    """Postgres: subscribe a psycopg connection (autocommit) to the triggers' NOTIFYs."""
    conn.execute(f"LISTEN {channel}")
