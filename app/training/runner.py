"""One call that runs a spec end to end: load, prepare on the device, train."""

from __future__ import annotations

import torch

from app import spec as s
from app.training.data import ArrayLoader, DataError, load_arrays, prepare
from app.training.loop import Trainer, resolve_device
from app.training.results import Outcome
from app.training.sink import Sink
from app.training.warm_start import source_weights, warm_start

# An MLP step below this many multiply-adds (parameters x batch rows) runs faster on one
# thread than on two OpenMP threads that sleep between regions (the worker's
# OMP_WAIT_POLICY=PASSIVE): waking the second thread for each small op costs more than it
# saves. Measured per step, 1 against 2 threads (bench/README.md 2e): digits 64-256-256 at
# batch 64 (5 M) 1,035 against 2,295 us; 100-512-512 at 32 (10 M) 1,588 against 3,013; at
# batch 256 (82 M) two threads win, 7,260 against 8,303 us.
SMALL_STEP_MACS = 30_000_000


def run_spec(spec: s.JobSpec, sink: Sink, resume: bytes | None = None,
             uploaded: ArrayLoader | None = None, task: s.Task | None = None,
             init_blob: bytes | None = None, cpu_threads: int | None = None) -> Outcome:
    """``init_blob``: the source checkpoint of ``model.init_from`` (loaded before a resume,
    which then replaces the weights; the frozen parameters stay frozen either way).
    ``cpu_threads``: the torch threads this process may use (the worker's share of the
    cores); a small step then runs on one (``step_threads``), and the count is restored."""
    device = resolve_device(spec.training.device)
    arrays = load_arrays(spec.data.source, uploaded, task)
    data = prepare(spec.data, arrays, device, keep_dev=spec.training.record_predictions,
                   task=spec.task)
    trainer = Trainer(spec, data, sink, device)
    init = spec.model.init_from
    if init is not None:
        if init_blob is None:
            raise DataError("model.init_from: the source checkpoint was not provided")
        warm_start(trainer.model, source_weights(init_blob, init.sha256), init)
    if cpu_threads is None:
        return trainer.run(resume)
    torch.set_num_threads(step_threads(trainer, cpu_threads))
    try:
        return trainer.run(resume)
    finally:
        torch.set_num_threads(cpu_threads)


def step_threads(trainer: Trainer, available: int) -> int:
    """One thread for a small MLP step on the CPU, else all that are available."""
    if available <= 1 or trainer.device.type != "cpu" or trainer.spec.model.kind != "mlp":
        return available
    parameters = sum(p.numel() for p in trainer.model.parameters())
    return 1 if parameters * trainer.batch_size < SMALL_STEP_MACS else available
