#!/usr/bin/env python
"""What observability costs the API: one /metrics scrape against the number of jobs, and the
two middlewares every request passes (request id, HTTP series).

- **Scrape**: ``app.services.operations.exposition`` (two grouped queries over ``jobs``, the
  worker registry, this process's series) on a fresh database holding ``--jobs`` jobs
  (inserted in bulk from one real job row, statuses and queues mixed). Median of 20 scrapes.
- **Middlewares**: ``RequestId(HttpMetrics(endpoint))`` against the bare endpoint, a
  do-nothing ASGI app routed like ``GET /healthz``, called in-process; median µs per
  request over 7 interleaved rounds of 20,000.

    .venv/bin/python bench/metrics_scrape.py                       # SQLite, 10k and 100k jobs
    .venv/bin/python bench/metrics_scrape.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/metrics_scrape.py --without-index   # also as before migration 0010
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def seed_jobs(count: int) -> None:
    """``count`` jobs copied from one submitted through the service (ids and statuses vary)."""
    from sqlalchemy import insert, select

    from app.db import get_sessionmaker
    from app.models import Job
    from app.services import admin

    admin.create_key("bench")
    sessions = get_sessionmaker()
    with sessions() as session:
        template = _one_job(session)
        row = {c.name: getattr(template, c.key) for c in Job.__table__.columns}
        statuses = ["succeeded"] * 7 + ["failed", "queued", "running"]
        rows = [{**row, "id": f"job_bench{i:012d}", "idempotency_key": None,
                 "status": statuses[i % len(statuses)], "queue": ("cpu", "gpu")[i % 2]}
                for i in range(count)]
        for start in range(0, count, 5000):
            session.execute(insert(Job), rows[start:start + 5000])
        session.commit()
        assert session.scalar(select(Job.id).limit(1)) is not None


def _one_job(session: Any) -> Any:
    from app.config import get_settings
    from app.services import jobs as job_service
    from app.spec import JobSpec
    from tests.conftest import tiny_spec

    job, _ = job_service.submit(session, tenant_id="bench", settings=get_settings(),
                                spec=JobSpec.model_validate(tiny_spec()), idempotency_key=None)
    return job


def analyze() -> None:
    """VACUUM ANALYZE after the bulk insert, as autovacuum would: it sets Postgres's
    visibility map, which the scrape's index-only scan of jobs needs."""
    from sqlalchemy import text

    from app.db import get_engine

    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jobs" if connection.dialect.name == "postgresql"
                                else "ANALYZE"))


def drop_status_index() -> None:
    """The schema before migration 0010: no (status, queue, created_at) index."""
    from sqlalchemy import text

    from app.db import get_engine

    with get_engine().begin() as connection:
        connection.execute(text("DROP INDEX ix_jobs_status_queue_created"))
    analyze()


def scrape_ms(rounds: int = 20) -> float:
    from app.config import get_settings
    from app.db import get_sessionmaker
    from app.services.operations import exposition

    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        exposition(get_sessionmaker(), get_settings())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _calls(app: Any, scope: dict[str, Any], n: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict[str, Any]) -> None:
        return None

    started = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / n * 1e6


def middleware_us(rounds: int = 7, n: int = 20_000) -> tuple[float, float]:
    """µs per request of a do-nothing routed endpoint, with and without the two
    middlewares around it (interleaved rounds; medians)."""
    from app.http_metrics import HttpMetrics
    from app.logs import RequestId
    from app.main import create_app

    api = create_app()
    route = SimpleNamespace(path="/healthz")  # the router's matched route, as the label reads it

    async def endpoint(scope: dict[str, Any], _receive: Any, send: Any) -> None:
        scope["route"] = route  # what the router sets for a matched request
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    scope = {"type": "http", "method": "GET", "path": "/healthz", "app": api,
             "headers": [(b"x-request-id", b"bench-1")]}
    wrapped = RequestId(HttpMetrics(endpoint))
    with_mw, without = [], []
    for _ in range(rounds):
        with_mw.append(asyncio.run(_calls(wrapped, scope, n)))
        without.append(asyncio.run(_calls(endpoint, scope, n)))
    return statistics.median(with_mw), statistics.median(without)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--database-url", help="a Postgres server URL (a database is made there)")
    p.add_argument("--without-index", action="store_true",
                   help="also time it without the index of migration 0010 on jobs (status, "
                        "queue, created_at), as before it")
    args = p.parse_args()
    for count in args.jobs:
        with tempfile.TemporaryDirectory() as home:
            os.environ["TRAINYARD_HOME"] = home
            admin_conn, name = None, f"trainyard_bench_scrape_{count}"
            if args.database_url:
                from bench.submit_latency import fresh_database

                admin_conn, url = fresh_database(args.database_url, name)
                os.environ["TRAINYARD_DATABASE_URL"] = url
            try:
                _reset()
                from app.services.admin import upgrade_schema

                upgrade_schema()
                seed_jobs(count)
                analyze()
                print(f"{count:>7} jobs: scrape {scrape_ms():.1f} ms (median of 20)", flush=True)
                if args.without_index:
                    drop_status_index()
                    print(f"{count:>7} jobs, without the index: scrape {scrape_ms():.1f} ms",
                          flush=True)
            finally:
                _reset(dispose=True)
                if admin_conn is not None:
                    from bench.submit_latency import drop_database

                    drop_database(admin_conn, name)
    with tempfile.TemporaryDirectory() as home:
        os.environ["TRAINYARD_HOME"] = home
        os.environ.pop("TRAINYARD_DATABASE_URL", None)
        _reset()
        from app.services.admin import upgrade_schema

        upgrade_schema()
        full, plain = middleware_us()
        print(f"the two middlewares: +{full - plain:.1f} µs per request ({full:.1f} µs with, "
              f"{plain:.1f} µs without, around a do-nothing endpoint)")
        _reset(dispose=True)
    return 0


def _reset(dispose: bool = False) -> None:
    from app import config, db

    if dispose:
        db.get_engine().dispose()
    config.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()


if __name__ == "__main__":
    sys.exit(main())
