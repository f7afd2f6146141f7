#!/usr/bin/env python
"""A job through the whole service against the same training as a hand loop in a fresh process.

The stack is started as real commands (``migrate``, ``keys create``, ``api``, ``worker
--concurrency 1``; embedded by default, Postgres and/or Redis with the flags), like
``submit_latency.py``. Pairs, interleaved, the order alternating:

  job   POST examples/digits.json (MLP 64-256-256-10, batch 64, 30 epochs) and time the
        job record's ``created_at`` -> ``finished_at``: queueing, claim, data, model, the
        epochs with their validation and SQL writes, the final evaluation and the finish
        write. The pair waits for the job's ONNX export to end before going on (the export
        runs after the job has finished and is not counted, but must not overlap the next
        measurement).
  hand  ``python bench/job_e2e.py --hand-loop`` in a fresh process, with the worker's torch
        threads: it loads and prepares the same data (the job's split and standardization),
        builds the same model, loss and optimizer (fused Adam, as the core), and trains the
        same number of epochs with a minimal loop (no validation, no records, no schedule).
        Timed from the data preparation to the end of the last epoch; what a warm pool
        child already has (the imports, ``torch._dynamo``, the builtin dataset's arrays) is
        loaded before the clock starts.

The first job (the pool child's first-job costs) is a warm-up and not reported. Reported:
each pair's times and ratio, and the median ratio.

    .venv/bin/python bench/job_e2e.py                       # embedded, 5 pairs
    .venv/bin/python bench/job_e2e.py --threads 1 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --broker-url redis://127.0.0.1:6379/12
    .venv/bin/python bench/job_e2e.py --quick               # 2 pairs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit_latency import Stack, free_port, fresh_database, tear_down, ts, wait_for

ROOT = Path(__file__).resolve().parents[1]
BENCH_DB = "trainyard_bench_e2e"
SPEC = json.loads((ROOT / "examples" / "digits.json").read_text())
POLL_S = 0.02


def hand_loop(epochs: int, threads: int) -> float:
    """Seconds from the data load to the end of training, in this (fresh) process."""
    sys.path.insert(0, str(ROOT))
    import torch

    from app import spec as s
    from app.training.data import load_arrays, prepare
    from app.training.losses import build_loss
    from app.training.models import build_model
    from app.training.optim import build_optimizer
    from app.training.shapes import output_dim

    torch.set_num_threads(threads)
    spec = s.JobSpec.model_validate(SPEC)
    cpu = torch.device("cpu")
    # what a warm pool child already has: torch._dynamo (imported lazily by the first
    # optimizer, ~1.2 s) and the builtin dataset's arrays (read once per process)
    import torch._dynamo
    arrays = load_arrays(spec.data.source, None, None)
    t0 = time.perf_counter()
    data = prepare(spec.data, arrays, cpu, keep_dev=False)
    torch.manual_seed(spec.training.seed)
    model = build_model(spec.model, data.input_shape, output_dim(data.info, spec.loss))
    loss_fn = build_loss(spec.loss, data.info.n_classes, cpu)
    opt = build_optimizer(spec.optimizer, model)
    x, y, b = data.x_train, data.y_train, int(spec.training.batch_size)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], b):
            idx = perm[i:i + b]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
    return time.perf_counter() - t0


def run_hand(epochs: int, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--hand-loop", str(epochs),
                          "--threads", str(threads)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_job(client: httpx.Client, stack: Stack, timeout: float) -> tuple[float, int]:
    """(created -> finished seconds, epochs run); returns once the export has ended."""
    r = client.post("/v1/jobs", json=SPEC)
    if r.status_code != 201:
        raise RuntimeError(f"submit failed: HTTP {r.status_code} {r.text[:500]}")
    job_id = r.json()["id"]

    def settled() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job['status']}: {job}")
        done = job["status"] == "succeeded" and (job.get("model") or {}).get("status") \
            in ("ready", "failed")
        return job if done else None

    job = wait_for(settled, timeout, POLL_S, f"job {job_id} and its export", stack)
    seconds = (ts(job["finished_at"]) - ts(job["created_at"])).total_seconds()
    return seconds, int(job["progress"]["epoch"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--database-url", help="Postgres server URL (a database is created there)")
    p.add_argument("--broker-url", help="e.g. redis://127.0.0.1:6379/12 (that db is flushed)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of the worker's pool child (TRAINYARD_TORCH_THREADS) "
                        "and of the hand loop; default: the worker's own, cores / 1")
    p.add_argument("--hand-loop", type=int, metavar="EPOCHS", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="2 pairs")
    args = p.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    if args.hand_loop is not None:
        print(f"{hand_loop(args.hand_loop, threads):.6f}")
        return 0
    pairs = 2 if args.quick else max(1, args.pairs)

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    tmp = tempfile.TemporaryDirectory(prefix="trainyard-bench-e2e-")
    env: dict[str, str] = {"TRAINYARD_TORCH_THREADS": str(threads)}
    admin = redis_client = None
    if args.database_url:
        admin, env["TRAINYARD_DATABASE_URL"] = fresh_database(args.database_url, BENCH_DB)
    if args.broker_url:
        env["TRAINYARD_BROKER_URL"] = args.broker_url
        import redis

        redis_client = redis.Redis.from_url(args.broker_url, socket_connect_timeout=3)
        redis_client.flushdb()
    label = (f"database={'postgres' if args.database_url else 'sqlite (embedded)'}, "
             f"broker={args.broker_url.split('://')[0] if args.broker_url else 'filesystem'}")
    stack = Stack(Path(tmp.name), env)
    ratios: list[float] = []
    try:
        stack.cli("migrate")
        key = stack.cli("keys", "create", "bench").splitlines()[1].strip()
        url = f"http://127.0.0.1:{free_port()}"
        stack.start("api", "api", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
                    "--workers", "1")
        stack.start("worker", "worker", "--concurrency", "1")
        wait_for(lambda: " ready." in stack.log("worker"), 120, 0.1, "the worker", stack)
        print(f"job e2e: {label}, digits 30 epochs, {pairs} pairs, hand loop with {threads} "
              f"torch threads, load {os.getloadavg()[0]:.2f}", flush=True)
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            def ready() -> bool:
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, 60, 0.1, "/readyz", stack)
            warm, epochs = run_job(client, stack, 300)
            print(f"  warm-up job: {warm:.3f} s ({epochs} epochs; not counted)", flush=True)
            for i in range(pairs):
                if i % 2 == 0:
                    job_s, epochs = run_job(client, stack, 300)
                    hand_s = run_hand(epochs, threads)
                else:
                    hand_s = run_hand(epochs, threads)
                    job_s, epochs = run_job(client, stack, 300)
                ratios.append(job_s / hand_s)
                print(f"  pair {i + 1}: job {job_s:.3f} s ({epochs} epochs), hand "
                      f"{hand_s:.3f} s, ratio {ratios[-1]:.2f}", flush=True)
    finally:
        tear_down(stack, tmp, admin, BENCH_DB, redis_client)
    print(f"median ratio job / hand: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}); load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
