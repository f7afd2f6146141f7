#!/usr/bin/env python
"""What the median stopping rule saves: examples/experiments/sweep-digits-early-termination.json
(an 8-value learning-rate grid on digits, 20 epochs each, plus the final retrain) with and
without its ``early_termination`` block, alternated after one warm-up run, on the embedded
default with two workers (one torch thread each).

    .venv/bin/python bench/sweep_early_termination.py [--rounds 2]

Prints per run: wall time, epochs trained by the trials against their budget, the trials
stopped, the chosen learning rate and the final model's test accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit_latency import Stack, free_port, wait_for
from sweep_workers import _ready

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "experiments" / \
    "sweep-digits-early-termination.json"


def run(http: httpx.Client, stack: Stack, request: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    exp_id = http.post("/v1/experiments", json=request).json()["id"]
    exp = wait_for(lambda: (e := http.get(f"/v1/experiments/{exp_id}").json())["status"]
                   != "running" and e, 900, 0.2, "the sweep", stack)
    wall = time.perf_counter() - start
    kids = http.get(f"/v1/experiments/{exp_id}/jobs").json()
    trials = [k for k in kids if "trial" in k["role"]]
    result = exp["result"]
    return {"wall": wall, "status": exp["status"],
            "epochs": sum(k["summary"]["epochs_completed"] for k in trials),
            "budget": sum(k["spec"]["training"]["epochs"] for k in trials),
            "stopped": len((result.get("early_termination") or {}).get("stopped", [])),
            "best_lr": result["best"]["optimizer.lr"],
            "test_accuracy": result["final"]["test"]["accuracy"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with_rule = json.loads(EXAMPLE.read_text())
    without = {k: v for k, v in with_rule.items() if k != "early_termination"}
    with tempfile.TemporaryDirectory() as home:
        stack = Stack(Path(home), {"TRAINYARD_TORCH_THREADS": "1"})
        try:
            stack.cli("migrate")
            key = stack.cli("keys", "create", "bench").splitlines()[1].strip()
            port = free_port()
            stack.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
            stack.start("w1", "worker", "--hostname", "w1@%h")
            stack.start("w2", "worker", "--hostname", "w2@%h")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"Authorization": f"Bearer {key}"}) as http:
                wait_for(lambda: _ready(http) and "ready" in stack.log("w1")
                         and "ready" in stack.log("w2"), 120, 0.2, "start", stack)
                run(http, stack, without)  # warm-up: each pool child's first job pays more
                rows = {"without": [], "median rule": []}  # type: dict[str, list[Any]]
                for _ in range(args.rounds):
                    for name, request in (("without", without), ("median rule", with_rule)):
                        row = run(http, stack, request)
                        rows[name].append(row)
                        print(f"{name:<12} {row}", flush=True)
        finally:
            stack.stop_all()
    for name, runs in rows.items():
        print(f"{name:<12} median wall {statistics.median(r['wall'] for r in runs):.1f}s  "
              f"epochs {runs[0]['epochs']}/{runs[0]['budget']}  stopped {runs[0]['stopped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
