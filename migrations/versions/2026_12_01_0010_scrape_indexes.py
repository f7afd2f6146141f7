"""jobs by (status, queue, created_at): the Prometheus scrape's grouped reads

The /metrics scrape counts jobs per (status, queue) and finds each queue's oldest queued job.
Without an index both scanned `jobs` (241-394 ms at 100k jobs on Postgres, bench/README.md
section 6); with (status, queue, created_at) the count is an index-only scan and the oldest
queued job a range read of the queued ones. The other reads already have theirs: metrics by
(job_id, id) and jobs by (tenant_id, status) since 0005. Plain CREATE INDEX: no table copy
(the tables carry 0006's triggers).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 17:30:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_jobs_status_queue_created', 'jobs', ['status', 'queue', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_jobs_status_queue_created', table_name='jobs')
