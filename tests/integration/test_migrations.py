"""Models and migrations agree (`alembic check`) on SQLite and Postgres; downgrade works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINYARD_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def check_round_trip(url: str) -> None:
    assert alembic(url, "upgrade", "head").returncode == 0
    out = alembic(url, "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No new upgrade operations detected" in out.stdout + out.stderr
    assert alembic(url, "downgrade", "base").returncode == 0
    assert alembic(url, "upgrade", "head").returncode == 0


def test_alembic_check_sqlite(tmp_path: Path) -> None:
    check_round_trip(f"sqlite+pysqlite:///{tmp_path / 'm.db'}")


def blob_storage(url: str) -> str:
    """Postgres' storage strategy of checkpoints.blob: 'x' extended, 'e' external."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(text(
                "SELECT attstorage FROM pg_attribute "
                "WHERE attrelid = 'checkpoints'::regclass AND attname = 'blob'")))
    finally:
        engine.dispose()


@pytest.mark.integration
def test_alembic_check_postgres(postgres_url: str) -> None:
    check_round_trip(postgres_url)
    # safetensors floats do not compress; pglz trying anyway cost ~20 ms per checkpoint
    assert blob_storage(postgres_url) == "e"
    assert alembic(postgres_url, "downgrade", "0002").returncode == 0
    assert blob_storage(postgres_url) == "x"
    assert alembic(postgres_url, "downgrade", "base").returncode == 0  # leave it empty
