"""run metadata (tags, note, keep), summary figures projected for ordering, tag tables

Tags, a note and `keep` on jobs and experiments (app/run_metadata.py): not part of the spec.
`job_tags`/`experiment_tags` back `?tag=` with a (tenant_id, tag) index. Each `ord_*` column
holds one summary figure a job list may be ordered by, written when the job ends; existing
finished jobs are backfilled here. Plain ADD COLUMN (no batch table copy): a SQLite table
copy would drop the event triggers of 0006.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 14:30:00
"""
import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Frozen here, as this revision made them (app/run_metadata.py may grow later).
ORDER_KEYS = {
    "test_loss": ("test", "loss"), "test_accuracy": ("test", "accuracy"),
    "test_rmse": ("test", "rmse"), "test_r2": ("test", "r2"),
    "val_loss": ("val", "loss"), "val_accuracy": ("val", "accuracy"),
    "val_rmse": ("val", "rmse"), "train_loss": ("train", "loss"),
    "parameters": ("parameters", None), "best_epoch": ("best_epoch", None),
}

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _metadata_columns(table: str) -> None:
    op.add_column(table, sa.Column('tags', sa.JSON(), server_default='[]', nullable=False))
    op.add_column(table, sa.Column('note', sa.Text(), nullable=True))
    op.add_column(table, sa.Column('keep', sa.Boolean(), server_default=sa.text('false'),
                                   nullable=False))


def upgrade() -> None:
    _metadata_columns('jobs')
    _metadata_columns('experiments')
    for key in ORDER_KEYS:
        op.add_column('jobs', sa.Column(f'ord_{key}', sa.Float(), nullable=True))
        op.create_index(f'ix_jobs_tenant_ord_{key}', 'jobs', ['tenant_id', f'ord_{key}', 'id'])
    op.create_table('job_tags',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_tags_job_id_jobs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'tag', name=op.f('pk_job_tags'))
    )
    op.create_index('ix_job_tags_tenant_tag', 'job_tags', ['tenant_id', 'tag', 'job_id'])
    op.create_table('experiment_tags',
    sa.Column('experiment_id', sa.String(length=40), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'],
                            name=op.f('fk_experiment_tags_experiment_id_experiments'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'tag', name=op.f('pk_experiment_tags'))
    )
    op.create_index('ix_experiment_tags_tenant_tag', 'experiment_tags',
                    ['tenant_id', 'tag', 'experiment_id'])
    _backfill_order_columns()


def _backfill_order_columns() -> None:
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('summary', sa.JSON),
                    *(sa.column(f'ord_{key}', sa.Float) for key in ORDER_KEYS))
    bind = op.get_bind()
    rows = bind.execute(sa.select(jobs.c.id, jobs.c.summary)
                        .where(jobs.c.summary.is_not(None))).all()
    for job_id, summary in rows:
        bind.execute(sa.update(jobs).where(jobs.c.id == job_id)
                     .values(**_order_values(summary)))


def _order_values(summary: dict) -> dict:
    values = {}
    for key, (where, metric) in ORDER_KEYS.items():
        found = summary.get(where)
        if metric is not None:
            found = found.get(metric) if isinstance(found, dict) else None
        number = float(found) if isinstance(found, int | float) else math.nan
        values[f'ord_{key}'] = number if math.isfinite(number) else None
    return values


def downgrade() -> None:
    op.drop_index('ix_experiment_tags_tenant_tag', table_name='experiment_tags')
    op.drop_table('experiment_tags')
    op.drop_index('ix_job_tags_tenant_tag', table_name='job_tags')
    op.drop_table('job_tags')
    for key in ORDER_KEYS:
        op.drop_index(f'ix_jobs_tenant_ord_{key}', table_name='jobs')
        op.drop_column('jobs', f'ord_{key}')
    for table in ('experiments', 'jobs'):
        op.drop_column(table, 'keep')
        op.drop_column(table, 'note')
        op.drop_column(table, 'tags')
