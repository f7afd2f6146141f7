"""The export task in-process on SQLite: pending in the success write, stored once with its
sha256, a mismatch recorded as a failure (no graph stored), re-sent by the reaper when stale."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import export_repository as exports
from app import repository as repo
from app.clock import utcnow
from app.config import Settings
from app.models import Job, ModelExport
from app.services import reaper
from app.services.jobs import new_job
from app.spec import JobSpec
from app.training import shapes
from app.training.blobs import sha256
from app.training.manifest import ModelManifest
from tests.conftest import tiny_spec
from worker import export as export_task
from worker.execution import execute


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, lease_seconds=30)


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The export messages sent, instead of a broker."""
    messages: list[tuple[str, str]] = []
    monkeypatch.setattr("worker.execution.enqueue_export", lambda *a: messages.append(a))
    monkeypatch.setattr("app.services.reaper.enqueue_export", lambda *a: messages.append(a))
    return messages


def succeeded_job(sessions: sessionmaker[Session], settings: Settings, **over: Any) -> Job:
    spec = JobSpec.model_validate(tiny_spec(**over))
    job = new_job("t1", spec, shapes.synthetic_info(spec.data.source), settings)  # type: ignore[arg-type]
    with sessions() as s:
        repo.ensure_tenant(s, "t1", utcnow())
        s.add(job)
        s.commit()
    assert execute(job.id, sessions, settings) == "succeeded"
    return reload(sessions, job.id)


def reload(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as s:
        job = repo.get_job_any_tenant(s, job_id)
        assert job is not None
        return job


def stored(sessions: sessionmaker[Session], job_id: str) -> ModelExport | None:
    with sessions() as s:
        return exports.with_blobs(s, job_id)


def test_a_succeeded_job_is_pending_then_exported_once(
        sessions: sessionmaker[Session], settings: Settings, sent: list[tuple[str, str]]) -> None:
    job = succeeded_job(sessions, settings)
    assert job.model_status == "pending" and sent == [(job.id, job.queue)]
    assert export_task.export_model(job.id, sessions, settings) == "ready"
    row = stored(sessions, job.id)
    assert row is not None and reload(sessions, job.id).model_status == "ready"
    assert row.onnx_sha256 == sha256(row.onnx) and row.weights_sha256 == sha256(row.weights)
    card = ModelManifest.model_validate(row.manifest)
    assert card.job_id == job.id and card.feature_names == ["x0", "x1"] and card.classes == [0, 1]
    assert card.test_metrics == job.summary["test"]  # type: ignore[index]
    assert card.weights_epoch == 5 and card.check.max_abs_difference <= card.check.tolerance
    # a duplicate message (or the reaper's re-send) finds it ended and stores nothing
    assert export_task.export_model(job.id, sessions, settings) == "skipped"


def test_a_graph_that_differs_from_torch_is_not_stored_and_the_job_says_why(
        sessions: sessionmaker[Session], settings: Settings, sent: list[tuple[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    job = succeeded_job(sessions, settings)
    monkeypatch.setattr("app.training.export.max_difference", lambda *a: 0.25)
    assert export_task.export_model(job.id, sessions, settings) == "failed"
    after = reload(sessions, job.id)
    assert after.model_status == "failed" and stored(sessions, job.id) is None
    assert "differs from the torch model by 0.25" in (after.model_error or "")


def test_the_best_epochs_weights_are_exported_when_the_run_restored_them(
        sessions: sessionmaker[Session], settings: Settings, sent: list[tuple[str, str]]) -> None:
    job = succeeded_job(sessions, settings, training__epochs=12, optimizer__lr=0.2,
                        regularization={"early_stopping": {"patience": 2,
                                                           "restore_best": True}})
    assert export_task.export_model(job.id, sessions, settings) == "ready"
    row = stored(sessions, job.id)
    assert row is not None
    summary = job.summary or {}
    expected = summary["best_epoch"] if summary["restored_best_weights"] else 12
    assert row.manifest["weights_epoch"] == expected


def test_the_reaper_resends_an_export_left_pending(
        sessions: sessionmaker[Session], settings: Settings, sent: list[tuple[str, str]]) -> None:
    job = succeeded_job(sessions, settings)
    sent.clear()
    assert reaper.resend_stale_exports(sessions, settings) == []  # pending, but not stale
    with sessions() as s:
        s.get(Job, job.id).model_updated_at = utcnow() - timedelta(hours=1)  # type: ignore[union-attr]
        s.commit()
    assert reaper.resend_stale_exports(sessions, settings) == [job.id]
    assert sent == [(job.id, job.queue)]
    assert reaper.resend_stale_exports(sessions, settings) == []  # its clock restarted


def test_an_experiment_trial_is_not_exported_unless_asked(
        sessions: sessionmaker[Session], settings: Settings, sent: list[tuple[str, str]]) -> None:
    from worker.execution import exported_on_success

    trial = Job(role={"trial": 0, "params": {}})
    member, final = Job(role={"member": 1}), Job(role={"final": True, "params": {}})
    assert not exported_on_success(trial)
    assert exported_on_success(member) and exported_on_success(final)
    assert exported_on_success(Job(role=None))
