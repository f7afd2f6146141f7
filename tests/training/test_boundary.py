"""The core is importable without the service stack; the API's helpers without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(statement: str, names: list[str]) -> dict[str, bool]:
    code = (f"import json, sys\n{statement}\n"
            f"print(json.dumps({{n: n in sys.modules for n in {names!r}}}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_training_core_does_not_import_the_service_stack() -> None:
    seen = loaded_after("import app.training.loop, app.training.runner",
                        ["fastapi", "sqlalchemy", "celery", "torch"])
    assert seen["torch"], "the probe must actually have imported the core"
    assert not seen["fastapi"] and not seen["sqlalchemy"] and not seen["celery"], seen


def test_shapes_and_spec_do_not_import_torch_or_sklearn() -> None:
    seen = loaded_after("import app.training.shapes, app.spec",
                        ["torch", "sklearn", "numpy", "pydantic"])
    assert seen["pydantic"], "the probe must actually have imported app.spec"
    assert not seen["torch"] and not seen["sklearn"], seen


def test_the_worker_main_process_does_not_import_torch() -> None:
    """Pool children fork from it; each imports torch itself in child_init."""
    seen = loaded_after("import worker.celery_app", ["torch", "celery", "worker.sinks"])
    assert seen["celery"] and seen["worker.sinks"], "the probe must import the worker app"
    assert not seen["torch"], "torch loaded before the fork slows every pool child"
