"""Sustained concurrent submission and polling on two workers (Postgres + Redis).

CI runs a small size; ``make soak`` (TRAINYARD_SOAK=full) runs 200 jobs from 20 clients
while 20 pollers read metrics. Either way: every accepted job completes, every metric row
is present exactly once, and no response is a 5xx. The figures go to bench/README.md.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Stack, tiny_spec, wait_job
from tests.reliability.test_faults import assert_complete

pytestmark = pytest.mark.reliability

FULL = os.environ.get("TRAINYARD_SOAK") == "full"
JOBS, CLIENTS, POLLERS = (200, 20, 20) if FULL else (40, 8, 6)
EPOCHS = 3


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {"submit": [], "poll": []}
        self.statuses: list[int] = []

    def timed(self, kind: str, call: Callable[[], httpx.Response]) -> httpx.Response:
        start = time.perf_counter()
        response = call()
        with self.lock:
            self.latencies[kind].append(time.perf_counter() - start)
            self.statuses.append(response.status_code)
        return response


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def submitter(stack: Stack, count: int, rec: Recorder, accepted: list[str]) -> None:
    with stack.client() as http:
        for i in range(count):
            while True:
                r = rec.timed("submit", lambda i=i: http.post(
                    "/v1/jobs", json=tiny_spec(name=f"load{i}", training={"epochs": EPOCHS,
                                                                        "batch_size": 32})))
                if r.status_code != 429:  # over the tenant's concurrency cap: wait, retry
                    break
                time.sleep(float(r.headers.get("Retry-After", "1")) / 10)
            assert r.status_code == 201, r.text
            with rec.lock:
                accepted.append(r.json()["id"])


def poller(stack: Stack, rec: Recorder, accepted: list[str], stop: threading.Event) -> None:
    cursors: dict[str, int] = {}
    with stack.client() as http:
        while not stop.is_set():
            with rec.lock:
                ids = list(accepted[-10:])
            for job_id in ids:
                r = rec.timed("poll", lambda j=job_id: http.get(
                    f"/v1/jobs/{j}/metrics", params={"after": cursors.get(j, 0)}))
                if r.status_code == 200:
                    cursors[job_id] = r.json()["next_after"]
            time.sleep(0.05)


def test_sustained_submission_and_polling(distributed: Stack, postgres_url: str) -> None:
    distributed.start_worker("w1")
    distributed.start_worker("w2")
    rec, stop = Recorder(), threading.Event()
    accepted: list[str] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=submitter, args=(distributed, JOBS // CLIENTS, rec,
                                                        accepted)) for _ in range(CLIENTS)]
    pollers = [threading.Thread(target=poller, args=(distributed, rec, accepted, stop))
               for _ in range(POLLERS)]
    for t in threads + pollers:
        t.start()
    for t in threads:
        t.join()
    with distributed.client() as http:
        finals = [wait_job(http, job_id, timeout=600) for job_id in accepted]
    elapsed = time.perf_counter() - started
    stop.set()
    for t in pollers:
        t.join()
    assert len(accepted) == JOBS
    assert all(j["status"] == "succeeded" for j in finals)
    assert not [s for s in rec.statuses if s >= 500], "a 5xx was served"
    for job_id in accepted:
        assert_complete(postgres_url, job_id, EPOCHS)
    report(rec, elapsed)


def report(rec: Recorder, elapsed: float) -> None:
    lines = [f"load: {JOBS} jobs, {CLIENTS} clients, {POLLERS} pollers, 2 workers: "
             f"{elapsed:.1f}s, {JOBS / elapsed:.2f} jobs/s"]
    for kind, values in rec.latencies.items():
        if values:
            lines.append(f"  {kind}: n={len(values)} p50={percentile(values, 0.5):.1f}ms "
                         f"p95={percentile(values, 0.95):.1f}ms "
                         f"p99={percentile(values, 0.99):.1f}ms "
                         f"mean={statistics.mean(values) * 1000:.1f}ms")
    print("\n".join(lines))
