"""indexes the read path needs: metrics by (job_id, id), jobs by (tenant_id, status)

Polling a job's metrics with `after=` filtered on job_id and ordered by id: with only the
primary key and the (job_id, epoch, split, name) unique index, Postgres walked the primary key
from `after` and discarded every later row of every other job (52-68 ms at 2.2 M rows,
growing with the table); with (job_id, id) it is an index range scan. The per-tenant count of
active jobs (the concurrency cap, checked on every submit) reads (tenant_id, status).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 11:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_metrics_job_id_id', 'metrics', ['job_id', 'id'])
    op.create_index('ix_jobs_tenant_status', 'jobs', ['tenant_id', 'status'])


def downgrade() -> None:
    op.drop_index('ix_jobs_tenant_status', table_name='jobs')
    op.drop_index('ix_metrics_job_id_id', table_name='metrics')
