"""CI runs the very commands docker-compose.yml declares, against the local Postgres
and Redis, and pushes a job through them.

The compose file is the source: each service's ``command`` and ``environment`` are
read from it; only what cannot exist outside Docker is translated (the hostnames
``postgres`` and ``redis`` become the test database and Redis, the API's port
becomes a free one, the ``trainyard`` console script becomes ``python -m trainyard.cli``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, Stack, free_port, tiny_spec, wait_for, wait_job

pytestmark = pytest.mark.integration

COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_DB_HOST = "@postgres:"
COMPOSE_REDIS_HOST = "redis://redis:"


def compose_service(name: str) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"][name]  # type: ignore[no-any-return]


def compose_env(svc: dict[str, Any], postgres_url: str, redis_url: str) -> dict[str, str]:
    """The service's environment with the compose hostnames mapped to local services."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    local = {}
    for key, value in env.items():
        value = str(value)
        if key == "TRAINYARD_DATABASE_URL":
            assert COMPOSE_DB_HOST in value, value
            value = postgres_url
        elif key == "TRAINYARD_BROKER_URL":
            assert value.startswith(COMPOSE_REDIS_HOST), value
            value = redis_url
        assert COMPOSE_DB_HOST not in value and COMPOSE_REDIS_HOST not in value, (key, value)
        local[key] = value
    return local


def local_args(svc: dict[str, Any], port: int | None = None) -> list[str]:
    """``trainyard ARGS...`` from compose, as arguments for ``python -m trainyard.cli``."""
    cmd = [str(part) for part in svc["command"]]
    assert cmd[0] == "trainyard", cmd
    args = cmd[1:]
    if port is not None:
        args[args.index("--port") + 1] = str(port)
    return args


def console_script_installed() -> bool:
    candidates = [Path(sysconfig.get_path("scripts")) / "trainyard",
                  Path(sys.prefix) / "bin" / "trainyard", ROOT / ".venv" / "bin" / "trainyard"]
    return any(p.is_file() and os.access(p, os.X_OK) for p in candidates)


class ComposeStack(Stack):
    """A Stack whose environment is exactly the compose service's (plus PATH etc.)."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        super().__init__(home, env)
        outer = {k for k in os.environ if k.startswith("TRAINYARD_")}
        for key in outer - set(env) - {"TRAINYARD_HOME"}:
            self.env.pop(key, None)  # settings leaking from the shell would not be in a container
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def docker_stop(self, name: str, grace: float) -> int | None:
        """What ``docker stop`` does: SIGTERM to the main process, then wait the grace period."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return None


def grace_seconds(svc: dict[str, Any]) -> float:
    value = str(svc.get("stop_grace_period", "10s"))
    assert value.endswith("s") and value[:-1].isdigit(), value
    return float(value[:-1])


@pytest.fixture()
def stack(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[ComposeStack]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    envs = [compose_env(compose_service(n), postgres_url, redis_url)
            for n in ("migrate", "api", "worker")]
    assert envs[0] == envs[1] == envs[2], "migrate, api and worker must share one environment"
    s = ComposeStack(tmp_path, envs[0])
    try:
        yield s
    finally:
        s.stop_all()
        for name in ("api", "worker"):  # shown by pytest only when the test failed
            print(f"----- {name} log -----\n{s.log(name)}")


def wait_healthy(s: ComposeStack) -> None:
    def ready() -> bool:
        for name, proc in s.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{s.log(name)}")
        try:
            return httpx.get(f"{s.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 60, 0.3, "the API's /readyz (SQL and broker reachable)")


def test_the_compose_commands_train_a_job_end_to_end(stack: ComposeStack) -> None:
    assert console_script_installed(), "the `trainyard` console script is not installed"
    migrate, api, worker = (compose_service(n) for n in ("migrate", "api", "worker"))

    out = subprocess.run([sys.executable, "-m", "trainyard.cli", *local_args(migrate)],
                         env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"migrate failed:\n{out.stdout}\n{out.stderr}"

    stack.start("api", *local_args(api, port=stack.port))
    stack.start("worker", *local_args(worker))
    wait_healthy(stack)
    key = stack.cli("keys", "create", "compose-test").splitlines()[1].strip()

    with stack.client(key) as client:
        created = client.post("/v1/jobs", json=tiny_spec(name="compose-tiny"))
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        job = wait_job(client, job_id, timeout=180)
        assert job["status"] == "succeeded", job
        check_metrics(client, job_id, epochs=job["progress"]["epoch"])
        check_latest_checkpoint(client, job_id, epoch=job["progress"]["epoch"])

    for name, svc in (("worker", worker), ("api", api)):
        assert stack.procs[name].poll() is None, f"{name} died:\n{stack.log(name)}"
        rc = stack.docker_stop(name, grace_seconds(svc))
        assert rc is not None, f"{name} ignored SIGTERM for its stop_grace_period"


def check_metrics(client: httpx.Client, job_id: str, epochs: int) -> None:
    page = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 10_000})
    assert page.status_code == 200, page.text
    points = page.json()["points"]
    seen = {(p["split"], p["name"]) for p in points}
    for split in ("train", "val"):
        for name in ("loss", "accuracy"):
            assert (split, name) in seen, f"no {split} {name} in {sorted(seen)}"
    val_loss_epochs = {p["epoch"] for p in points if (p["split"], p["name"]) == ("val", "loss")}
    assert epochs >= 1 and len(val_loss_epochs) == epochs, (epochs, sorted(val_loss_epochs))


def check_latest_checkpoint(client: httpx.Client, job_id: str, epoch: int) -> None:
    import numpy as np
    from safetensors.numpy import load

    response = client.get(f"/v1/jobs/{job_id}/checkpoints/latest")
    assert response.status_code == 200, response.text
    tensors = load(response.content)
    assert tensors, "the checkpoint holds no tensors"
    assert all(np.isfinite(t).all() for t in tensors.values() if t.dtype.kind == "f")
    assert int(response.headers["X-Checkpoint-Epoch"]) == epoch


def test_compose_translation_refuses_unknown_hosts() -> None:
    """The translation is strict: a compose URL pointing elsewhere is not silently kept."""
    svc = {"environment": {"TRAINYARD_DATABASE_URL": "postgresql+psycopg://u:p@db:5432/x"}}
    with pytest.raises(AssertionError):
        compose_env(svc, "postgresql+psycopg://local/x", "redis://127.0.0.1:6379/11")
    api = {"command": ["trainyard", "api", "--host", "0.0.0.0", "--port", "8000"]}
    assert local_args(api, port=1234) == ["api", "--host", "0.0.0.0", "--port", "1234"]
