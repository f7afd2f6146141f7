"""Checkpoints by wall time on real processes: a worker killed between two checkpoints
loses the epochs after the last one, and the next attempt recomputes them bit for bit
(every non-timing metric row and the final weights equal an uninterrupted run's); the
``best`` download serves the best epoch's weights when that epoch's own checkpoint was
never written."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from safetensors.numpy import load as np_load

from tests.conftest import Stack, tiny_spec, wait_for, wait_job
from tests.integration.test_distributed import slow_digits
from tests.reliability.test_faults import TIMING, assert_complete

pytestmark = pytest.mark.reliability

EPOCHS = 60


def progress(engine: sa.Engine, job_id: str) -> tuple[int, int]:
    """(the newest checkpoint's epoch, the newest metric row's epoch); 0 when none."""
    with engine.connect() as conn:
        ckpt = conn.execute(sa.text("SELECT MAX(epoch) FROM checkpoints WHERE job_id = :j"),
                            {"j": job_id}).scalar()
        metric = conn.execute(sa.text("SELECT MAX(epoch) FROM metrics WHERE job_id = :j"),
                              {"j": job_id}).scalar()
    return ckpt or 0, metric or 0


def between_checkpoints(engine: sa.Engine, job_id: str) -> tuple[int, int] | None:
    """A moment with a checkpoint written and two epochs' metric rows past it."""
    ckpt, metric = progress(engine, job_id)
    return (ckpt, metric) if ckpt >= 1 and ckpt + 2 <= metric <= EPOCHS - 3 else None


def epochs_of_attempt(engine: sa.Engine, job_id: str, attempt: int) -> set[int]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT DISTINCT epoch FROM metrics WHERE job_id = :j "
                                     "AND attempt = :a"), {"j": job_id, "a": attempt}).all()
    return {r.epoch for r in found}


def download(http: httpx.Client, job_id: str, ref: str) -> tuple[dict[str, Any], str]:
    """A checkpoint's weights and the epoch the file says they are from."""
    response = http.get(f"/v1/jobs/{job_id}/checkpoints/{ref}")
    assert response.status_code == 200, response.text
    header_size = int.from_bytes(response.content[:8], "little")
    meta = json.loads(response.content[8 : 8 + header_size])["__metadata__"]
    return np_load(response.content), meta["epoch"]


def assert_same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs"


def test_a_kill_between_checkpoints_recomputes_the_lost_epochs_exactly(
        distributed: Stack, postgres_url: str) -> None:
    spec = slow_digits(epochs=EPOCHS)
    spec["training"]["checkpoint_every_seconds"] = 1.0  # every few epochs, by wall time
    engine = sa.create_engine(postgres_url)
    distributed.start_worker("w0")
    try:
        with distributed.client() as http:
            job_id = http.post("/v1/jobs", json=spec).json()["id"]
            wait_for(lambda: between_checkpoints(engine, job_id), 240, 0.03,
                     "metric rows two epochs past a checkpoint")
            distributed.signal("w0", signal.SIGKILL)  # the worker and its pool child
            distributed.procs.pop("w0")
            kept, reached = progress(engine, job_id)  # nothing more lands after the kill
            assert kept < reached, "the kill must fall between two checkpoints"
            distributed.start_worker("w1")
            killed = wait_job(http, job_id, timeout=300)
            assert killed["status"] == "succeeded" and killed["attempt"] == 2, killed
            # attempt 2 resumed from the checkpoint and re-wrote the epochs lost after it
            assert min(epochs_of_attempt(engine, job_id, 2)) == kept + 1
            assert set(range(kept + 1, reached + 1)) <= epochs_of_attempt(engine, job_id, 2)

            twin_id = http.post("/v1/jobs", json=spec).json()["id"]
            twin = wait_job(http, twin_id, timeout=300)
            assert twin["status"] == "succeeded" and twin["attempt"] == 1, twin
            a = assert_complete(postgres_url, job_id, EPOCHS)
            b = assert_complete(postgres_url, twin_id, EPOCHS)
            assert {k: v for k, v in a.items() if k[2] not in TIMING} == {
                k: v for k, v in b.items() if k[2] not in TIMING}
            for ref in ("latest", "best"):
                (wa, ea), (wb, eb) = download(http, job_id, ref), download(http, twin_id, ref)
                assert ea == eb
                assert_same_tensors(wa, wb)
    finally:
        engine.dispose()


def test_best_is_served_when_the_best_epochs_own_checkpoint_was_never_written(
        embedded: Stack) -> None:
    """One job checkpoints only at its end, its twin at every epoch (so the twin's `best`
    is the best epoch's own checkpoint): both `best` downloads are the same weights."""
    spec = tiny_spec(model__dropout=0.3, optimizer__lr=0.1, training__epochs=12,
                     training__seed=0, data__source__noise=0.3)  # its best epoch is 9
    embedded.start_worker("w0")
    with embedded.client() as http:
        ids = []
        for seconds in (1e9, 0):
            spec["training"]["checkpoint_every_seconds"] = seconds
            ids.append(http.post("/v1/jobs", json=spec).json()["id"])
        once, every = (wait_job(http, i, timeout=180) for i in ids)
        assert once["status"] == every["status"] == "succeeded"
        best = once["summary"]["best_epoch"]
        assert best == every["summary"]["best_epoch"]
        assert best < 12, "the scenario needs a best epoch that is not the last"
        listed = http.get(f"/v1/jobs/{once['id']}/checkpoints").json()
        assert [c["epoch"] for c in listed] == [12]  # no checkpoint at the best epoch
        listed = http.get(f"/v1/jobs/{every['id']}/checkpoints").json()
        assert sorted(c["epoch"] for c in listed) == [best, 12]
        (w_once, e_once), (w_every, e_every) = (download(http, once["id"], "best"),
                                                download(http, every["id"], "best"))
        assert e_once == e_every == str(best)
        assert_same_tensors(w_once, w_every)
        w_last, _ = download(http, once["id"], "latest")
        assert any((w_last[k] != w_once[k]).any() for k in w_once), "best must not be the last"
