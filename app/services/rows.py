"""Reading one row by id on behalf of a tenant."""

from __future__ import annotations

from typing import TypeVar

from app.errors import NotFound

T = TypeVar("T")


def found(row: T | None, what: str, row_id: str) -> T:
    """The row, or 404. The repository filters by tenant, so another tenant's row is
    missing here too: a client cannot tell it from one that never existed."""
    if row is None:
        raise NotFound(f"no {what} '{row_id}'")
    return row
