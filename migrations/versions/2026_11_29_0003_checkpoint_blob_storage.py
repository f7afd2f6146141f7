"""store checkpoint blobs uncompressed on Postgres

Safetensors weights are float32 noise to a compressor: pglz spends CPU on every checkpoint
for no gain (bench/README.md: 32 -> 13 ms per checkpoint). EXTERNAL keeps TOAST's
out-of-line storage and skips the compression attempt. SQLite has no such setting.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:30:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE checkpoints ALTER COLUMN blob SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE checkpoints ALTER COLUMN blob SET STORAGE EXTENDED")
