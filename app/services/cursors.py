"""Keyset cursors: every list (jobs, experiments, datasets, an experiment's children) pages
on (created_at, id), and a cursor is that pair of the page's last row, opaque to clients."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from app.clock import as_utc
from app.errors import Unprocessable

Key = tuple[datetime, str]


class Keyed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


K = TypeVar("K", bound=Keyed)


def encode(row: Keyed) -> str:
    """The cursor after ``row``."""
    raw = f"{as_utc(row.created_at).isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode(cursor: str) -> Key:
    try:
        created, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        # a hand-made cursor without an offset, or one whose UTC time is out of range,
        # must not reach SQL (each was a 500)
        return as_utc(datetime.fromisoformat(created)).astimezone(UTC), row_id
    except (ValueError, OverflowError) as exc:
        raise Unprocessable("cursor is not one this API issued",
                            fields=[{"loc": "cursor", "message": "malformed"}]) from exc


def page(fetch: Callable[[Key | None, int], Sequence[K]], cursor: str | None,
         limit: int) -> tuple[Sequence[K], str | None]:
    """One page from ``fetch(key, n)`` (the rows past ``key``, at most ``n``), and the cursor
    to the next, or None on the last page. One row over the limit is asked for, so a page
    that ends exactly at the last row gets no cursor to an empty page."""
    rows = fetch(decode(cursor) if cursor else None, limit + 1)
    more, rows = len(rows) > limit, rows[:limit]
    return rows, encode(rows[-1]) if more and rows else None


def encode_ordered(order_by: str, value: float, row_id: str) -> str:
    """The cursor after a row of a list ordered by a summary figure: (figure, id)."""
    raw = f"{order_by}|{value!r}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_ordered(cursor: str, order_by: str) -> tuple[float, str]:
    """A cursor is only good for the order it was issued under."""
    try:
        issued_for, value, row_id = (
            base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 2))
        number = float(value)
    except ValueError as exc:
        raise Unprocessable("cursor is not one this API issued",
                            fields=[{"loc": "cursor", "message": "malformed"}]) from exc
    if issued_for != order_by or not math.isfinite(number):
        raise Unprocessable("cursor was issued for another order_by",
                            fields=[{"loc": "cursor", "message": f"not for {order_by}"}])
    return number, row_id
