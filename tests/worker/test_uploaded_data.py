"""Uploaded datasets on the real execution path (in-process, SQLite): the row shape stored at
upload reaches the core, and the worker reads only the job's own tenant's datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.config import Settings
from app.services import datasets
from app.services import jobs as job_service
from app.spec import JobSpec
from tests.worker.conftest import add_tenants, quiet_broker
from worker.execution import execute

# 16 features per row, viewed as a 1x4x4 image once input_shape is given at upload.
CSV = ("label," + ",".join(f"p{i}" for i in range(16)) + "\n" + "".join(
    f"{r % 2}," + ",".join(str((r * 7 + i * (1 + r % 2)) % 5) for i in range(16)) + "\n"
    for r in range(120))).encode()
CNN = {"model": {"kind": "cnn", "channels": [4], "kernel_size": 3, "norm": "none"},
       "optimizer": {"kind": "adam", "lr": 0.01}, "training": {"epochs": 2, "batch_size": 16}}


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sessions: sessionmaker[Session]) -> tuple[sessionmaker[Session], Settings]:
    quiet_broker(monkeypatch)
    add_tenants(sessions, "a", "b")
    return sessions, Settings(home=tmp_path)


def upload(env: tuple[Any, Settings], tenant: str, **form: Any) -> str:
    sessions, settings = env
    row = datasets.build_dataset(content=CSV, filename="img.csv", fmt="csv", target="label",
                                 task="auto", name=None, limits=settings.limits, **form)
    with sessions() as s:
        stored, _ = datasets.create(s, tenant_id=tenant, dataset=row, idempotency_key=None,
                                    request_hash="h", limits=settings.limits)
        return stored.id


def run(env: tuple[Any, Settings], tenant: str, spec: dict[str, Any]) -> Any:
    sessions, settings = env
    with sessions() as s:
        job, _ = job_service.submit(s, tenant_id=tenant, spec=JobSpec.model_validate(spec),
                                    settings=settings, idempotency_key=None)
    outcome = execute(job.id, sessions, settings)
    with sessions() as s:
        return outcome, repo.get_job_any_tenant(s, job.id)


def test_cnn_on_an_upload_uses_the_input_shape_given_at_upload(env: Any) -> None:
    ds = upload(env, "a", input_shape="[1, 4, 4]")
    outcome, job = run(env, "a", {**CNN, "data": {"source": {"dataset": ds}}})
    assert outcome == "succeeded", job.error_message
    assert job.summary["epochs_completed"] == 2


def test_the_worker_reads_only_the_jobs_own_tenants_dataset(env: Any) -> None:
    """A job row naming another tenant's dataset (one the API would have refused) fails as if
    the dataset did not exist: the worker's read is scoped to the job's tenant."""
    sessions, settings = env
    theirs = upload(env, "b", input_shape="[1, 4, 4]")
    spec = JobSpec.model_validate({**CNN, "data": {"source": {"dataset": theirs}}})
    with sessions() as s:
        info = job_service.validate(s, "b", spec, settings)
        forged = job_service.new_job("a", spec, info, settings)
        repo.add_job(s, forged)
        s.commit()
    assert execute(forged.id, sessions, settings) == "failed:data"
    with sessions() as s:
        job = repo.get_job_any_tenant(s, forged.id)
        assert job is not None and "no longer exists" in (job.error_message or "")
