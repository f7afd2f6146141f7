"""All SQL goes through the repository modules (app/repository.py and the ones split from
it by subject): no other module of app/, worker/ or trainyard/ builds a statement or
executes one (app/db.py owns the engine, app/models.py the tables)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the repository, and the repository modules split from it by subject (events, model
# exports, a run's lifecycle): services decide, only these build or run statements
SQL_HOMES = {ROOT / "app" / name for name in (
    "repository.py", "event_store.py", "export_repository.py", "lifecycle_repository.py",
    "db.py", "models.py")}
BUILDERS = {"select", "insert", "update", "delete", "text", "func", "and_", "or_", "case",
            "literal", "exists", "postgresql", "sqlite"}
RUNNERS = {"execute", "scalar", "scalars", "query", "get"}  # Session methods that read SQL


def sql_uses(path: Path) -> list[str]:
    """What a file does with SQL itself: statement builders it imports, session calls."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"import {a.name}" for a in node.names if a.name in BUILDERS]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in RUNNERS and isinstance(node.func.value, ast.Name)
              and node.func.value.id in ("session", "s", "conn", "connection")):
            found.append(f"{node.func.value.id}.{node.func.attr}()")
    return found


def test_the_scan_sees_sql() -> None:
    assert "import select" in sql_uses(ROOT / "app" / "repository.py")
    assert "session.execute()" in sql_uses(ROOT / "app" / "repository.py")


def test_no_module_outside_the_repository_touches_sql() -> None:
    files = [p for d in ("app", "worker", "trainyard") for p in (ROOT / d).rglob("*.py")]
    offenders = {str(p.relative_to(ROOT)): uses for p in files
                 if p not in SQL_HOMES and (uses := sql_uses(p))}
    assert offenders == {}, offenders
