"""The one idempotent create: replay, 409 on a different body, and the unique-key race
(two requests with the same new key: the loser's COMMIT fails and it replays the winner),
on the app's real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import repository as repo
from app.clock import utcnow
from app.config import Limits, get_settings
from app.db import get_sessionmaker
from app.errors import Conflict
from app.models import Dataset
from app.services import datasets, idempotency

CSV = b"a,b,label\n" + b"".join(f"{i},{i % 7},{i % 2}\n".encode() for i in range(40))
TENANT = "alice"


def built() -> Dataset:
    return datasets.build_dataset(content=CSV, filename="d.csv", fmt="csv", target="label",
                                  task="auto", input_shape=None, name=None,
                                  limits=get_settings().limits)


def store(key: str | None, digest: str) -> Dataset:
    """Another request's row, committed in its own session."""
    with get_sessionmaker()() as other:
        row, _ = datasets.create(other, tenant_id=TENANT, dataset=built(), idempotency_key=key,
                                 request_hash=digest, limits=Limits())
        return row


@pytest.fixture()
def session(app_home: Path) -> Iterator[Session]:
    with get_sessionmaker()() as s:
        repo.ensure_tenant(s, TENANT, utcnow())
        s.commit()
        yield s


def race(session: Session, key: str, winner_digest: str,
         digest: str) -> tuple[Dataset, bool, str]:
    """Our request finds no row for ``key``; before it commits, another one stores it."""
    winner: list[str] = []

    def insert(k: str | None) -> Dataset:
        winner.append(store(key, winner_digest).id)
        mine = built()
        mine.tenant_id, mine.idempotency_key, mine.request_hash = TENANT, k, digest
        repo.add_dataset(session, mine)
        return mine

    def find(k: str) -> Dataset | None:
        return repo.dataset_by_idempotency_key(session, TENANT, k)

    row, created = idempotency.create_once(session, key=key, digest=digest, find=find,
                                           insert=insert)
    return row, created, winner[0]


def test_the_loser_of_a_key_race_replays_the_winner(session: Session) -> None:
    row, created, winner = race(session, "k", "same", "same")
    assert (row.id, created) == (winner, False)
    assert len(repo.list_datasets(session, TENANT, before=None, limit=10)) == 1


def test_the_loser_of_a_key_race_with_another_body_gets_409(session: Session) -> None:
    with pytest.raises(Conflict, match="different body"):
        race(session, "k", "theirs", "mine")


def test_a_replay_and_a_new_key(session: Session) -> None:
    first = store("k", "h")
    again, created = datasets.create(session, tenant_id=TENANT, dataset=built(),
                                     idempotency_key="k", request_hash="h", limits=Limits())
    assert (again.id, created) == (first.id, False)
    fresh, created = datasets.create(session, tenant_id=TENANT, dataset=built(),
                                     idempotency_key="k2", request_hash="h", limits=Limits())
    assert created and fresh.id != first.id


def test_a_failure_that_is_not_a_key_race_is_raised(session: Session) -> None:
    taken = store(None, "h").id

    def insert(_k: str | None) -> Dataset:
        clash = built()
        clash.id, clash.tenant_id, clash.request_hash = taken, TENANT, "h"  # same primary key
        repo.add_dataset(session, clash)
        return clash

    with pytest.raises(IntegrityError):
        idempotency.create_once(session, key="fresh", digest="h", insert=insert,
                                find=lambda k: repo.dataset_by_idempotency_key(session,
                                                                              TENANT, k))


def test_the_request_hash_ignores_key_order_and_covers_the_upload() -> None:
    a = idempotency.request_hash({"x": 1, "y": [1, 2]}, b"file")
    assert a == idempotency.request_hash({"y": [1, 2], "x": 1}, b"file")
    assert a != idempotency.request_hash({"x": 1, "y": [1, 2]}, b"file2")
    assert a != idempotency.request_hash({"x": 2, "y": [1, 2]}, b"file")
