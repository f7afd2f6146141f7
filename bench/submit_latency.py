#!/usr/bin/env python
"""Submit-to-first-metric latency of a real deployment, started as real commands.

Default: the embedded mode (SQLite under a temporary TRAINYARD_HOME, kombu's filesystem
broker), exactly what ``trainyard run`` uses:

    python -m trainyard.cli migrate
    python -m trainyard.cli keys create bench          # 2nd line of stdout is the key
    python -m trainyard.cli api --host 127.0.0.1 --port P
    python -m trainyard.cli worker --concurrency 1

With ``--database-url`` (a Postgres server URL; this script creates, migrates and drops
its own database ``trainyard_bench_latency`` there) and/or ``--broker-url`` (e.g.
redis://127.0.0.1:6379/12; that Redis db is flushed before and after), the same
against Postgres / Redis.

After /readyz answers 200 (and, unless --no-wait-worker, the worker has logged that it
is ready), N tiny moons jobs are submitted one after another; each is polled with
GET /v1/jobs/{id}/metrics every 20 ms until its first metric point appears, then until
it finishes, before the next one is submitted (so no job waits behind another). Reported:

  submit      POST /v1/jobs round trip (validate, INSERT, COMMIT, enqueue)
  queued      created_at -> started_at from the job record (broker delivery + claim)
  first       POST start -> first metric point visible through the API
  done        POST start -> terminal status seen by the poller

The first job (which pays the worker's first-job warm-up: first SQL connection in the
pool child, first torch/sklearn calls) is reported apart from the median of the rest.
All processes are started in their own process group and terminated (SIGTERM, then
SIGKILL) at the end, also on errors and on Ctrl-C / SIGTERM.

    .venv/bin/python bench/submit_latency.py
    .venv/bin/python bench/submit_latency.py \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \
        --broker-url redis://127.0.0.1:6379/12
    .venv/bin/python bench/submit_latency.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH_DB = "trainyard_bench_latency"
POLL_S = 0.020
JOB = {"name": "bench-latency",
       "data": {"source": {"synthetic": "moons", "n_samples": 400}},
       "model": {"kind": "mlp", "hidden": [16]},
       "training": {"epochs": 5, "batch_size": 32}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("TRAINYARD_DATABASE_URL", "TRAINYARD_BROKER_URL")}
        self.env |= {"TRAINYARD_HOME": str(home), "PYTHONUNBUFFERED": "1", **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def cli(self, *args: str, timeout: float = 180) -> str:
        out = subprocess.run([sys.executable, "-m", "trainyard.cli", *args], env=self.env, cwd=ROOT,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"trainyard {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "trainyard.cli", *args], env=self.env, cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n"
                                   + self.log(name)[-4000:])

    def stop_all(self) -> None:
        """SIGTERM every process group, wait, then SIGKILL what is left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # the group may outlive its leader (pool children): kill it regardless
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()


def wait_for(predicate: Any, timeout: float, interval: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_job(client: httpx.Client, stack: Stack, timeout: float) -> dict[str, float]:
    t0 = time.perf_counter()
    r = client.post("/v1/jobs", json=JOB)
    t_submit = time.perf_counter()
    if r.status_code != 201:
        raise RuntimeError(f"submit failed: HTTP {r.status_code} {r.text[:500]}")
    job_id = r.json()["id"]
    t_first = t_done = None
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        page = client.get(f"/v1/jobs/{job_id}/metrics").json()
        now = time.perf_counter()
        if t_first is None and page["points"]:
            t_first = now
        if page["job_status"] in ("succeeded", "failed", "cancelled"):
            t_done = now
            if page["job_status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {page['job_status']}: "
                                   f"{client.get(f'/v1/jobs/{job_id}').text[:800]}")
            break
        time.sleep(POLL_S)
    else:
        stack.check_alive()
        raise TimeoutError(f"job {job_id} not finished after {timeout}s; worker log:\n"
                           + stack.log("worker")[-3000:])
    assert t_first is not None, "job finished without any metric point"
    job = client.get(f"/v1/jobs/{job_id}").json()
    queued = (ts(job["started_at"]) - ts(job["created_at"])).total_seconds()
    return {"submit_ms": 1e3 * (t_submit - t0), "queued_ms": 1e3 * queued,
            "first_ms": 1e3 * (t_first - t0), "done_ms": 1e3 * (t_done - t0)}


def pg_admin(url: str) -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    dsn = u.set(drivername="postgresql", database=u.database or "postgres")
    return psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True,
                           connect_timeout=5)


def fresh_database(server_url: str, name: str) -> tuple[Any, str]:
    """(an admin connection, the URL of a new empty database ``name`` on that server);
    drop it with the connection when done."""
    from sqlalchemy.engine import make_url

    admin = pg_admin(server_url)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    return admin, make_url(server_url).set(database=name).render_as_string(hide_password=False)


def tear_down(stack: Stack, tmp: Any, admin: Any, database: str,
              redis_client: Any = None) -> None:
    """Stop the stack's processes, drop the bench database (if one was made), flush the
    Redis db (if one was used) and remove the temporary home; never raises."""
    stack.stop_all()
    drop_database(admin, database)
    if redis_client is not None:
        with contextlib.suppress(Exception):
            redis_client.flushdb()
    tmp.cleanup()


def drop_database(admin: Any, name: str) -> None:
    """Undo ``fresh_database`` (nothing to do without one); never raises during cleanup."""
    if admin is None:
        return
    with contextlib.suppress(Exception):
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=6, help="jobs submitted one after another")
    p.add_argument("--database-url", help="Postgres server URL (a database is created there)")
    p.add_argument("--broker-url", help="e.g. redis://127.0.0.1:6379/12 (that db is flushed)")
    p.add_argument("--no-wait-worker", action="store_true",
                   help="submit as soon as /readyz answers (the first job then also waits "
                        "for the worker to start)")
    p.add_argument("--settle", type=float, default=0.0,
                   help="seconds to wait after the worker is ready, before the first submit "
                        "(separates pool-child start-up from first-job warm-up)")
    p.add_argument("--job-timeout", type=float, default=120.0)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--quick", action="store_true", help="2 jobs")
    args = p.parse_args(argv)
    n_jobs = 2 if args.quick else max(2, args.jobs)

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    tmp = tempfile.TemporaryDirectory(prefix="trainyard-bench-latency-")
    home = Path(tmp.name)
    env: dict[str, str] = {}
    admin = None
    if args.database_url:
        admin, env["TRAINYARD_DATABASE_URL"] = fresh_database(args.database_url, BENCH_DB)
    redis_client = None
    if args.broker_url:
        env["TRAINYARD_BROKER_URL"] = args.broker_url
        if args.broker_url.startswith("redis"):
            import redis

            redis_client = redis.Redis.from_url(args.broker_url, socket_connect_timeout=3)
            redis_client.flushdb()
    label = (f"database={'postgres' if args.database_url else 'sqlite (embedded)'}, "
             f"broker={args.broker_url.split('://')[0] if args.broker_url else 'filesystem'}")
    stack = Stack(home, env)
    results: list[dict[str, float]] = []
    try:
        t_start = time.perf_counter()
        stack.cli("migrate")
        key = stack.cli("keys", "create", "bench").splitlines()[1].strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t_procs = time.perf_counter()
        stack.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
        stack.start("worker", "worker", "--concurrency", "1")

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, 0.1, "/readyz", stack)
        t_ready = time.perf_counter()
        t_worker = None
        if not args.no_wait_worker:
            wait_for(lambda: " ready." in stack.log("worker"), 120, 0.1,
                     "the worker's 'ready.' log line", stack)
            t_worker = time.perf_counter()
        time.sleep(args.settle)
        print(f"submit latency: {label}, {n_jobs} jobs, poll every {POLL_S * 1e3:.0f} ms; "
              f"migrate+key {t_procs - t_start:.1f} s, /readyz after {t_ready - t_procs:.1f} s"
              + (f", worker ready after {t_worker - t_procs:.1f} s" if t_worker else "")
              + (f", then {args.settle:g} s settle" if args.settle else ""),
              flush=True)
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            for i in range(n_jobs):
                res = run_job(client, stack, args.job_timeout)
                results.append(res)
                print(f"  job {i + 1}: submit {res['submit_ms']:6.1f} ms  queued "
                      f"{res['queued_ms']:7.1f} ms  first metric {res['first_ms']:7.1f} ms  "
                      f"done {res['done_ms']:7.1f} ms", flush=True)
    finally:
        tear_down(stack, tmp, admin, BENCH_DB, redis_client)

    rest = results[1:]
    summary = {"first_job": results[0],
               "rest_median": {k: statistics.median(r[k] for r in rest) for k in results[0]},
               "rest_min": {k: min(r[k] for r in rest) for k in results[0]},
               "rest_max": {k: max(r[k] for r in rest) for k in results[0]},
               "submit_median_all": statistics.median(r["submit_ms"] for r in results)}
    f, m = summary["first_job"], summary["rest_median"]
    lo, hi = summary["rest_min"], summary["rest_max"]
    print(f"\n{'':<22} {'submit ms':>9} {'queued ms':>9} {'first metric ms':>15} {'done ms':>8}")
    print(f"{'first job':<22} {f['submit_ms']:>9.1f} {f['queued_ms']:>9.1f} "
          f"{f['first_ms']:>15.1f} {f['done_ms']:>8.1f}")
    print(f"{f'median of {len(rest)} others':<22} {m['submit_ms']:>9.1f} {m['queued_ms']:>9.1f} "
          f"{m['first_ms']:>15.1f} {m['done_ms']:>8.1f}")
    print(f"{'  (min..max)':<22} {lo['submit_ms']:>4.0f}..{hi['submit_ms']:<4.0f} "
          f"{lo['queued_ms']:>4.0f}..{hi['queued_ms']:<4.0f} "
          f"{lo['first_ms']:>10.0f}..{hi['first_ms']:<4.0f} "
          f"{lo['done_ms']:>3.0f}..{hi['done_ms']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": label, "jobs": results,
                                               "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
