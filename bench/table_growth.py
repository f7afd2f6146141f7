#!/usr/bin/env python
"""Does polling stay flat as the tables grow? The read path at a few rows and at
>= 10 M metric rows and >= 1 M jobs, on Postgres (issue 12 item 5).

Starts the deployment as real commands (bench/submit_latency.py's Stack) on a database it
creates and drops: migrate (the production schema and indexes), a key, ``trainyard api``
and one worker; runs one small job to the end (the *probe*, 20 epochs), then times the
reads a poller and a dashboard make, one client, sequentially:

- ``GET /v1/jobs/{probe}``;
- ``GET /v1/jobs/{probe}/metrics?after=<its last id>``: a finished job's empty page, the
  query that walked the whole table before the (job_id, id) index;
- ``GET /v1/jobs/{probe}/metrics``: its whole first page;
- ``GET /v1/jobs?status=succeeded&limit=20``: the tenant's newest page.

Then it fills the tables in SQL (triggers off, as a bulk load): ``--jobs`` jobs (1 % of
them the probe's tenant's, the rest spread over 1,000 other tenants), each a copy of the
probe's row, and ``--metrics`` metric rows of ``--metric-jobs`` of them, written in epoch
order across jobs as concurrent training interleaves them, so every filler row has a
larger id than the probe's; ANALYZE; and times the same reads again. p50 and p99 in ms per
route, at both sizes, side by side.

    .venv/bin/python bench/table_growth.py            # 1 M jobs, 10 M metric rows
    .venv/bin/python bench/table_growth.py --quick    # 20 k jobs, 200 k rows (smoke run)
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from poll_load import SMALL, _ready, run_to_end
from submit_latency import Stack, free_port, fresh_database, pg_admin, tear_down, wait_for

BENCH_DB = "trainyard_bench_growth"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FILLER_TENANTS = 1000
# (epoch, split, name) per filler row: 4 rows an epoch, as a small classification job logs
FILLER_ROWS = (("train", "loss"), ("train", "accuracy"), ("val", "loss"), ("val", "accuracy"))


def routes(probe: str, last_id: int) -> dict[str, tuple[str, dict[str, Any]]]:
    return {"job": (f"/v1/jobs/{probe}", {}),
            "metrics after last id (empty)": (f"/v1/jobs/{probe}/metrics",
                                              {"after": last_id}),
            "metrics first page": (f"/v1/jobs/{probe}/metrics", {}),
            "jobs list (succeeded, 20)": ("/v1/jobs", {"status": "succeeded", "limit": 20})}


def time_reads(client: httpx.Client, probe: str, last_id: int,
               n: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 in ms per route; the routes interleave so drift hits them alike."""
    lat: dict[str, list[float]] = {name: [] for name in routes(probe, last_id)}
    for _ in range(n):
        for name, (path, params) in routes(probe, last_id).items():
            t0 = time.perf_counter()
            r = client.get(path, params=params)
            lat[name].append(1e3 * (time.perf_counter() - t0))
            r.raise_for_status()
    return {name: (statistics.median(v), sorted(v)[int(0.99 * (len(v) - 1))])
            for name, v in lat.items()}


def fill(db_url: str, probe: str, jobs: int, metrics: int, metric_jobs: int) -> float:
    """Bulk-load filler rows copied from the probe's job row; returns seconds taken."""
    conn = pg_admin(db_url)
    t0 = time.perf_counter()
    try:
        conn.execute("SET session_replication_role = replica")  # a bulk load: no triggers
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs' "
            "AND column_name NOT IN ('id', 'tenant_id', 'name', 'created_at', 'updated_at',"
            " 'idempotency_key') ORDER BY ordinal_position")]
        copied = ", ".join(f"p.{c}" for c in cols)
        conn.execute("INSERT INTO tenants (id, created_at) SELECT 'filler-' || g, now() "
                     f"FROM generate_series(0, {FILLER_TENANTS - 1}) g")
        conn.execute(
            f"INSERT INTO jobs (id, tenant_id, name, created_at, updated_at, {', '.join(cols)}) "
            "SELECT 'job_fill_' || g, CASE WHEN g %% 100 = 0 THEN p.tenant_id "
            f"ELSE 'filler-' || (g %% {FILLER_TENANTS}) END, 'filler-' || g, "
            "p.created_at - make_interval(secs => g), p.updated_at - make_interval(secs => g), "
            f"{copied} FROM generate_series(1, {jobs}) g, "
            "(SELECT * FROM jobs WHERE id = %s) p", (probe,))
        per_job = len(FILLER_ROWS)
        splits = ", ".join(f"'{s}'" for s, _ in FILLER_ROWS)
        names = ", ".join(f"'{n}'" for _, n in FILLER_ROWS)
        conn.execute(
            "INSERT INTO metrics (job_id, epoch, split, name, value, attempt) "
            f"SELECT 'job_fill_' || (1 + g % {metric_jobs}), (g / {metric_jobs}) / {per_job}, "
            f"(ARRAY[{splits}])[1 + (g / {metric_jobs}) % {per_job}], "
            f"(ARRAY[{names}])[1 + (g / {metric_jobs}) % {per_job}], random(), 1 "
            f"FROM generate_series(0, {metrics - 1}) g")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return time.perf_counter() - t0


def counts(db_url: str) -> tuple[int, int]:
    conn = pg_admin(db_url)
    try:
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        metrics = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
    finally:
        conn.close()
    return int(jobs), int(metrics)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=POSTGRES, help="Postgres server URL")
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--metrics", type=int, default=10_000_000)
    p.add_argument("--metric-jobs", type=int, default=100_000,
                   help="how many filler jobs the metric rows belong to")
    p.add_argument("--requests", type=int, default=300, help="per route and size")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.metrics, args.metric_jobs, args.requests = 20_000, 200_000, 2_000, 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    tmp = tempfile.TemporaryDirectory(prefix="trainyard-bench-growth-")
    admin, db_url = fresh_database(args.database_url, BENCH_DB)
    stack = Stack(Path(tmp.name), {"TRAINYARD_DATABASE_URL": db_url})
    try:
        stack.cli("migrate")
        key = stack.cli("keys", "create", "bench").splitlines()[1].strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stack.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
        stack.start("worker", "worker", "--concurrency", "1")
        wait_for(lambda: _ready(url), 120, 0.1, "/readyz", stack)
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            probe = run_to_end(client, SMALL, 180)["id"]
            last_id = client.get(f"/v1/jobs/{probe}/metrics").json()["next_after"]
            time_reads(client, probe, last_id, 20)  # warm-up
            sizes = [(counts(db_url), time_reads(client, probe, last_id, args.requests))]
            took = fill(db_url, probe, args.jobs, args.metrics, args.metric_jobs)
            time_reads(client, probe, last_id, 20)
            sizes.append((counts(db_url), time_reads(client, probe, last_id, args.requests)))
        print(f"table growth on Postgres; filled in {took:.0f} s; {args.requests} requests "
              "per route and size, one client; ms")
        (j0, m0), small = sizes[0]
        (j1, m1), big = sizes[1]
        print(f"{'route':34} {f'{j0:,} jobs / {m0:,} rows':>26} {f'{j1:,} jobs / {m1:,} rows':>30}")
        print(f"{'':34} {'p50':>12} {'p99':>13} {'p50':>15} {'p99':>14}")
        for name in small:
            (a50, a99), (b50, b99) = small[name], big[name]
            print(f"{name:34} {a50:12.2f} {a99:13.2f} {b50:15.2f} {b99:14.2f}")
    finally:
        tear_down(stack, tmp, admin, BENCH_DB)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
