"""The deployment files, checked by construction (no Docker engine needed).

- docker-compose.yml is valid against the Compose Specification's JSON schema;
- its services are wired as the design says (persistence, one-shot migration,
  scalable workers, a GPU profile, healthchecks), and every command it runs is
  one the ``trainyard`` CLI accepts;
- the Dockerfile runs ``trainyard``, pins torch, and copies what the CLI needs.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from app.config import Settings
from trainyard.cli import cmd_api, cmd_migrate, cmd_worker, parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SHARED_SCHEMA = ROOT.parent / "shared" / "compose-spec.schema.json"
VENDORED_SCHEMA = Path(__file__).resolve().parent / "compose-spec.schema.json"
TORCH_PIN = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WORKERS = ("worker", "gpu-worker")


# ------------------------------------------------------------------ loading


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name]  # type: ignore[no-any-return]


def runs_our_image(svc: dict[str, Any]) -> bool:
    return "build" in svc or str(svc.get("image", "")).startswith("trainyard")


def our_services() -> list[str]:
    return [name for name, svc in compose()["services"].items() if runs_our_image(svc)]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    assert isinstance(cmd, list), f"command must be in exec (list) form, got {cmd!r}"
    return [str(part) for part in cmd]


def option(cmd: list[str], flag: str) -> str:
    assert flag in cmd, f"{flag} missing from {cmd}"
    return cmd[cmd.index(flag) + 1]


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):  # short form: service_started
        return dict.fromkeys(deps, "service_started")
    return {name: spec["condition"] for name, spec in deps.items()}


def seconds(duration: str) -> float:
    """A Compose duration ('60s', '1m30s', '1h') in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?", duration.strip())
    assert parts and duration.strip(), f"not a Compose duration: {duration!r}"
    h, m, s, ms = (int(p or 0) for p in parts.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def subcommands(cli: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in cli._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the trainyard CLI has no subcommands")


def parse_cli(cmd: list[str]) -> argparse.Namespace:
    """Parse with the real CLI; options must be spelt out (argparse would accept prefixes)."""
    assert cmd and cmd[0] == "trainyard", f"command must start with the trainyard CLI: {cmd}"
    cli = parser()
    try:
        args = cli.parse_args(cmd[1:])
    except SystemExit as exc:  # argparse reports unknown commands/options this way
        pytest.fail(f"trainyard CLI rejects {cmd} (exit {exc.code})")
    known = set(subcommands(cli)[cmd[1]]._option_string_actions)
    for token in cmd[2:]:
        flag = token.split("=", 1)[0]
        assert not token.startswith("-") or flag in known, f"{cmd}: {flag} is not spelt out"
    return args


# ------------------------------------------------------------------ schema


def schema_path() -> Path:
    return SHARED_SCHEMA if SHARED_SCHEMA.is_file() else VENDORED_SCHEMA


def validator_class(schema: dict[str, Any]) -> type[Any]:
    """The draft the schema declares, tolerating https and a missing trailing '#'."""
    def bare(uri: str) -> str:
        return uri.split("://", 1)[-1].rstrip("#/")

    declared = bare(schema.get("$schema", ""))
    for cls in (jsonschema.Draft4Validator, jsonschema.Draft6Validator,
                jsonschema.Draft7Validator, jsonschema.Draft201909Validator,
                jsonschema.Draft202012Validator):
        if bare(cls.META_SCHEMA["$schema"]) == declared:
            return cls
    pytest.fail(f"unknown $schema {schema.get('$schema')!r} in {schema_path()}")


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    schema = json.loads(schema_path().read_text())
    cls = validator_class(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_misspelt_key() -> None:
    """Guard against a vacuous schema: an unknown service key must be refused."""
    schema = json.loads(schema_path().read_text())
    cls = validator_class(schema)
    broken = json.loads(json.dumps(compose()))
    broken["services"]["api"]["comand"] = broken["services"]["api"].pop("command")
    assert not cls(schema).is_valid(broken)


# ------------------------------------------------------------------ services


def test_redis_persists_the_queue_and_never_evicts() -> None:
    redis = service("redis")
    cmd = command(redis)
    assert cmd[0] == "redis-server"
    assert option(cmd, "--appendonly") == "yes"
    assert option(cmd, "--maxmemory-policy") == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", [])), "AOF not on a volume"


def test_postgres_credentials_match_the_url_every_service_uses() -> None:
    pg = environment(service("postgres"))
    for name in our_services():
        env = environment(service(name))
        db = urlsplit(env["TRAINYARD_DATABASE_URL"])
        assert db.scheme == "postgresql+psycopg", name
        assert (db.hostname, db.port or 5432) == ("postgres", 5432), name
        assert db.username == pg["POSTGRES_USER"], name
        assert db.password == pg["POSTGRES_PASSWORD"], name
        assert db.path.lstrip("/") == pg["POSTGRES_DB"], name
        broker = urlsplit(env["TRAINYARD_BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port or 6379) == ("redis", "redis", 6379)


def test_environment_names_are_real_settings() -> None:
    """A typo in a TRAINYARD_ variable would be silently ignored by pydantic-settings."""
    fields = set(Settings.model_fields)
    for name in our_services():
        for key in environment(service(name)):
            assert key.startswith("TRAINYARD_"), f"{name}: {key}"
            assert key.removeprefix("TRAINYARD_").lower() in fields, f"{name}: unknown {key}"


def test_migrate_is_one_shot_and_gates_the_api_and_workers() -> None:
    migrate = service("migrate")
    assert parse_cli(command(migrate)).func is cmd_migrate
    assert str(migrate.get("restart")) == "no"
    assert "ports" not in migrate
    assert depends_on(migrate) == {"postgres": "service_healthy"}
    for name in ("api", *WORKERS):
        deps = depends_on(service(name))
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("redis") == "service_healthy", name


def test_every_service_on_our_image_runs_a_valid_trainyard_command() -> None:
    names = our_services()
    assert {"migrate", "api", *WORKERS} <= set(names)
    for name in names:
        args = parse_cli(command(service(name)))
        assert callable(args.func), name


def test_api_serves_on_the_published_port_with_a_healthcheck() -> None:
    api = service("api")
    args = parse_cli(command(api))
    assert args.func is cmd_api
    assert args.host == "0.0.0.0" and args.port == 8000
    assert "8000:8000" in [str(p) for p in api["ports"]]
    test = api["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", "exec-form healthcheck"
    probe = " ".join(test[1:])
    assert test[1] == "python" and "urllib" in probe
    assert f"127.0.0.1:{args.port}/healthz" in probe


def test_workers_are_scalable_and_drain_gracefully() -> None:
    for name in WORKERS:
        svc = service(name)
        args = parse_cli(command(svc))
        assert args.func is cmd_worker
        assert args.concurrency == 1 and args.pool == "prefork"
        assert "container_name" not in svc, f"{name}: a fixed name prevents --scale"
        assert "ports" not in svc, f"{name}: a host port prevents --scale"
        assert "%h" in args.hostname, f"{name}: replicas need distinct Celery hostnames"
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert seconds(str(svc.get("stop_grace_period", "10s"))) >= 30, name
    assert parse_cli(command(service("worker"))).queues == "cpu"
    assert "profiles" not in service("worker"), "the CPU worker starts by default"


def test_gpu_worker_is_opt_in_reserves_an_nvidia_gpu_and_consumes_the_gpu_queue() -> None:
    gpu = service("gpu-worker")
    assert gpu.get("profiles") == ["gpu"]
    assert parse_cli(command(gpu)).queues == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               and (d.get("count") == 1 or d.get("count") == "all") for d in devices)
    index = gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert "download.pytorch.org/whl/cu" in index, "the GPU image needs a CUDA torch"
    assert gpu["image"] != service("worker")["image"], "CPU and CUDA builds need distinct tags"


def test_cpu_services_build_the_cpu_torch() -> None:
    for name in our_services():
        if name == "gpu-worker":
            continue
        build = service(name).get("build")
        if isinstance(build, dict):
            assert build.get("args", {}).get("TORCH_INDEX_URL", CPU_INDEX) == CPU_INDEX, name


def test_healthchecks_and_named_volumes() -> None:
    for name in ("postgres", "redis", "api"):
        check = service(name).get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    assert "pg_isready" in " ".join(service("postgres")["healthcheck"]["test"])
    assert service("redis")["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    declared = set(compose().get("volumes") or {})
    used = set()
    for svc in compose()["services"].values():
        for volume in svc.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            if not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert {"pgdata", "redisdata"} <= used
    assert used <= declared, f"undeclared named volumes: {used - declared}"
    pg_mounts = [str(v) for v in service("postgres")["volumes"]]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg_mounts)


def test_services_share_one_environment_definition() -> None:
    """The x-trainyard-env anchor: every service on our image sees the same settings."""
    envs = {json.dumps(environment(service(n)), sort_keys=True) for n in our_services()}
    assert len(envs) == 1, envs
    assert "x-trainyard-env" in compose()


# ------------------------------------------------------------------ Dockerfile


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    out = []
    for line in lines:
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for word, args in dockerfile() if word == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args) if args.startswith("[") else shlex.split(args)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_dockerfile_runs_trainyard_api_by_default() -> None:
    entry = instructions("ENTRYPOINT")
    cmd = instructions("CMD")
    assert cmd, "no CMD"
    full = (exec_form(entry[-1]) if entry else []) + exec_form(cmd[-1])
    assert full[0] == "trainyard", full
    assert parse_cli(full).func is cmd_api
    assert "8000" in " ".join(instructions("EXPOSE"))


def test_dockerfile_pins_the_same_torch_as_pyproject() -> None:
    runs = " ".join(instructions("RUN"))
    assert TORCH_PIN in runs
    assert f'"{TORCH_PIN}"' in (ROOT / "pyproject.toml").read_text()
    assert '--index-url "${TORCH_INDEX_URL}"' in runs or "--index-url ${TORCH_INDEX_URL}" in runs
    assert f"TORCH_INDEX_URL={CPU_INDEX}" in instructions("ARG")
    declared = {arg.split("=")[0] for arg in instructions("ARG")}
    for name in our_services():
        build = service(name).get("build")
        if isinstance(build, dict):
            assert set(build.get("args", {})) <= declared, f"{name}: build arg not in Dockerfile"


def test_dockerfile_base_user_and_layout() -> None:
    assert instructions("FROM")[0].split()[0] == "python:3.11-slim"
    assert instructions("WORKDIR")[-1] == "/srv/trainyard"
    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must not run as root"
    runs = " ".join(instructions("RUN"))
    # app/services/admin.py finds alembic.ini and migrations/ in the tree: editable install,
    # with both server extras (the bare distribution is the light client only).
    assert re.search(r"pip install (-e|--editable) \"?\.\[api,worker\]", runs), \
        "install the tree editable with the api and worker extras"


def test_dockerfile_copies_what_the_cli_needs_and_it_is_in_the_context() -> None:
    sources = []
    for args in instructions("COPY"):
        parts = [p for p in exec_form(args) if not p.startswith("--")]
        sources += [p.rstrip("/") for p in parts[:-1]]
    for needed in ("pyproject.toml", "README.md", "alembic.ini", "migrations", "app", "worker",
                   "trainyard", "examples"):
        assert needed in sources, f"Dockerfile does not COPY {needed}"
    ignored = [p.strip().rstrip("/") for p in DOCKERIGNORE.read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        hit = [p for p in ignored if fnmatch.fnmatch(src, p) or src.startswith(p + "/")]
        assert not hit, f"COPY {src} is excluded by .dockerignore ({hit})"
    for must in (".venv", ".git", ".trainyard", "bench/out"):
        assert must in ignored, f".dockerignore should exclude {must}"
