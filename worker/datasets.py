"""A tenant's uploaded datasets as the core's ``ArrayLoader``: one home for the job runner
(worker/execution.py) and the experiment orchestrator (worker/orchestrate.py)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.services.datasets import stored_arrays
from app.training.data import ArrayLoader, DataError, Uploaded


def dataset_loader(sessions: sessionmaker[Session], tenant_id: str) -> ArrayLoader:
    """Reads uploads of ``tenant_id`` only (the job's or experiment's owner), with the row
    shape stored at upload."""
    def load(dataset_id: str) -> Uploaded:
        with sessions() as session:
            row = repo.dataset_with_blob(session, tenant_id, dataset_id)
        if row is None:
            raise DataError(f"dataset {dataset_id} no longer exists")
        x, y = stored_arrays(row.blob)
        shape = (row.info or {}).get("input_shape")
        return Uploaded(x, y, tuple(shape) if shape else None, row.task)  # type: ignore[arg-type]

    return load
