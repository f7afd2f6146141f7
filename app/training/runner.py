"""One call that runs a spec end to end: load, prepare on the device, train."""

from __future__ import annotations

from app import spec as s
from app.training.data import ArrayLoader, DataError, load_arrays, prepare
from app.training.loop import Trainer, resolve_device
from app.training.results import Outcome
from app.training.sink import Sink
from app.training.warm_start import source_weights, warm_start


def run_spec(spec: s.JobSpec, sink: Sink, resume: bytes | None = None,
             uploaded: ArrayLoader | None = None, task: s.Task | None = None,
             init_blob: bytes | None = None) -> Outcome:
    """``init_blob``: the source checkpoint of ``model.init_from`` (loaded before a resume,
    which then replaces the weights; the frozen parameters stay frozen either way)."""
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
    return trainer.run(resume)
