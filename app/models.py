"""SQL tables: typed SQLAlchemy 2.0 models on one base with a constraint naming convention."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.run_metadata import ORDER_KEYS
from app.statuses import ExperimentStatus, FailureReason, JobStatus, ModelStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

E = TypeVar("E", bound=StrEnum)
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class StrEnumColumn(TypeDecorator[E]):
    """A StrEnum in a plain VARCHAR: the same column (and rows) as a str one, so no migration
    and no CHECK constraint; values come back as members, and an unknown one is refused on
    write."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Any) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> E | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]
    # overrides of the configured quotas (Limits.quota_*); null: the default applies
    quota_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quota_datasets: Mapped[int | None] = mapped_column(Integer)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_status_updated", "status", "updated_at"),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),  # the per-tenant active count
        Index("ix_jobs_status_queue_created", "status", "queue", "created_at"),  # the scrape
        UniqueConstraint("tenant_id", "idempotency_key"),
        # one keyset index per ?order_by= key (app/run_metadata.ORDER_KEYS)
        *(Index(f"ix_jobs_tenant_ord_{key}", "tenant_id", f"ord_{key}", "id")
          for key in ORDER_KEYS),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    experiment_id: Mapped[str | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    role: Mapped[dict[str, Any] | None]  # the child's place in its experiment's design
    name: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict[str, Any]]
    task: Mapped[str] = mapped_column(String(20))
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(StrEnumColumn(JobStatus, 16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    total_epochs: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any] | None]
    error_reason: Mapped[FailureReason | None] = mapped_column(StrEnumColumn(FailureReason, 32))
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # the last event's sequence number; bumped by the triggers of migration 0006
    event_seq: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # its ONNX export (migration 0007): null until asked for (a job that succeeded before
    # exports existed), pending from the fenced success write on, then ready or failed
    model_status: Mapped[ModelStatus | None] = mapped_column(StrEnumColumn(ModelStatus, 16))
    model_error: Mapped[str | None] = mapped_column(Text)
    model_updated_at: Mapped[datetime | None]
    # metadata (app/run_metadata.py): not spec, edited with PATCH; tags also in job_tags
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    note: Mapped[str | None] = mapped_column(Text)
    keep: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # summary figures projected when the job ends, for ?order_by= (order_columns)
    ord_test_loss: Mapped[float | None] = mapped_column(Float)
    ord_test_accuracy: Mapped[float | None] = mapped_column(Float)
    ord_test_rmse: Mapped[float | None] = mapped_column(Float)
    ord_test_r2: Mapped[float | None] = mapped_column(Float)
    ord_val_loss: Mapped[float | None] = mapped_column(Float)
    ord_val_accuracy: Mapped[float | None] = mapped_column(Float)
    ord_val_rmse: Mapped[float | None] = mapped_column(Float)
    ord_train_loss: Mapped[float | None] = mapped_column(Float)
    ord_parameters: Mapped[float | None] = mapped_column(Float)
    ord_best_epoch: Mapped[float | None] = mapped_column(Float)


class ModelExport(Base):
    """A succeeded job's model: the ONNX graph and the weights, each with its sha256, and
    model.json (``app.training.manifest.ModelManifest``)."""

    __tablename__ = "model_exports"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    onnx: Mapped[bytes] = mapped_column(LargeBinary)
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]]
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class JobTag(Base):
    """One tag of a job: ``?tag=`` filters through (tenant_id, tag)."""

    __tablename__ = "job_tags"
    __table_args__ = (Index("ix_job_tags_tenant_tag", "tenant_id", "tag", "job_id"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))


class ExperimentTag(Base):
    __tablename__ = "experiment_tags"
    __table_args__ = (Index("ix_experiment_tags_tenant_tag", "tenant_id", "tag",
                            "experiment_id"),)

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "epoch", "split", "name"),
        # polling (job_id = ? AND id > after ORDER BY id): without it the planner walks the
        # primary key from `after` through every later row of every other job
        Index("ix_metrics_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "epoch", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)  # > 0: saved mid-epoch (preempted)
    attempt: Mapped[int] = mapped_column(Integer)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(8))
    task: Mapped[str] = mapped_column(String(20))
    rows: Mapped[int] = mapped_column(Integer)
    features: Mapped[int] = mapped_column(Integer)
    n_classes: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]]  # classes or target range, feature names, target column
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    blob: Mapped[bytes] = mapped_column(LargeBinary)  # normalized NPZ (x float32, y)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        Index("ix_experiments_tenant_created", "tenant_id", "created_at"),
        UniqueConstraint("tenant_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    request: Mapped[dict[str, Any]]
    status: Mapped[ExperimentStatus] = mapped_column(StrEnumColumn(ExperimentStatus, 16))
    stage: Mapped[int] = mapped_column(Integer, default=0)  # bumped per stage (a fencing token)
    result: Mapped[dict[str, Any] | None]
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # the last event's sequence number; bumped by the triggers of migration 0006
    event_seq: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    note: Mapped[str | None] = mapped_column(Text)
    keep: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class JobEvent(Base):
    """One entry of a job's event stream (``status``, ``progress``, ``metric``).

    Written only by the database triggers of migration 0006, in the transaction of the
    change itself; ``seq`` is the job's own sequence (``jobs.event_seq``), the SSE cursor.
    """

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class ExperimentEvent(Base):
    """One entry of an experiment's own stream (``status``, ``progress``, ``child``); the
    experiment's SSE stream merges these with its children's job events."""

    __tablename__ = "experiment_events"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Worker(Base):
    """One live-or-dead worker process: the registry behind `no_worker`, metrics, dashboard.

    ``id`` is opaque and random per process; ``node`` (Celery's ``name@host``) is for
    operators only and never reaches a tenant.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    node: Mapped[str] = mapped_column(String(200))
    queues: Mapped[list[str]] = mapped_column(JSON)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(index=True)
    stopped_at: Mapped[datetime | None]
