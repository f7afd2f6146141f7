"""Races with real concurrency: submits against the per-tenant cap (a real API process on
Postgres and on SQLite, many requests released at once), and cancel against claim (two
threads, two connections, on Postgres and SQLite)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.db import make_engine
from app.models import Job, Tenant
from app.services import jobs as job_service
from app.spec import JobSpec
from app.training import shapes
from tests.conftest import FAST, ROOT, Stack, distributed_stack, tiny_spec

CAP = 2
CAPPED = {"TRAINYARD_LIMIT_MAX_CONCURRENT_JOBS": str(CAP)}


@contextlib.contextmanager
def embedded_stack(home: Path, **env: str) -> Iterator[Stack]:
    """The ``embedded`` fixture's stack (SQLite, filesystem broker) with extra settings."""
    stack = Stack(home, {**FAST, **env})
    stack.env.pop("TRAINYARD_DATABASE_URL", None)
    stack.env.pop("TRAINYARD_BROKER_URL", None)
    try:
        stack.cli("migrate")
        stack.key = stack.new_key("dev")
        stack.start_api()
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(params=["postgres", "sqlite"])
def capped(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A real API process (no workers: submitted jobs stay queued) with a cap of 2."""
    if request.param == "postgres":
        pg, redis = (request.getfixturevalue(f) for f in ("postgres_url", "redis_url"))
        with distributed_stack(tmp_path, pg, redis, **CAPPED) as stack:
            yield stack
    else:
        with embedded_stack(tmp_path, **CAPPED) as stack:
            yield stack


def all_at_once(n: int, call: Callable[[], int]) -> list[int]:
    """``call`` from n threads released together by a barrier; the status codes, sorted."""
    barrier = threading.Barrier(n)

    def fire() -> int:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return sorted(f.result() for f in [pool.submit(fire) for _ in range(n)])


def test_job_cap_holds_under_concurrent_submits(capped: Stack) -> None:
    with capped.client() as http:
        codes = all_at_once(8, lambda: http.post("/v1/jobs", json=tiny_spec()).status_code)
        assert codes == [201] * CAP + [429] * (8 - CAP)
        assert len(http.get("/v1/jobs").json()["items"]) == CAP


def test_experiment_cap_holds_under_concurrent_submits(capped: Stack) -> None:
    """Two children each: with a cap of 2, exactly one of the experiments gets in."""
    body = {"kind": "cross_validation", "k": 2, "base": tiny_spec()}
    with capped.client() as http:
        codes = all_at_once(6, lambda: http.post("/v1/experiments", json=body).status_code)
        assert codes == [201] + [429] * 5
        assert len(http.get("/v1/jobs").json()["items"]) == CAP


# ------------------------------------------------------------------ cancel vs claim


def migrated(url: str, home: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TRAINYARD_HOME": str(home), "TRAINYARD_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "trainyard.cli", "migrate"], env=env, cwd=ROOT,
                   check=True, capture_output=True)


@pytest.fixture(params=["postgres", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite+pysqlite:///{tmp_path / 'races.db'}"
    migrated(url, tmp_path)
    engine = make_engine(url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


TENANT = "racer"


def queued_job(sessions: sessionmaker[Session]) -> Job:
    spec = JobSpec.model_validate(tiny_spec())
    settings = Settings()
    job = job_service.new_job(TENANT, spec, shapes.synthetic_info(spec.data.source),  # type: ignore[arg-type]
                              settings)
    with sessions() as s:
        repo.ensure_tenant(s, TENANT, utcnow())
        s.add(job)
        s.commit()
    return job


def claim(sessions: sessionmaker[Session], job_id: str) -> bool:
    with sessions() as s:
        took = repo.claim(s, job_id, "racer-worker", utcnow(), 30) is not None
        s.commit()
        return took


def final(sessions: sessionmaker[Session], job_id: str) -> tuple[str, bool]:
    with sessions() as s:
        job = repo.get_job_any_tenant(s, job_id)
        assert job is not None
        return job.status, job.cancel_requested


def test_cancel_after_a_stale_read_still_flags_a_job_claimed_meanwhile(
        sessions: sessionmaker[Session]) -> None:
    """The interleaving the race produces, made certain: the cancel read 'queued', a claim
    committed, then the cancel wrote."""
    job_id = queued_job(sessions).id
    with sessions() as s:
        seen = job_service.get(s, TENANT, job_id)
        assert seen.status == "queued"
        s.commit()
        assert claim(sessions, job_id)
        repo.cancel(s, seen, utcnow())
        s.commit()
        assert (seen.status, seen.cancel_requested) == ("running", True)
    assert final(sessions, job_id) == ("running", True)


def test_cancel_racing_claim_is_never_lost(sessions: sessionmaker[Session]) -> None:
    """Many rounds of a claim and a cancel released together from two threads: the job ends
    cancelled (cancel first) or running with the flag set (claim first), and the cancel's
    answer says which. Running without the flag would be a cancel lost."""
    outcomes: dict[tuple[str, bool], int] = {}
    for _ in range(60):
        job_id = queued_job(sessions).id
        barrier = threading.Barrier(2)

        def cancel(job_id: str = job_id, barrier: threading.Barrier = barrier) -> Any:
            with sessions() as s:
                barrier.wait()
                job = job_service.cancel(s, TENANT, job_id)
                return job.status, job.cancel_requested

        def take(job_id: str = job_id, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return claim(sessions, job_id)

        with ThreadPoolExecutor(2) as pool:
            answered, claimed = pool.submit(cancel), pool.submit(take)
            answer, took = answered.result(), claimed.result()
        state = final(sessions, job_id)
        assert state == answer, "the cancel's response must match what was stored"
        assert state in {("cancelled", True), ("running", True)}, state
        assert took == (state[0] == "running")
        outcomes[state] = outcomes.get(state, 0) + 1
    print("cancel/claim outcomes:", outcomes)


def test_locking_a_tenant_without_a_row_creates_it(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        repo.lock_tenant(s, "newcomer", utcnow())
        s.commit()
    with sessions() as s:
        assert s.get(Tenant, "newcomer") is not None
