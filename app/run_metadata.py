"""What a person says about a run (tags, a note, keep), apart from what trains it.

Given at submission in the body's ``metadata`` object (beside the spec's own fields) and
edited later with PATCH; never stored in the spec, so it changes no training, no idempotency
replay of a different run, and no spec difference in /v1/compare. ``keep`` exempts a run
from retention (``TRAINYARD_RETENTION_DAYS``).

Also the fixed set of summary figures a job list may be ordered by: each is projected into
its own indexed column when the job ends (``order_columns``)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_TAGS = 16
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                       pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]*$")]
Note = Annotated[str, StringConstraints(max_length=2000)]


class RunMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS,
                            description="A small set of labels to filter by (`?tag=`).",
                            examples=[["baseline", "digits"]])
    note: Note | None = Field(None, description="Free text for people.")
    keep: bool = Field(False, description="Exempt from retention (TRAINYARD_RETENTION_DAYS).")


class MetadataPatch(BaseModel):
    """PATCH body: each field given replaces the stored one; fields left out stay."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"tags": ["baseline", "digits"], "keep": True}, {"note": None}]})

    tags: list[Tag] | None = Field(None, max_length=MAX_TAGS)
    note: Note | None = None
    keep: bool | None = None


def unique_tags(tags: list[str]) -> list[str]:
    """Tags are a set: duplicates dropped, first spelling and order kept."""
    return list(dict.fromkeys(tags))


# order_by name -> (summary split or attribute, metric). Losses and errors: smaller first
# unless prefixed with '-'; the same rule for every key keeps it predictable.
ORDER_KEYS: dict[str, tuple[str, str | None]] = {
    "test_loss": ("test", "loss"), "test_accuracy": ("test", "accuracy"),
    "test_rmse": ("test", "rmse"), "test_r2": ("test", "r2"),
    "val_loss": ("val", "loss"), "val_accuracy": ("val", "accuracy"),
    "val_rmse": ("val", "rmse"), "train_loss": ("train", "loss"),
    "parameters": ("parameters", None), "best_epoch": ("best_epoch", None),
}


def order_columns(summary: dict[str, Any] | None) -> dict[str, float | None]:
    """Each ORDER_KEYS figure of a stored summary (None where the run has none): the
    values of the jobs' ``ord_*`` columns."""
    values: dict[str, float | None] = {}
    for key, (where, metric) in ORDER_KEYS.items():
        found = (summary or {}).get(where)
        if metric is not None:
            found = found.get(metric) if isinstance(found, dict) else None
        number = float(found) if isinstance(found, int | float) else math.nan
        values[f"ord_{key}"] = number if math.isfinite(number) else None  # NaN never sorts
    return values
