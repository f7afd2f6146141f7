#!/usr/bin/env python
"""The cost of N concurrent SSE streams (default 100) on one API process.

Starts the deployment as real commands (bench/submit_latency.py's Stack): migrate, a key,
``trainyard api --workers 1`` (one process, so its CPU and memory are the streams'), and
later one worker. The streams are held by client processes of their own (one asyncio
loop each, httpx-sse), so the API's figures are its own. Reported:

  idle       API CPU (ms/s) and RSS over a quiet window: no stream, then N open streams
             on a queued job (heartbeats only), and the database connections the API holds
             (Postgres backends, or file descriptors on the SQLite file)
  polling    GET /v1/jobs/{id} p50/p99 from one poller, without and with the N streams
  training   one job trained with no stream, then the same job followed by N streams from
             its first event to its end: API CPU over the run, events each stream got,
             and delivery delay (event written -> received) p50/p99

    .venv/bin/python bench/sse_streams.py
    .venv/bin/python bench/sse_streams.py --streams 100 --database-url \
        postgresql+psycopg://postgres@127.0.0.1:5432/postgres   # creates/drops its own db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from poll_load import _ready, group_cpu_s
from submit_latency import Stack, drop_database, free_port, fresh_database, wait_for

BENCH_DB = "trainyard_bench_sse"
JOB = {"name": "sse-target", "data": {"source": {"synthetic": "moons", "n_samples": 2000}},
       "model": {"kind": "mlp", "hidden": [32, 32]},
       "training": {"epochs": 40, "batch_size": 32}}
TERMINAL = ("succeeded", "failed", "cancelled")


async def _one_stream(client: httpx.AsyncClient, path: str, opened: asyncio.Queue[None],
                      delays: list[float]) -> int:
    events = 0
    async with aconnect_sse(client, "GET", path) as source:
        async for event in source.aiter_sse():
            if not event.data:
                continue
            events += 1
            if events == 1:
                opened.put_nowait(None)
            written = datetime.fromisoformat(json.loads(event.data)["at"])
            delays.append((datetime.now(UTC) - written).total_seconds() * 1e3)
    return events


async def _streams(url: str, key: str, path: str, n: int, ready: Any, out: Any) -> None:
    limits = httpx.Limits(max_connections=n + 5)
    headers = {"Authorization": f"Bearer {key}"}
    opened: asyncio.Queue[None] = asyncio.Queue()
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(30, read=120)) as client:
        tasks = [asyncio.create_task(_one_stream(client, path, opened, delays))
                 for _ in range(n)]
        for _ in range(n):
            await opened.get()
        ready.set()
        counts = await asyncio.gather(*tasks)
    out.put((counts, delays))


class Streams:
    """n streams held by ``processes`` client processes (one asyncio loop each), so the
    client side's parsing does not lag the measured delivery."""

    def __init__(self, url: str, key: str, path: str, n: int, processes: int) -> None:
        ctx = mp.get_context("fork")
        self.out = ctx.Queue()
        shares = [n // processes + (i < n % processes) for i in range(processes)]
        self.procs, readies = [], []
        for share in (s for s in shares if s):
            ready = ctx.Event()
            proc = ctx.Process(target=lambda k=share, r=ready: asyncio.run(
                _streams(url, key, path, k, r, self.out)))
            proc.start()
            self.procs.append(proc)
            readies.append(ready)
        if not all(ready.wait(120) for ready in readies):
            self.stop()
            raise TimeoutError(f"{n} streams did not all open")

    def results(self) -> tuple[list[int], list[float]]:
        counts: list[int] = []
        delays: list[float] = []
        for _ in self.procs:
            c, d = self.out.get(timeout=120)
            counts += c
            delays += d
        for proc in self.procs:
            proc.join()
        return counts, delays

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()


def rss_mib(pgid: int) -> float:
    total = 0
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or os.getpgid(int(entry.name)) != pgid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        total += next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
    return total / 1024


def cpu_ms_per_s(pgid: int, seconds: float) -> float:
    cpu0 = group_cpu_s(pgid)
    time.sleep(seconds)
    return 1e3 * (group_cpu_s(pgid) - cpu0) / seconds


def connections(stack: Stack, api_pgid: int) -> int:
    url = stack.env.get("TRAINYARD_DATABASE_URL")
    if url:
        from submit_latency import pg_admin

        name = url.rsplit("/", 1)[1]
        with pg_admin(url) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                               "pid <> pg_backend_pid()", (name,)).fetchone()
        return int(row[0])
    database = str((stack.home / "trainyard.db").resolve())
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or os.getpgid(int(entry.name)) != api_pgid:
                continue
            count += sum(os.readlink(fd) == database for fd in (entry / "fd").iterdir())
        except OSError:
            continue
    return count


def poll_latency(client: httpx.Client, job_id: str, seconds: float) -> tuple[float, float]:
    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        client.get(f"/v1/jobs/{job_id}").raise_for_status()
        lat.append(1e3 * (time.perf_counter() - t0))
        time.sleep(0.02)
    lat.sort()
    return statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]


def train(client: httpx.Client, api_pgid: int, url: str, key: str,
          streams: int, processes: int) -> dict[str, Any]:
    job_id = client.post("/v1/jobs", json=JOB).json()["id"]
    cpu0, t0 = group_cpu_s(api_pgid), time.perf_counter()
    followers = None
    if streams:
        followers = Streams(url, key, f"/v1/jobs/{job_id}/events", streams, processes)
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in TERMINAL:
        time.sleep(0.2)
    result: dict[str, Any] = {"status": job["status"]}
    if followers is not None:
        counts, delays = followers.results()
        delays.sort()
        result |= {"events_per_stream": sorted(set(counts)),
                   "delay_p50_ms": statistics.median(delays),
                   "delay_p99_ms": delays[int(0.99 * (len(delays) - 1))]}
    elapsed = time.perf_counter() - t0
    result |= {"seconds": elapsed, "api_cpu_s": group_cpu_s(api_pgid) - cpu0}
    return result


def measure(stack: Stack, url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    api = stack.procs["api"].pid
    headers = {"Authorization": f"Bearer {key}"}
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        queued = client.post("/v1/jobs", json=JOB).json()["id"]  # no worker yet: it waits
        time.sleep(2)
        out["idle_0"] = {"cpu_ms_per_s": cpu_ms_per_s(api, args.seconds), "rss_mib": rss_mib(api),
                         "db_connections": connections(stack, api)}
        out["poll_0"] = poll_latency(client, queued, args.seconds)
        idle = Streams(url, key, f"/v1/jobs/{queued}/events", args.streams, args.processes)
        time.sleep(2)
        out["idle_n"] = {"cpu_ms_per_s": cpu_ms_per_s(api, args.seconds), "rss_mib": rss_mib(api),
                         "db_connections": connections(stack, api)}
        out["poll_n"] = poll_latency(client, queued, args.seconds)
        client.post(f"/v1/jobs/{queued}/cancel").raise_for_status()
        out["idle_streams_ended"] = sorted(set(idle.results()[0]))
        stack.start("worker", "worker", "--concurrency", "1")
        out["train_0"] = train(client, api, url, key, 0, 1)  # also warms the worker up
        out["train_0"] = train(client, api, url, key, 0, 1)
        out["train_n"] = train(client, api, url, key, args.streams, args.processes)
    return out


def report(out: dict[str, Any], n: int, label: str) -> None:
    i0, i1 = out["idle_0"], out["idle_n"]
    print(f"SSE streams: {label}, one API process, {n} streams")
    print(f"  idle    no stream: {i0['cpu_ms_per_s']:.1f} ms CPU/s, {i0['rss_mib']:.0f} MiB, "
          f"{i0['db_connections']} db connections")
    print(f"  idle    {n} streams: {i1['cpu_ms_per_s']:.1f} ms CPU/s, {i1['rss_mib']:.0f} MiB, "
          f"{i1['db_connections']} db connections")
    print(f"  polling GET /v1/jobs/{{id}} p50/p99: {out['poll_0'][0]:.1f}/{out['poll_0'][1]:.1f}"
          f" ms alone, {out['poll_n'][0]:.1f}/{out['poll_n'][1]:.1f} ms with {n} streams")
    t0, t1 = out["train_0"], out["train_n"]
    print(f"  training no stream: {t0['seconds']:.1f} s, API CPU {t0['api_cpu_s']:.2f} s")
    print(f"  training {n} streams: {t1['seconds']:.1f} s, API CPU {t1['api_cpu_s']:.2f} s, "
          f"events per stream {t1['events_per_stream']}, delivery p50/p99 "
          f"{t1['delay_p50_ms']:.0f}/{t1['delay_p99_ms']:.0f} ms")
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cpus)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0, help="each measuring window")
    p.add_argument("--processes", type=int, default=4, help="client processes holding them")
    p.add_argument("--database-url", help="Postgres server URL (a database is created there)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="trainyard-bench-sse-")
    env: dict[str, str] = {}
    admin = None
    if args.database_url:
        admin, env["TRAINYARD_DATABASE_URL"] = fresh_database(args.database_url, BENCH_DB)
    label = "postgres" if args.database_url else "sqlite (embedded)"
    stack = Stack(Path(tmp.name), env)
    try:
        stack.cli("migrate")
        key = stack.cli("keys", "create", "bench").splitlines()[1].strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stack.start("api", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
        wait_for(lambda: _ready(url), 120, 0.1, "/readyz", stack)
        out = measure(stack, url, key, args)
    finally:
        stack.stop_all()
        drop_database(admin, BENCH_DB)
        tmp.cleanup()
    report(out, args.streams, label)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
