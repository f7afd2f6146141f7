#!/usr/bin/env python
"""Polling load on a real API: GET /v1/jobs/{id} and /metrics?after= at 1 and 8 clients.

Starts the deployment as real commands (see bench/submit_latency.py's Stack): migrate,
a key, ``trainyard api`` (with ``--workers`` when given) and one worker; runs one small
job to the end so there is a finished job with metric rows, then a bounded load
generator against 127.0.0.1 only: C client processes (each one keep-alive
``http.client`` connection, so the generator is not one GIL; ``--httpx`` for httpx.Client)
alternate GET /v1/jobs/{id} and GET /v1/jobs/{id}/metrics?after=<last id>, for a fixed
duration and at most ``--max-requests`` each. Reported per level: req/s (all clients),
p50 and p99 latency, non-200/304 count. ``--etag`` makes each GET send If-None-Match with
the ETag its URL last answered with (a poller that already has the job, or the empty page
past its cursor).

Then, unless --no-training: one longer training job alone, and the same job with C
pollers hammering it, reporting samples/s from the job's started_at..finished_at.

    .venv/bin/python bench/poll_load.py
    .venv/bin/python bench/poll_load.py --workers 4 --etag
    .venv/bin/python bench/poll_load.py --database-url \
        postgresql+psycopg://postgres@127.0.0.1:5432/postgres   # creates/drops its own db

On a machine with few cores the load generator shares them with the API: note the
load average printed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit_latency import Stack, drop_database, free_port, fresh_database, ts, wait_for

BENCH_DB = "trainyard_bench_poll"
HTTPX_CLIENT = False  # --httpx: the load generator uses httpx.Client (set before the fork)
SMALL = {"name": "poll-target",
         "data": {"source": {"synthetic": "moons", "n_samples": 400}},
         "model": {"kind": "mlp", "hidden": [16]},
         "training": {"epochs": 20, "batch_size": 32}}
TRAIN_SAMPLES, TRAIN_EPOCHS = 4000, 60
TRAIN = {"name": "poll-training",
         "data": {"source": {"synthetic": "moons", "n_samples": TRAIN_SAMPLES}},
         "model": {"kind": "mlp", "hidden": [64, 64]},
         "training": {"epochs": TRAIN_EPOCHS, "batch_size": 32}}


def client_loop(url: str, key: str, job_id: str, seconds: float, max_requests: int,
                etag: bool, out: Any, pause: float = 0.0) -> None:
    """One polling client: alternate the job and its metrics page; latencies in ms.

    The client is the standard library's keep-alive ``http.client``: about a tenth of
    httpx's CPU per request, which on a small host is CPU taken from the server under test
    (``--httpx`` measures with httpx.Client, as earlier runs did)."""
    lat: list[float] = []
    bad = 0
    after, tags = 0, {}
    auth = f"Bearer {key}"
    get = _httpx_getter(url, auth) if HTTPX_CLIENT else _stdlib_getter(url, auth)
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline and i < max_requests:
        t0 = time.perf_counter()
        # the job, then its metrics page from the cursor; with --etag each GET sends
        # the ETag its URL last answered with (a server without one ignores it)
        target = f"/v1/jobs/{job_id}" if i % 2 == 0 else f"/v1/jobs/{job_id}/metrics?after={after}"
        status, tag, body = get(target, tags.get(target) if etag else None)
        if tag is not None:
            tags[target] = tag
        if i % 2 == 1 and status == 200:
            page = json.loads(body)
            if page["points"]:  # a poller keeps its cursor; a finished job's page stays empty
                after = page["next_after"]
        lat.append(1e3 * (time.perf_counter() - t0))
        bad += status not in (200, 304)
        i += 1
        time.sleep(pause)
    out.put((lat, bad))


Getter = Callable[[str, str | None], tuple[int, str | None, bytes]]


def _stdlib_getter(url: str, auth: str) -> Getter:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def get(target: str, if_none_match: str | None) -> tuple[int, str | None, bytes]:
        headers = {"Authorization": auth}
        if if_none_match is not None:
            headers["If-None-Match"] = if_none_match
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, response.getheader("etag"), body

    return get


def _httpx_getter(url: str, auth: str) -> Getter:
    client = httpx.Client(base_url=url, headers={"Authorization": auth}, timeout=30)

    def get(target: str, if_none_match: str | None) -> tuple[int, str | None, bytes]:
        extra = {"If-None-Match": if_none_match} if if_none_match is not None else {}
        r = client.get(target, headers=extra)
        return r.status_code, r.headers.get("etag"), r.content

    return get


def group_cpu_s(pgid: int) -> float:
    """User+system CPU seconds of the live processes in a process group (the API and its
    worker processes): a cost per request that a busy machine does not inflate as much
    as latency (Linux /proc)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[2]) == pgid:  # pgrp, then utime, stime
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def load(url: str, key: str, job_id: str, clients: int, seconds: float, max_requests: int,
         etag: bool, api_pgid: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=client_loop, args=(url, key, job_id, seconds, max_requests,
                                                   etag, queue)) for _ in range(clients)]
    cpu0 = group_cpu_s(api_pgid)
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.perf_counter() - t0
    cpu = group_cpu_s(api_pgid) - cpu0
    for p in procs:
        p.join()
    lat = sorted(x for lats, _ in results for x in lats)
    return {"clients": clients, "requests": len(lat), "req_s": len(lat) / elapsed,
            "p50_ms": statistics.median(lat), "p99_ms": lat[int(0.99 * (len(lat) - 1))],
            "bad": sum(b for _, b in results), "api_cpu_ms_per_req": 1e3 * cpu / len(lat)}


def run_to_end(client: httpx.Client, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=spec)
    r.raise_for_status()
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            return dict(job)
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not finished after {timeout}s")


def samples_per_s(job: dict[str, Any]) -> float:
    secs = (ts(job["finished_at"]) - ts(job["started_at"])).total_seconds()
    return TRAIN_SAMPLES * TRAIN_EPOCHS / secs


def training_with_pollers(client: httpx.Client, url: str, key: str, clients: int,
                          timeout: float, pause: float) -> float:
    """Submit the training job, poll it with ``clients`` pollers until it ends."""
    r = client.post("/v1/jobs", json=TRAIN)
    r.raise_for_status()
    job_id = r.json()["id"]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=client_loop, args=(url, key, job_id, timeout, 10**9, False,
                                                   queue, pause)) for _ in range(clients)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            p.terminate()
            p.join()
    if job["status"] != "succeeded":
        raise RuntimeError(f"training job {job_id} {job['status']}")
    return samples_per_s(job)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", help="Postgres server URL (a database is created there)")
    p.add_argument("--workers", type=int, help="trainyard api --workers N (else its default)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=10.0, help="per level")
    p.add_argument("--max-requests", type=int, default=50_000, help="per client, a bound")
    p.add_argument("--etag", action="store_true",
                   help="send If-None-Match (the last ETag of that URL)")
    p.add_argument("--no-training", action="store_true")
    p.add_argument("--train-poll-interval", type=float, default=0.0,
                   help="seconds each poller waits between requests during the training "
                        "run (0: flat out, the worst case)")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the api")
    p.add_argument("--httpx", action="store_true",
                   help="clients use httpx.Client (the earlier runs' generator; ~10x the "
                        "client CPU per request of the default http.client)")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    global HTTPX_CLIENT
    args = parse(argv)
    HTTPX_CLIENT = args.httpx

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    tmp = tempfile.TemporaryDirectory(prefix="trainyard-bench-poll-")
    env = dict(kv.split("=", 1) for kv in args.env)
    admin = None
    if args.database_url:
        admin, env["TRAINYARD_DATABASE_URL"] = fresh_database(args.database_url, BENCH_DB)
    label = "postgres" if args.database_url else "sqlite (embedded)"
    stack = Stack(Path(tmp.name), env)
    out: dict[str, Any] = {"backend": label, "workers": args.workers, "etag": args.etag,
                           "levels": []}
    try:
        stack.cli("migrate")
        key = stack.cli("keys", "create", "bench").splitlines()[1].strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api = ["api", "--host", "127.0.0.1", "--port", str(port)]
        stack.start("api", *api, *(["--workers", str(args.workers)] if args.workers else []))
        stack.start("worker", "worker", "--concurrency", "1")
        wait_for(lambda: _ready(url), 120, 0.1, "/readyz", stack)
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            job = run_to_end(client, SMALL, 180)
            print(f"poll load: {label}, api workers={args.workers or 'default'}, "
                  f"etag={args.etag}, client={'httpx' if args.httpx else 'http.client'}, "
                  f"{args.seconds:g} s per level, load {os.getloadavg()[0]:.2f}", flush=True)
            for c in args.clients:
                res = load(url, key, job["id"], c, args.seconds, args.max_requests, args.etag,
                           stack.procs["api"].pid)
                out["levels"].append(res)
                print(f"  {c:>2} clients: {res['req_s']:7.0f} req/s  p50 {res['p50_ms']:6.1f} ms"
                      f"  p99 {res['p99_ms']:6.1f} ms  ({res['requests']} requests, "
                      f"{res['bad']} bad; api cpu {res['api_cpu_ms_per_req']:.2f} ms/req)",
                      flush=True)
            if not args.no_training:
                alone = samples_per_s(run_to_end(client, TRAIN, 600))
                polled = training_with_pollers(client, url, key, max(args.clients), 600,
                                               args.train_poll_interval)
                out["training"] = {"alone": alone, "polled": polled}
                print(f"  training samples/s: alone {alone:,.0f}, with {max(args.clients)} "
                      f"pollers (every {args.train_poll_interval:g} s) {polled:,.0f} "
                      f"({100 * (polled / alone - 1):+.0f}%)", flush=True)
    finally:
        stack.stop_all()
        drop_database(admin, BENCH_DB)
        tmp.cleanup()
    out["loadavg"] = os.getloadavg()
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in out['loadavg'])} "
          f"({os.cpu_count()} cpus)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
