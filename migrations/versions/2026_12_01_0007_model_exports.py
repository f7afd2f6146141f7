"""model exports: each succeeded job's ONNX graph, weights and model.json

`jobs.model_status` (null: never asked for, as for a job that succeeded before exports
existed; pending, ready or failed with `jobs.model_error`) is written in the worker's fenced
success write and by the export task; `model_exports` holds the graph and the weights, each
with its sha256, and the manifest. On Postgres the blobs are STORAGE EXTERNAL, as
checkpoints are (0003): float32 weights do not compress.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 15:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('model_status', sa.String(length=16), nullable=True))
    op.add_column('jobs', sa.Column('model_error', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('model_updated_at', sa.DateTime(timezone=True),
                                    nullable=True))
    op.create_table('model_exports',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('onnx', sa.LargeBinary(), nullable=False),
    sa.Column('onnx_sha256', sa.String(length=64), nullable=False),
    sa.Column('weights', sa.LargeBinary(), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_model_exports_job_id_jobs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_model_exports'))
    )
    if op.get_bind().dialect.name == 'postgresql':
        for column in ('onnx', 'weights'):
            op.execute(f"ALTER TABLE model_exports ALTER COLUMN {column} SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table('model_exports')
    # plain DROP COLUMN (SQLite >= 3.35): a batch copy of `jobs` would trip over the
    # triggers of 0006, which name the table
    for column in ('model_updated_at', 'model_error', 'model_status'):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
