"""Typed views of what the API returns, for the Python client (``trainyard.Trainyard``).

Only pydantic: the light install. Each model names the fields people reach for and keeps
any other field the server sends (``extra="allow"``), so a newer server never breaks an
older client; nested documents (spec, summary, result) stay dicts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL_JOB = frozenset({"succeeded", "failed", "cancelled"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(Model):
    epoch: int
    total: int


class Job(Model):
    id: str
    name: str
    status: str
    experiment_id: str | None = None
    progress: Progress
    created_at: datetime
    finished_at: datetime | None = None
    summary: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    tags: list[str] = []
    note: str | None = None
    keep: bool = False
    spec: dict[str, Any] | None = None  # list items leave it out

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_JOB


class Experiment(Model):
    id: str
    name: str
    kind: str
    status: str
    progress: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    tags: list[str] = []
    note: str | None = None
    keep: bool = False

    @property
    def done(self) -> bool:
        return self.status != "running"


class Dataset(Model):
    id: str
    name: str
    task: str
    rows: int
    features: int
    n_classes: int
    size_bytes: int
    created_at: datetime


class MetricPoint(Model):
    id: int
    epoch: int
    split: str
    name: str
    value: float | None


class Usage(Model):
    storage_bytes: dict[str, int]
    datasets: int
    quota: dict[str, int]
