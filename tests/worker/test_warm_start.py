"""Warm starts on the real submit and execution path (in-process, SQLite): the source is the
tenant's own succeeded job, its checkpoint must fit tensor by tensor (422 naming them), its
sha256 is pinned at submit, and the worker trains from exactly those weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load as np_load
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.config import Settings
from app.services import jobs as job_service
from app.spec import JobSpec
from app.training.blobs import weights_only
from app.validation import SpecRejected
from tests.worker.conftest import add_tenants, quiet_broker
from worker.execution import execute

BLOBS = {"source": {"synthetic": "blobs", "n_samples": 240, "n_features": 2, "centers": 3,
                    "cluster_std": 2.0}}
PRETRAIN: dict[str, Any] = {
    "data": BLOBS, "model": {"kind": "mlp", "hidden": [16, 16]},
    "optimizer": {"kind": "adam", "lr": 0.01},
    "training": {"epochs": 8, "batch_size": 32, "device": "cpu"}}
Env = tuple[sessionmaker[Session], Settings]


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sessions: sessionmaker[Session]) -> Env:
    quiet_broker(monkeypatch)
    add_tenants(sessions, "a", "b")
    return sessions, Settings(home=tmp_path)


def submit(env: Env, tenant: str, spec: dict[str, Any]) -> str:
    sessions, settings = env
    with sessions() as s:
        job, _ = job_service.submit(s, tenant_id=tenant, spec=JobSpec.model_validate(spec),
                                    settings=settings, idempotency_key=None)
        return job.id


def run(env: Env, tenant: str, spec: dict[str, Any]) -> Any:
    job_id = submit(env, tenant, spec)
    assert execute(job_id, env[0], env[1]) == "succeeded"
    with env[0]() as s:
        return repo.get_job_any_tenant(s, job_id)


def final_weights(env: Env, tenant: str, job_id: str) -> dict[str, Any]:
    with env[0]() as s:
        return weights_only(np_load(job_service.checkpoint(s, tenant, job_id, "latest").blob))


def warm(job_id: str, **init: Any) -> dict[str, Any]:
    return {"model": {"kind": "mlp", "hidden": [16, 16], "init_from": {"job": job_id, **init}}}


def refusal(env: Env, tenant: str, spec: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(SpecRejected) as refused:
        submit(env, tenant, spec)
    return [(".".join(map(str, p.loc)), p.msg) for p in refused.value.problems]


def test_fine_tuning_starts_from_the_pinned_weights_and_keeps_frozen_ones(env: Env) -> None:
    source = run(env, "a", PRETRAIN)
    moons = {"data": {"source": {"synthetic": "moons", "n_samples": 200}},
             "training": {"epochs": 3, "batch_size": 32, "device": "cpu"}}
    tuned = run(env, "a", warm(source.id, freeze=["blocks.0."]) | moons)  # the best epoch's
    with env[0]() as s:
        best = job_service.checkpoint(s, "a", source.id, "best")
    assert tuned.spec["model"]["init_from"]["sha256"] == best.sha256
    before, after = weights_only(np_load(best.blob)), final_weights(env, "a", tuned.id)
    assert (after["blocks.0.linear.weight"] == before["blocks.0.linear.weight"]).all()
    assert not (after["blocks.1.linear.weight"] == before["blocks.1.linear.weight"]).all()
    assert after["head.weight"].shape == (2, 16) and before["head.weight"].shape == (3, 16)


def test_a_warm_start_with_a_tiny_lr_ends_where_its_source_ended(env: Env) -> None:
    """head: keep on the same data and a step size of 1e-9: the source's test loss, which a
    fresh model with the same step size is far from."""
    source = run(env, "a", PRETRAIN)
    still = {"optimizer": {"kind": "adam", "lr": 1e-9}, "training": {"epochs": 1}}
    tuned = run(env, "a", PRETRAIN | still | warm(source.id, head="keep", checkpoint="latest"))
    fresh = run(env, "a", PRETRAIN | still)
    loss = source.summary["test"]["loss"]
    assert tuned.summary["test"]["loss"] == pytest.approx(loss, rel=1e-4)
    assert fresh.summary["test"]["loss"] > 1.5 * loss


def test_what_cannot_start_a_job_is_refused_naming_the_field(env: Env) -> None:
    source = run(env, "a", PRETRAIN)
    # another tenant's job answers exactly like a job that does not exist
    assert refusal(env, "b", PRETRAIN | warm(source.id)) == [
        ("model.init_from.job", f"no job '{source.id}'")]
    assert refusal(env, "a", PRETRAIN | warm("job_nope")) == [
        ("model.init_from.job", "no job 'job_nope'")]
    queued = submit(env, "a", PRETRAIN)
    [(loc, msg)] = refusal(env, "a", PRETRAIN | warm(queued))
    assert loc == "model.init_from.job" and "is queued" in msg
    wider = PRETRAIN | {"model": {"kind": "mlp", "hidden": [32, 16],
                                  "init_from": {"job": source.id}}}
    [(loc, msg)] = refusal(env, "a", wider)
    assert loc == "model.init_from.job" and "at 3 tensors" in msg
    assert "blocks.0.linear.weight (this model [32, 2], checkpoint [16, 2])" in msg
    moons = {"data": {"source": {"synthetic": "moons", "n_samples": 200}}}
    [(loc, msg)] = refusal(env, "a", PRETRAIN | moons | warm(source.id, head="keep"))
    assert "head.weight (this model [2, 16], checkpoint [3, 16])" in msg
    assert refusal(env, "a", PRETRAIN | warm(source.id, freeze=["blocks.0.", "encoder."]))[0][0] \
        == "model.init_from.freeze.1"
    assert refusal(env, "a", PRETRAIN | warm(source.id, sha256="0" * 64))[0][0] == \
        "model.init_from.sha256"


def test_the_worker_refuses_weights_other_than_the_pinned_ones(env: Env) -> None:
    sessions, settings = env
    source = run(env, "a", PRETRAIN)
    spec = JobSpec.model_validate(PRETRAIN | warm(source.id))
    with sessions() as s:
        info = job_service.validate(s, "a", spec, settings)
        assert spec.model.init_from is not None
        spec.model.init_from.sha256 = "f" * 64  # a row whose pin no checkpoint has
        forged = job_service.new_job("a", spec, info, settings)
        repo.add_job(s, forged)
        s.commit()
    assert execute(forged.id, sessions, settings) == "failed:data"
    with sessions() as s:
        job = repo.get_job_any_tenant(s, forged.id)
        assert job is not None and "pinned" in (job.error_message or "")
