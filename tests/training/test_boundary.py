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


def test_results_and_the_aggregation_do_not_import_torch() -> None:
    """The worker's parent process and the API read summaries and rank trials."""
    seen = loaded_after("import app.training.results, app.training.metric_names, "
                        "app.training.experiments.aggregate, app.training.experiments.roles, "
                        "worker.pruning, app.services.checkpoint_files",
                        ["torch", "numpy", "pydantic", "worker.pruning"])
    assert seen["pydantic"] and seen["worker.pruning"], "the probe must import them"
    assert not seen["torch"], seen


def core_modules() -> list[str]:
    """Every module of the training core, experiments included."""
    core = ROOT / "app" / "training"
    return sorted("app.training." + ".".join(p.relative_to(core).with_suffix("").parts)
                  for p in core.rglob("*.py") if p.name != "__init__.py")


SERVICE_STACK = ["fastapi", "starlette", "sqlalchemy", "celery", "kombu", "app.db",
                 "app.models", "app.repository", "app.services", "app.routes", "app.main",
                 "worker"]


def test_every_core_module_is_service_free() -> None:
    modules = core_modules()
    assert "app.training.experiments.aggregate" in modules and len(modules) > 15
    seen = loaded_after("\n".join(f"import {m}" for m in modules), [*SERVICE_STACK, "torch"])
    assert seen["torch"], "the probe must actually have imported the core"
    assert not any(seen[name] for name in SERVICE_STACK), seen


def test_the_api_process_loads_neither_torch_nor_sklearn() -> None:
    seen = loaded_after("import app.main\napp.main.create_app()",
                        ["torch", "sklearn", "fastapi", "worker"])
    assert seen["fastapi"], "the probe must actually have built the app"
    assert not seen["torch"] and not seen["sklearn"] and not seen["worker"], seen


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions too)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top_level_imports(path: Path) -> set[str]:
    """The modules a file imports when it is itself imported (module level, not in functions;
    ``if TYPE_CHECKING:`` blocks never run)."""
    import ast

    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_module_under_app_imports_worker() -> None:
    """No exception: the composition root that starts workers is trainyard/cli.py."""
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p)
                                                  if m == "worker" or m.startswith("worker."))
                 for p in (ROOT / "app").rglob("*.py")}
    offenders = {path: mods for path, mods in offenders.items() if mods}
    assert offenders == {}, offenders


def test_the_composition_root_imports_app_and_worker_only_lazily() -> None:
    cli = ROOT / "trainyard" / "cli.py"
    imported = imported_modules(cli)
    assert {"worker.celery_app", "app.services"} <= imported, "probe"
    eager = {m for m in top_level_imports(cli) if m.split(".")[0] in ("app", "worker")}
    assert eager == set(), eager
    # SQL goes through the services (app.services.admin), never sessions or the repository
    assert not imported & {"app.db", "app.repository", "app.models", "sqlalchemy"}, imported


HEAVY = ["torch", "celery", "sqlalchemy", "fastapi", "alembic", "app", "worker"]


def test_the_cli_and_its_help_load_no_server_dependency() -> None:
    seen = loaded_after("import trainyard.cli\ntry:\n    trainyard.cli.main(['--help'])\n"
                        "except SystemExit:\n    pass", [*HEAVY, "argparse", "trainyard.cli"])
    assert seen["trainyard.cli"] and seen["argparse"], "the probe must have built the parser"
    assert not any(seen[name] for name in HEAVY), seen


def test_a_client_command_loads_no_server_dependency() -> None:
    """`trainyard jobs` against nothing listening: the client ran (and failed to connect)."""
    seen = loaded_after("import os\nos.environ['TRAINYARD_URL'] = 'http://127.0.0.1:9'\n"
                        "import trainyard.cli\nassert trainyard.cli.main(['jobs']) == 1",
                        [*HEAVY, "trainyard.client"])
    assert seen["trainyard.client"], "the probe must actually have run a client command"
    assert not any(seen[name] for name in HEAVY), seen


def test_the_client_needs_only_httpx_and_the_standard_library() -> None:
    seen = loaded_after("import trainyard.client", [*HEAVY, "pydantic", "httpx"])
    assert seen["httpx"], "the probe must actually have imported the client"
    assert not any(seen[name] for name in [*HEAVY, "pydantic"]), seen
    mods = {m.split(".")[0] for m in imported_modules(ROOT / "trainyard" / "client.py")}
    assert mods - set(sys.stdlib_module_names) == {"httpx", "httpx_sse", "stamina"}, mods
