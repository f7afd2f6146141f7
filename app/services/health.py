"""Readiness: can this API process reach SQL and the broker right now?"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from app import repository as repo
from app.db import get_sessionmaker
from app.queue import broker_reachable


def sql_reachable() -> bool:
    session = get_sessionmaker()()
    try:
        repo.ping(session)
        return True
    except SQLAlchemyError:  # any driver or connection failure: not ready
        return False
    finally:
        session.close()


def readiness() -> dict[str, bool]:
    """Each dependency, reachable or not."""
    return {"sql": sql_reachable(), "broker": broker_reachable()}
