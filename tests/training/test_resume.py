"""Exact resume: stop anywhere, resume in a new Trainer, end exactly where an unbroken run ends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.training import checkpoint as ckpt
from app.training.blobs import CorruptBlob as CorruptCheckpoint
from app.training.checkpoint import TrainState
from app.training.sink import MemorySink
from tests.training.helpers import (
    assert_same_weights,
    make_spec,
    metrics_without_timing,
    prepared,
    trainer,
    weights,
)

# Dropout, mixup and input noise use every RNG; reduce_on_plateau and early stopping carry
# state across epochs. In the unbroken run the plateau cuts the lr and early stopping picks
# and restores an epoch, both after some of the interruption points below.
RESUME: dict[str, Any] = {
    "data": {"source": {"synthetic": "moons", "n_samples": 300, "noise": 0.3}},
    "model": {"hidden": [32, 32], "dropout": 0.2},
    "optimizer": {"kind": "adam", "lr": 0.01},
    "schedule": {"kind": "reduce_on_plateau", "patience": 1, "factor": 0.5},
    "regularization": {"mixup": {"alpha": 0.4}, "input_noise": 0.05,
                       "early_stopping": {"patience": 4}},
    # every epoch end checkpointed, so any of them can be resumed from
    "training": {"epochs": 40, "batch_size": 32, "seed": 0, "device": "cpu",
                 "checkpoint_every_seconds": 0},
}


@pytest.fixture(scope="module")
def unbroken() -> dict[str, Any]:
    spec = make_spec(RESUME)
    sink = MemorySink()
    t = trainer(spec, sink)
    outcome = t.run()
    summary = outcome.summary
    assert summary is not None
    lrs = sink.series("train", "lr")
    best, stopped = summary.best_epoch, summary.stopped_epoch
    assert best is not None and stopped is not None
    cut = lrs.index(min(lrs)) + 1  # first epoch trained with a reduced lr
    # the scenario is only meaningful if its stateful parts act after the stop points used
    assert summary.early_stopped and summary.restored_best_weights
    assert 6 <= best < cut <= stopped < 40 and lrs[0] > min(lrs)
    assert t.steps == 7
    return {"spec": spec, "reports": metrics_without_timing(sink.reports),
            "weights": weights(t.model), "summary": summary, "steps": t.steps, "sink": sink,
            "best": best}


@pytest.mark.parametrize(("offset", "step"), [
    (-4, 3),   # mid-epoch, before the best epoch and the lr cut
    (-4, 0),   # at an epoch boundary (the next epoch's permutation already drawn)
    (1, 5),    # mid-epoch after the best epoch: the best weights must survive the stop
])
def test_resume_mid_run_matches_the_unbroken_run(unbroken: dict[str, Any], offset: int,
                                                 step: int) -> None:
    spec, steps = unbroken["spec"], unbroken["steps"]
    epoch = unbroken["best"] + offset  # completed epochs at the stop
    data = prepared(spec)
    first = MemorySink(stop_after=epoch * steps + step + 1)
    outcome = trainer(spec, first, data).run()
    assert (outcome.status, outcome.reason) == ("stopped", "preempted")
    assert outcome.checkpoint is not None and outcome.summary is None
    state = ckpt.unpack(outcome.checkpoint)[1]
    assert (state["epoch"], state["step"]) == (epoch, step) == (outcome.epoch, outcome.step)
    assert len(first.reports) == epoch

    second = MemorySink()
    resumed = trainer(spec, second, data)  # a NEW trainer: nothing carried but the blob
    final = resumed.run(resume=outcome.checkpoint)
    assert final.status == "completed"
    assert metrics_without_timing(first.reports + second.reports) == unbroken["reports"]
    assert_same_weights(weights(resumed.model), unbroken["weights"])
    assert final.summary == unbroken["summary"]


def test_resume_from_an_epoch_checkpoint(unbroken: dict[str, Any]) -> None:
    spec, reports = unbroken["spec"], unbroken["sink"].reports
    epoch = unbroken["best"] + 1  # past the best epoch, before the lr cut
    blob = reports[epoch - 1].checkpoint
    assert blob is not None
    state = ckpt.unpack(blob)[1]
    assert (state["epoch"], state["step"]) == (epoch, 0)
    sink = MemorySink()
    resumed = trainer(spec, sink)
    summary = resumed.run(resume=blob).summary
    assert metrics_without_timing(sink.reports) == unbroken["reports"][epoch:]
    assert_same_weights(weights(resumed.model), unbroken["weights"])
    assert summary == unbroken["summary"]


def test_resume_from_the_early_stopping_checkpoint_trains_no_further(
        unbroken: dict[str, Any]) -> None:
    """A worker that dies after reporting the early-stopping epoch must not train on."""
    spec, reports = unbroken["spec"], unbroken["sink"].reports
    blob = reports[-1].checkpoint
    assert blob is not None
    assert ckpt.unpack(blob)[1]["stopped_early_at"] == unbroken["summary"].stopped_epoch
    sink = MemorySink()
    resumed = trainer(spec, sink)
    outcome = resumed.run(resume=blob)
    assert outcome.status == "completed" and sink.reports == [] and sink.calls == 0
    assert outcome.summary == unbroken["summary"]
    assert_same_weights(weights(resumed.model), unbroken["weights"])


def test_stopping_twice_still_resumes_exactly(unbroken: dict[str, Any]) -> None:
    spec, steps = unbroken["spec"], unbroken["steps"]
    data = prepared(spec)
    sinks = [MemorySink(stop_after=2 * steps + 4), MemorySink(stop_after=5 * steps + 2),
             MemorySink()]
    blob = None
    for sink in sinks:
        t = trainer(spec, sink, data)
        outcome = t.run(resume=blob)
        blob = outcome.checkpoint
    assert outcome.status == "completed"
    reports = [r for sink in sinks for r in sink.reports]
    assert metrics_without_timing(reports) == unbroken["reports"]
    assert_same_weights(weights(t.model), unbroken["weights"])


def test_flipped_byte_fails_the_checksum() -> None:
    spec = make_spec(training={"epochs": 1})
    outcome = trainer(spec, MemorySink(stop_after=2)).run()
    blob = outcome.checkpoint
    assert blob is not None
    digest = hashlib.sha256(blob).hexdigest()
    tensors, state = ckpt.unpack(blob, digest)  # the intact blob loads
    assert state["step"] == 1 and tensors
    for position in (10, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[position] ^= 0x01
        with pytest.raises(CorruptCheckpoint):
            ckpt.unpack(bytes(bad), digest)
    with pytest.raises(CorruptCheckpoint):
        ckpt.unpack(blob[: len(blob) // 2])  # truncated: unreadable even without a checksum


FIXTURES = Path(__file__).parent / "data"


def assert_same_json(got: Any, want: Any, path: str = "summary") -> None:
    """Equal, but for floats within 1e-6 of each other (relative)."""
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_same_json(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_json(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def test_a_checkpoint_written_before_train_state_resumes_to_the_same_end() -> None:
    """A mid-epoch checkpoint written by the Trainer before the loop was split (its
    pack()), with best weights, plateau state, mixup RNG: today's loop resumes it and ends
    with the weights and the summary of the old code's unbroken run."""
    run = json.loads((FIXTURES / "v1_run.json").read_text())
    blob = (FIXTURES / "v1_mid_epoch.safetensors").read_bytes()
    state = TrainState.from_blob(blob)
    assert (state.epoch, state.step) == (3, 2) and state.best_weights is not None
    spec = make_spec(run["spec"])
    t = trainer(spec)
    outcome = t.run(resume=blob)
    assert outcome.summary is not None
    expected = load_file(str(FIXTURES / "v1_final_weights.safetensors"))
    if run["torch"] == torch.__version__:  # bit-exact on the torch that wrote it
        assert_same_weights(weights(t.model), expected)
        # the weights are; the final evaluation's float32 reductions may round their last
        # bit differently on another CPU (its vector width), so its figures get 1e-6
        assert_same_json(outcome.summary.to_json(), run["summary"])
    else:
        for name, value in weights(t.model).items():
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-6)
        assert outcome.summary.to_json().keys() == run["summary"].keys()


@pytest.mark.parametrize("keep_every", [1, 2, 3])
def test_per_step_figures_stored_in_pieces_resume_exactly(
        unbroken: dict[str, Any], keep_every: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-step losses and counts are stored every KEEP_EVERY_STEPS steps and at a
    stop; pieces of any size give the unbroken run's train loss and accuracy, stopped
    mid-epoch (step 5 of 7) or not."""
    monkeypatch.setattr("app.training.loop.KEEP_EVERY_STEPS", keep_every)
    test_resume_mid_run_matches_the_unbroken_run(unbroken, 1, 5)
    sink = MemorySink()
    trainer(unbroken["spec"], sink).run()
    assert metrics_without_timing(sink.reports) == unbroken["reports"]
