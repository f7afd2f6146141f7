"""One call that runs a spec end to end: load, prepare on the device, train."""

from __future__ import annotations

from app import spec as s
from app.training.data import ArrayLoader, load_arrays, prepare
from app.training.loop import Trainer, resolve_device
from app.training.results import Outcome
from app.training.sink import Sink


def run_spec(spec: s.JobSpec, sink: Sink, resume: bytes | None = None,
             uploaded: ArrayLoader | None = None, task: s.Task | None = None) -> Outcome:
    device = resolve_device(spec.training.device)
    arrays = load_arrays(spec.data.source, uploaded, task)
    data = prepare(spec.data, arrays, device, keep_dev=spec.training.record_predictions)
    return Trainer(spec, data, sink, device).run(resume)
