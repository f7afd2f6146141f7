"""`pip install trainyard` with no extras is the client and CLI only: installed into a fresh
virtualenv, it brings none of the server's heavy dependencies, and its CLI works against a
running server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack, tiny_spec

pytestmark = pytest.mark.integration
SERVER_ONLY = ("torch", "celery", "sqlalchemy", "numpy", "fastapi", "onnxruntime", "alembic")


def light_venv(where: Path) -> Path:
    """A copy of the source tree installed without extras (not editable, so the build
    happens in the copy and leaves the checkout clean)."""
    source = where / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("app", "worker", "trainyard"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(source)], check=True, timeout=600)
    return venv


def test_the_bare_install_is_the_light_client_and_its_cli_works(
        embedded: Stack, tmp_path: Path) -> None:
    venv = light_venv(tmp_path)
    python = str(venv / "bin" / "python")
    probe = (f"import importlib.util, json; print(json.dumps([m for m in {SERVER_ONLY!r} "
             "if importlib.util.find_spec(m) is not None]))")
    installed = json.loads(subprocess.run([python, "-c", probe], capture_output=True, text=True,
                                          check=True, timeout=60).stdout)
    assert installed == [], f"the bare install pulled server dependencies: {installed}"

    with embedded.client() as http:
        job_id = http.post("/v1/jobs", json=tiny_spec(name="from-light")).json()["id"]
    env = {**os.environ, "TRAINYARD_URL": embedded.url, "TRAINYARD_API_KEY": embedded.key}
    env.pop("PYTHONPATH", None)
    shown = subprocess.run([str(venv / "bin" / "trainyard"), "show", job_id, "--json"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job_id
    listed = subprocess.run([str(venv / "bin" / "trainyard"), "jobs"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "from-light" in listed.stdout
