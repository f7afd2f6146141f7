"""Writes the v1_* fixtures of tests/training/test_resume.py: a mid-epoch checkpoint of the
Trainer as it was before TrainState (commit 99f9c3e), and what that code's unbroken run
ended with. Not run by the tests; it was run once against the old core:

    git archive 99f9c3e app tests | tar -x -C /tmp/old
    cp tests/training/data/make_v1_fixtures.py /tmp/old
    PYTHONPATH=/tmp/old python /tmp/old/make_v1_fixtures.py tests/training/data
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file as save

from app.training.sink import MemorySink
from tests.training.helpers import make_spec, trainer, weights

out = Path(sys.argv[1])
raw = {"data": {"source": {"synthetic": "moons", "n_samples": 120, "noise": 0.25}},
       "model": {"kind": "mlp", "hidden": [8]},
       "optimizer": {"kind": "adam", "lr": 0.02},
       "schedule": {"kind": "reduce_on_plateau", "monitor": "val_loss", "patience": 1},
       "regularization": {"early_stopping": {"monitor": "val_loss", "patience": 50,
                                             "restore_best": True}, "mixup": {"alpha": 0.4}},
       "training": {"epochs": 6, "batch_size": 16, "seed": 3, "device": "cpu"}}
spec = make_spec(raw)
t = trainer(spec)
unbroken = t.run()
final = weights(t.model)
stop = trainer(spec, MemorySink(stop_after=3 * t.steps + 2 + 1)).run()
assert stop.status == "stopped"
(out / "v1_mid_epoch.safetensors").write_bytes(stop.checkpoint)
save({k: v.contiguous() for k, v in final.items()}, str(out / "v1_final_weights.safetensors"))
(out / "v1_run.json").write_text(json.dumps(
    {"spec": raw, "summary": unbroken.summary, "torch": torch.__version__}, indent=1,
    sort_keys=True))
print(t.steps, len(stop.checkpoint))
