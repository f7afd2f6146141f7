"""One poller per API process feeds every open event stream.

Each stream is a ``Subscription``: a cursor and a bounded in-memory queue. While any stream
is open, one task reads, in one short session per round, the heads (last sequence, ended)
of every subject some stream follows and the events each stream is missing, then moves
them into the queues. An idle stream therefore holds no database connection, and a
thousand streams on one job cost the same two queries as one. A round runs every
``events_poll_seconds``, at once when a stream opens or a round left more to read, and
on Postgres as soon as a writer's COMMIT delivers the triggers' NOTIFY (a listening thread
with one connection per process). A stream whose client reads slowly stops receiving
when its queue is full and is read again from its cursor later: memory per stream is
bounded, and a slow client never holds back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import anyio.to_thread
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import event_store as store
from app.config import Settings
from app.event_store import Head, SeqRange, Subject
from app.services.events import Cursor, Delivered, Rows, Unavailable, render

log = logging.getLogger("trainyard.events")

QUEUE_SIZE = 1000  # events held per stream for its client; beyond, it is read again later
BATCH = 500  # events read per subject and cursor position in one round
NOTIFY_CHANNEL = "trainyard_events"  # migration 0006's triggers pg_notify it


class Ended:
    """Put in a queue after the last event: the stream is complete."""


END = Ended()


class Subscription:
    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.queue: asyncio.Queue[Delivered | Ended] = asyncio.Queue(QUEUE_SIZE)
        self.complete = False  # every event delivered (the subject ended)
        self.end_queued = False

    async def next(self, timeout: float) -> list[Delivered] | Ended | None:
        """The events queued now (at least one, waiting for it), END once they are all
        out, or None after ``timeout`` seconds with nothing new."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        batch: list[Delivered] = []
        item = first
        while not isinstance(item, Ended):
            batch.append(item)
            if self.queue.empty():
                return batch
            item = self.queue.get_nowait()
        if batch:  # END stays for the next call, after this batch is sent
            self.queue.put_nowait(item)
            return batch
        return item

    def feed(self, rows: Rows, heads: dict[Subject, Head]) -> bool:
        """Queue what a round read for this stream. True when it took events and is still
        behind (more to read at once: a later batch, or a child it just learned of)."""
        taken, fed = self.cursor.take(rows), 0
        while not self.queue.full() and (delivered := next(taken, None)) is not None:
            self.queue.put_nowait(delivered)
            fed += 1
        self.complete = self.complete or self.cursor.finished(heads)
        if self.complete and not self.end_queued and not self.queue.full():
            self.queue.put_nowait(END)
            self.end_queued = True
        return fed > 0 and not self.complete and not self.queue.full() and self._behind(heads)

    def _behind(self, heads: dict[Subject, Head]) -> bool:
        return any((head := heads.get(subject)) is None or head.seq > seq
                   for subject, seq in self.cursor.positions().items())


@dataclass(frozen=True)
class Round:
    heads: dict[Subject, Head]
    rows: Rows


def read_round(sessions: sessionmaker[Session], wanted: dict[Subject, set[int]]) -> Round:
    """Heads of the wanted subjects and up to BATCH events past each wanted position."""
    with sessions() as session:
        heads = store.heads(session, list(wanted))
        ranges = [SeqRange(subject, after, min(head.seq, after + BATCH))
                  for subject, positions in wanted.items()
                  if (head := heads.get(subject)) is not None
                  for after in _distinct_starts(positions, head.seq)]
        rows: Rows = {}
        for row in store.events(session, ranges):  # rendered here, off the event loop
            rows.setdefault(row.subject, []).append(render(row))
    return Round(heads, rows)


def _distinct_starts(positions: set[int], head: int) -> list[int]:
    """Positions behind the head whose batches do not overlap an earlier one's."""
    starts: list[int] = []
    for position in sorted(p for p in positions if p < head):
        if not starts or position >= starts[-1] + BATCH:
            starts.append(position)
    return starts


class EventHub:
    """The per-process poller; see the module's docstring."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings
        self.subscriptions: set[Subscription] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.listener: Listener | None = None

    def check_room(self) -> None:
        if len(self.subscriptions) >= self.settings.events_max_streams:
            raise Unavailable(f"this API process serves {self.settings.events_max_streams} "
                              "event streams already (events_max_streams); retry shortly",
                              headers={"Retry-After": "5"})

    def subscribe(self, cursor: Cursor) -> Subscription:
        subscription = Subscription(cursor)
        self.subscriptions.add(subscription)
        self.wake.set()
        if self.task is None or self.task.done():
            # a fresh context: the shared poller's log records must not carry the request id
            # and tenant of the request that happened to start it (app/logs.py)
            self.task = asyncio.get_running_loop().create_task(self._run(),
                                                                context=contextvars.Context())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    async def _run(self) -> None:
        self._start_listener()
        try:
            while self.subscriptions:
                self.wake.clear()
                if not await self._round():
                    await self._pause(self.settings.events_poll_seconds)
        finally:
            self._stop_listener()

    async def _round(self) -> bool:
        """One read for every stream that has room; True if one can take more at once."""
        waiting = [s for s in self.subscriptions if not s.end_queued]
        reading = [s for s in waiting if not s.complete and not s.queue.full()]
        try:
            result = (await anyio.to_thread.run_sync(read_round, self.sessions,
                                                     _wanted(reading))
                      if reading else Round({}, {}))
        except SQLAlchemyError as exc:  # SQL down: streams stay open, heartbeats go on
            log.warning("event poll failed: %s", exc)
            return False
        except Exception:  # a bug: logged, and the streams keep their heartbeats
            log.exception("event poll failed")
            return False
        return any([s.feed(result.rows, result.heads) for s in waiting])

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    def _start_listener(self) -> None:
        url = make_url(self.settings.resolved_database_url)
        if url.get_backend_name() == "postgresql":
            self.listener = Listener(url.set(drivername="postgresql")
                                     .render_as_string(hide_password=False),
                                     asyncio.get_running_loop(), self.wake)
            self.listener.start()

    def _stop_listener(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None


def _wanted(subscriptions: Iterable[Subscription]) -> dict[Subject, set[int]]:
    wanted: dict[Subject, set[int]] = {}
    for subscription in subscriptions:
        for subject, seq in subscription.cursor.positions().items():
            wanted.setdefault(subject, set()).add(seq)
    return wanted


class Listener:
    """Postgres only: a thread that LISTENs and wakes the poller when events commit."""

    def __init__(self, dsn: str, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        self.dsn, self.loop, self.wake = dsn, loop, wake
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._listen, name="event-listener", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _listen(self) -> None:
        import psycopg  # here: an embedded (SQLite) API never loads libpq

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    store.listen(conn, NOTIFY_CHANNEL)
                    while not self.stopping.is_set():
                        if any(True for _ in conn.notifies(timeout=1.0, stop_after=1)):
                            self._wake()
            except psycopg.Error as exc:  # polling still runs; listen again shortly
                log.warning("LISTEN %s failed: %s", NOTIFY_CHANNEL, exc)
                self.stopping.wait(5.0)

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the loop has closed: nobody is left to wake
            self.stopping.set()


async def follow(hub: EventHub, cursor: Cursor,
                 heartbeat: float) -> AsyncIterator[list[Delivered] | None]:
    """A stream's events in order, in the batches they were queued in, until its last;
    None after each ``heartbeat`` seconds without one (the caller sends a comment, so
    proxies keep the connection)."""
    subscription = hub.subscribe(cursor)
    try:
        while not isinstance(item := await subscription.next(heartbeat), Ended):
            yield item
    finally:
        hub.unsubscribe(subscription)
