"""API tests: the real app in-process on a fresh SQLite file (schema built by Alembic)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient


def reset_caches() -> None:
    from app import config, db, queue

    config.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    queue.get_celery.cache_clear()


@pytest.fixture()
def app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path))
    monkeypatch.delenv("TRAINYARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("TRAINYARD_BROKER_URL", raising=False)
    reset_caches()
    from app.services.admin import upgrade_schema

    upgrade_schema()
    yield tmp_path
    from app.db import get_engine

    get_engine().dispose()
    reset_caches()


def make_key(tenant: str) -> str:
    from app.db import session_scope
    from app.services import keys

    with session_scope() as session:
        return keys.create(session, tenant_id=tenant)[1]


@pytest.fixture()
def client(app_home: Path) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {make_key('alice')}"
        yield c


@pytest.fixture()
def other_client(app_home: Path) -> Iterator[TestClient]:
    """A second tenant on the same app."""
    from app.main import create_app

    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {make_key('bob')}"
        yield c
