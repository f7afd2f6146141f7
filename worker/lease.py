"""A claimed job's lease, kept alive by a background thread for the whole claim.

The training thread spends whole phases without a batch boundary (preparing data, the
epoch-end and final evaluations, predictions, sharpness), so the lease cannot be extended
from ``should_stop`` alone. The thread here extends it every ``heartbeat_seconds`` with
the fenced ``repo.heartbeat`` in its own session, and records what it learns in events
that ``should_stop`` reads without SQL:

- ``cancel``: cancellation was requested;
- ``lost``: another attempt holds the job (or this thread handed it back); the training
  copy must write nothing more, and ``write`` refuses to;
- ``outage``: SQL stayed unreachable past ``db_retry_seconds``.

On shutdown (``PREEMPT``) the training thread normally hands the job back itself at the
next batch boundary. When it is in a phase without one and has not answered within two
heartbeats, this thread hands the job back (fenced ``release``, attempt returned), so a
stop during evaluation does not wait for it or burn an attempt. The write lock makes that
release and the training thread's writes exclusive: once released, no write of the old
copy can land on the next attempt's row (``release`` gives the attempt number back).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from worker.retry import DatabaseUnavailable, is_transient, note_db_failure, with_retry

log = logging.getLogger("trainyard.worker")
T = TypeVar("T")

# Set when this worker is shutting down (SIGTERM): running jobs checkpoint and hand back.
PREEMPT = threading.Event()


class LeaseKeeper:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, *, job_id: str,
                 attempt: int, on_release: Callable[[], None] = lambda: None) -> None:
        self.sessions, self.settings = sessions, settings
        self.job_id, self.attempt, self.on_release = job_id, attempt, on_release
        self.cancel, self.lost, self.outage = threading.Event(), threading.Event(), \
            threading.Event()
        self.preempt_answered = threading.Event()  # the training thread is handing back
        self.released = False  # this thread handed the job back
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def write(self, work: Callable[[Session], T]) -> T:
        """A fenced write of the training thread; LeaseLost once this copy lost the job."""
        with self._write_lock:
            if self.lost.is_set():
                raise repo.LeaseLost(self.job_id)
            return with_retry(self.sessions, work,
                              give_up_after=self.settings.db_retry_seconds)

    def check(self) -> str | None:
        """For ``should_stop``: raises when this copy must stop writing; else a stop reason."""
        if self.lost.is_set():
            raise repo.LeaseLost(self.job_id)
        if self.outage.is_set():
            raise DatabaseUnavailable("the database was unreachable for "
                                      f"{self.settings.db_retry_seconds:g}s")
        return "cancelled" if self.cancel.is_set() else None

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        period = self.settings.heartbeat_seconds
        failing_since: float | None = None
        preempted_at: float | None = None
        while not self._stop.wait(period):
            now = time.monotonic()
            if PREEMPT.is_set() and not self.preempt_answered.is_set():
                preempted_at = preempted_at or now
                if now - preempted_at >= 2 * period and self._release():
                    return
            try:
                self._beat()
                failing_since = None
            except repo.LeaseLost:  # (also right after this copy wrote the job's end)
                log.info("job %s: lease no longer held (attempt %d)", self.job_id, self.attempt)
                self.lost.set()
                return
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("job %s: heartbeat failed", self.job_id)
                note_db_failure()
                failing_since = failing_since or now
                if now - failing_since >= self.settings.db_retry_seconds:
                    self.outage.set()

    def _beat(self) -> None:
        with self.sessions() as session:
            flag = repo.heartbeat(session, self.job_id, self.attempt, utcnow(),
                                  self.settings.lease_seconds)
            session.commit()
        if flag:
            self.cancel.set()

    def _release(self) -> bool:
        """Hand the job back for a training thread stuck in a phase without a boundary.

        False to try again at the next beat, also while the training thread's own write is
        retrying against an unreachable database (it holds the lock through its retries)."""
        if not self._write_lock.acquire(timeout=self.settings.heartbeat_seconds):
            return False
        try:
            try:
                with_retry(self.sessions, lambda s: repo.release(
                    s, job_id=self.job_id, attempt=self.attempt, now=utcnow()),
                    give_up_after=self.settings.heartbeat_seconds)
            except DatabaseUnavailable:
                return False  # try again next beat
            except repo.LeaseLost:
                pass
            else:
                self.released = True
                log.info("job %s: handed back during a phase without batch boundaries",
                         self.job_id)
            self.lost.set()
        finally:
            self._write_lock.release()
        if self.released:
            self.on_release()
        return True
