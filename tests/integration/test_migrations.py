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


@pytest.mark.integration
def test_alembic_check_postgres(postgres_url: str) -> None:
    check_round_trip(postgres_url)
    assert alembic(postgres_url, "downgrade", "base").returncode == 0  # leave it empty
