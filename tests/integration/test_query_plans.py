"""The read path's queries (polling, listing, the Prometheus scrape) use an index on Postgres,
checked with EXPLAIN on the statements the repository really sends, over tables large enough
that the planner has a choice.

A plan, not a timing: bench/README.md measures the latency; this keeps a missing index (or a
query the index cannot serve) from landing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from tests.conftest import PG_ADMIN, _pg_admin
from tests.integration.test_migrations import alembic

pytestmark = pytest.mark.integration

JOBS, METRIC_ROWS_PER_JOB = 2_000, 100  # 200k metric rows: the planner prefers indexes by far


@pytest.fixture(scope="module")
def big_db(postgres_url: str) -> Iterator[sa.Engine]:
    """A database of its own (the shared one holds other tests' live jobs), filled in SQL."""
    name = f"trainyard_plans_{secrets.token_hex(4)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    assert alembic(url, "upgrade", "head").returncode == 0
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO tenants VALUES ('t', now()), ('u', now())"))
        conn.execute(sa.text(
            "INSERT INTO jobs (id, tenant_id, name, spec, task, queue, status, attempt, "
            "max_attempts, cancel_requested, epoch, total_epochs, created_at, updated_at) "
            "SELECT 'job_' || g, CASE WHEN g % 2 = 0 THEN 't' ELSE 'u' END, 'n', '{}', "
            "'classification', 'cpu', CASE WHEN g % 100 = 0 THEN 'running' ELSE 'succeeded' END,"
            " 1, 3, false, 1, 1, now(), now() FROM generate_series(1, :n) AS g"), {"n": JOBS})
        conn.execute(sa.text(
            "INSERT INTO metrics (job_id, epoch, split, name, value, attempt) "
            "SELECT 'job_' || (1 + g % :jobs), g, 'train', 'loss', 0.5, 1 "
            "FROM generate_series(1, :rows) AS g"),
            {"jobs": JOBS, "rows": JOBS * METRIC_ROWS_PER_JOB})
        conn.execute(sa.text("ANALYZE"))
    yield engine
    engine.dispose()
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plan_of(engine: sa.Engine, call: Callable[[Session], Any]) -> str:
    """EXPLAIN of the one SELECT a repository call sends, with its real parameters."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as session:
            call(session)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(sent) == 1, sent
    statement, parameters = sent[0]
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        with raw.cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            row = cursor.fetchone()
    assert row is not None
    return json.dumps(row[0])


def test_polling_a_jobs_metrics_reads_its_index(big_db: sa.Engine) -> None:
    from app import repository as repo

    plan = plan_of(big_db, lambda s: repo.metrics_page(
        s, "job_7", after=150_000, limit=1000, names=[], splits=[]))
    assert "ix_metrics_job_id_id" in plan, plan
    assert '"Seq Scan"' not in plan, plan


def test_counting_a_tenants_active_jobs_reads_its_index(big_db: sa.Engine) -> None:
    from app import repository as repo

    plan = plan_of(big_db, lambda s: repo.count_active_jobs(s, "t"))
    assert "ix_jobs_tenant_status" in plan, plan
    assert '"Seq Scan"' not in plan, plan


def test_the_scrapes_oldest_queued_job_reads_the_status_queue_index(big_db: sa.Engine) -> None:
    from app import repository as repo

    plan = plan_of(big_db, repo.oldest_queued)
    assert "ix_jobs_status_queue_created" in plan, plan
    assert '"Seq Scan"' not in plan, plan


def test_the_scrapes_job_counts_read_the_status_queue_index_alone(big_db: sa.Engine) -> None:
    """Counting every job per (status, queue) reads the index, not the table's rows (an
    index-only scan, once VACUUM has set the visibility map as autovacuum would)."""
    from app import repository as repo

    with big_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE jobs"))
    plan = plan_of(big_db, repo.job_counts)
    assert "ix_jobs_status_queue_created" in plan, plan
    assert '"Index Only Scan"' in plan and '"Seq Scan"' not in plan, plan


@pytest.fixture(scope="module")
def figures(big_db: sa.Engine) -> sa.Engine:
    """Every finished job with a test accuracy; a tenth of them tagged 'red', every one
    with 20 other tags (40k tag rows: enough that the planner has a choice)."""
    with big_db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET ord_test_accuracy = random() "
                             "WHERE status = 'succeeded'"))
        conn.execute(sa.text("INSERT INTO job_tags (job_id, tag, tenant_id) "
                             "SELECT id, 'red', tenant_id FROM jobs "
                             "WHERE substr(id, 5)::int % 10 = 0"))
        conn.execute(sa.text("INSERT INTO job_tags (job_id, tag, tenant_id) "  # the others'
                             "SELECT id, 'tag' || g, tenant_id FROM jobs, "
                             "generate_series(1, 20) AS g"))
        conn.execute(sa.text("ANALYZE"))
    return big_db


@pytest.mark.parametrize("descending", [False, True])
def test_ordering_by_a_figure_reads_its_index_in_either_direction(
        figures: sa.Engine, descending: bool) -> None:
    from app import repository as repo

    plan = plan_of(figures, lambda s: repo.list_jobs_ordered(
        s, "t", repo.JobFilter(), key="test_accuracy", descending=descending,
        after=(0.5, "job_9"), limit=51))
    assert "ix_jobs_tenant_ord_test_accuracy" in plan, plan
    assert '"Sort"' not in plan and '"Seq Scan"' not in plan, plan


def test_filtering_by_tag_reads_the_tag_index(figures: sa.Engine) -> None:
    from app import repository as repo

    plan = plan_of(figures, lambda s: repo.list_jobs(
        s, "t", repo.JobFilter(tags=["red"]), before=None, limit=51))
    assert "ix_job_tags_tenant_tag" in plan, plan
