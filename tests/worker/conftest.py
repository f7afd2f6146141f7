"""The worker's tests run in-process on a fresh SQLite file whose schema comes from the models
(Alembic's agreement with them is tests/integration/test_migrations.py's job)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.clock import utcnow
from app.db import make_engine
from app.models import Base


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite+pysqlite:///{tmp_path / 'w.db'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def quiet_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker in these tests: the calls under test are made directly."""
    monkeypatch.setattr("app.services.jobs.enqueue_job", lambda *a: None)
    monkeypatch.setattr("worker.advance.enqueue_advance", lambda *a: None)


def add_tenants(sessions: sessionmaker[Session], *tenants: str) -> None:
    with sessions() as s:
        for tenant in tenants:
            repo.ensure_tenant(s, tenant, utcnow())
        s.commit()
