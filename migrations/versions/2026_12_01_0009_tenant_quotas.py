"""per-tenant quota overrides

`tenants.quota_storage_bytes` and `tenants.quota_datasets`: null means the configured
default (TRAINYARD_LIMIT_QUOTA_STORAGE_BYTES, TRAINYARD_LIMIT_QUOTA_DATASETS); set with
`trainyard tenants quota`. Plain ADD COLUMN.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 15:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('tenants', sa.Column('quota_storage_bytes', sa.BigInteger(), nullable=True))
    op.add_column('tenants', sa.Column('quota_datasets', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('tenants', 'quota_datasets')
    op.drop_column('tenants', 'quota_storage_bytes')
