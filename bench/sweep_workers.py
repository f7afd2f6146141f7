#!/usr/bin/env python
"""Wall time of an 8-trial sweep on one worker and on two (embedded default or Postgres+Redis).

The same sweep (8 grid trials of a small moons MLP, plus the final retrain of the best)
is submitted to a stack with one `trainyard worker`, then, after a second worker joins,
again. Each worker process runs torch with one thread, so two workers can use both cores.

    .venv/bin/python bench/sweep_workers.py
    .venv/bin/python bench/sweep_workers.py --broker-url redis://127.0.0.1:6379/12 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/trainyard_bench_sweep
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit_latency import Stack, free_port, wait_for

SWEEP = {
    "name": "bench-sweep", "kind": "sweep",
    "parameters": {"optimizer.lr": [0.003, 0.01, 0.03, 0.1], "model.hidden": [[16], [64]]},
    "objective": {"metric": "val_accuracy"},
    "base": {"data": {"source": {"synthetic": "moons", "n_samples": 2000, "noise": 0.3}},
             "model": {"kind": "mlp"}, "optimizer": {"kind": "adam"},
             "training": {"epochs": 10, "batch_size": 16}},
}


def run_sweep(http: httpx.Client, stack: Stack) -> float:
    start = time.perf_counter()
    exp_id = http.post("/v1/experiments", json=SWEEP).json()["id"]
    wait_for(lambda: http.get(f"/v1/experiments/{exp_id}").json()["status"] != "running",
             600, 0.2, "the sweep", stack)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url")
    parser.add_argument("--broker-url")
    args = parser.parse_args()
    env = {"TRAINYARD_TORCH_THREADS": "1"}
    if args.database_url:
        env["TRAINYARD_DATABASE_URL"] = args.database_url
    if args.broker_url:
        env["TRAINYARD_BROKER_URL"] = args.broker_url
    with tempfile.TemporaryDirectory() as home:
        stack = Stack(Path(home), env)
        try:
            return measure(stack)
        finally:
            stack.stop_all()


def measure(stack: Stack) -> int:
    stack.cli("migrate")
    key = stack.cli("keys", "create", "bench").splitlines()[1].strip()
    port = free_port()
    stack.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    stack.start("w1", "worker", "--hostname", "w1@%h")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        wait_for(lambda: _ready(http) and "ready" in stack.log("w1"), 120, 0.2, "start", stack)
        one = run_sweep(http, stack)
        stack.start("w2", "worker", "--hostname", "w2@%h")
        wait_for(lambda: "ready" in stack.log("w2"), 120, 0.2, "second worker", stack)
        two = run_sweep(http, stack)
    print(f"8-trial sweep (+1 final retrain): one worker {one:.1f}s, two workers {two:.1f}s, "
          f"speed-up {one / two:.2f}x")
    return 0


def _ready(http: httpx.Client) -> Any:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
