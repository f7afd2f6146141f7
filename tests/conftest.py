"""Shared test infrastructure: real services, real processes, factories.

Tests that need Postgres or Redis skip with a reason when those are absent;
with ``TRAINYARD_REQUIRE_SERVICES=1`` (set by ``.ci/run``) the skip becomes a
failure, so CI can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_SERVICES = os.environ.get("TRAINYARD_REQUIRE_SERVICES") == "1"
PG_ADMIN = os.environ.get("TRAINYARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("TRAINYARD_TEST_REDIS", "redis://127.0.0.1:6379/11")

# Fast reliability settings for worker processes under test.
FAST = {
    "TRAINYARD_LEASE_SECONDS": "4",
    "TRAINYARD_HEARTBEAT_SECONDS": "0.5",
    "TRAINYARD_REAPER_INTERVAL_SECONDS": "0.5",
    "TRAINYARD_REQUEUE_AFTER_SECONDS": "3",
    "TRAINYARD_MAX_ATTEMPTS": "4",
}


def need(service: str, available: bool, why: str) -> None:
    if available:
        return
    message = f"{service} unavailable ({why})"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and TRAINYARD_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- real services


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new empty database on the test server (its SQLAlchemy URL), dropped afterwards."""
    try:
        admin = _pg_admin()
    except Exception as exc:
        need("PostgreSQL", False, str(exc).splitlines()[0])
    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin() as admin:  # a fresh connection: a test may have restarted the server
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    with fresh_pg_database("trainyard_test") as url:
        yield url


def migrated(url: str) -> sessionmaker[Session]:
    """Sessions on the database at ``url`` after ``alembic upgrade head`` (the triggers and
    storage settings included, which ``create_all`` would not make)."""
    from app.db import make_engine

    env = {**os.environ, "TRAINYARD_DATABASE_URL": url}
    out = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return sessionmaker(bind=make_engine(url), expire_on_commit=False)


def migrated_sessions(dialect: str, tmp_path_factory: pytest.TempPathFactory,
                      prefix: str) -> Iterator[sessionmaker[Session]]:
    """For a module fixture parametrized by dialect: a migrated SQLite file or Postgres
    database, its engine disposed (and the database dropped) at the end."""
    with contextlib.ExitStack() as stack:
        url = (f"sqlite+pysqlite:///{tmp_path_factory.mktemp(prefix) / 'db.sqlite'}"
               if dialect == "sqlite" else stack.enter_context(fresh_pg_database(prefix)))
        made = migrated(url)
        stack.callback(made.kw["bind"].dispose)
        yield made


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Redis db 11, flushed before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        need("Redis", False, str(exc))
    client.flushdb()
    yield REDIS_TEST_URL
    with contextlib.suppress(Exception):
        client.flushdb()


# ------------------------------------------------------------ process stacks


class Stack:
    """The API and worker processes of one deployment, started as real commands."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = {**os.environ, "TRAINYARD_HOME": str(home), "PYTHONUNBUFFERED": "1", **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = ""

    def cli(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run([sys.executable, "-m", "trainyard.cli", *args], env=self.env, cwd=ROOT,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"trainyard {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli", *args], env=self.env,
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_api(self) -> None:
        # one process: what a test observes of one API process's state (its caches, its
        # event poller's connections) is then the whole API's; several processes are
        # tested apart (tests/integration/test_api_workers.py)
        self.start("api", "api", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("API did not start:\n" + self.log("api"))

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(name, "worker", "--hostname", f"{name}@%h", *extra)

    def signal(self, name: str, sig: int) -> None:
        """Signal a process's whole group (a worker and its pool children)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def stop(self, name: str, timeout: float = 30) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=15)

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {key or self.key}"})

    def new_key(self, tenant: str) -> str:
        return self.cli("keys", "create", tenant).splitlines()[1].strip()


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120,
             statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(done, timeout, 0.3, f"job {job_id} to reach {statuses}")  # type: ignore[no-any-return]


@pytest.fixture()
def distributed(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Stack]:
    """API + migrations on the local Postgres and Redis (workers started by the test)."""
    with distributed_stack(tmp_path, postgres_url, redis_url) as stack:
        yield stack


@contextlib.contextmanager
def distributed_stack(home: Path, postgres_url: str, redis_url: str,
                      **env: str) -> Iterator[Stack]:
    """The ``distributed`` fixture's stack with extra settings (``TRAINYARD_...=value``);
    Redis db flushed first, every process stopped at the end."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    stack = Stack(home, {"TRAINYARD_DATABASE_URL": postgres_url,
                         "TRAINYARD_BROKER_URL": redis_url, **FAST, **env})
    try:
        stack.cli("migrate")
        stack.key = stack.new_key(f"tenant-{secrets.token_hex(3)}")
        stack.start_api()
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture()
def embedded(tmp_path: Path) -> Iterator[Stack]:
    """The embedded default: SQLite file + filesystem broker under a temp TRAINYARD_HOME."""
    stack = Stack(tmp_path, {k: v for k, v in FAST.items()})
    stack.env.pop("TRAINYARD_DATABASE_URL", None)
    stack.env.pop("TRAINYARD_BROKER_URL", None)
    stack.cli("migrate")
    stack.key = stack.new_key("dev")
    stack.start_api()
    yield stack
    stack.stop_all()


# ------------------------------------------------------------------ factories


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A job that trains in well under a second (moons, small MLP)."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "data": {"source": {"synthetic": "moons", "n_samples": 400, "noise": 0.2}},
        "model": {"kind": "mlp", "hidden": [16]},
        "optimizer": {"kind": "adam", "lr": 0.01},
        "training": {"epochs": 5, "batch_size": 32},
    }
    for path, value in overrides.items():
        node = spec
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return spec
