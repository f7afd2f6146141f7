#!/usr/bin/env python
"""Predictions of the digits MLP three ways, side by side in one run:

- **HTTP**: ``POST /v1/jobs/{id}/predict`` on a real ``trainyard api`` (``--api-workers``
  uvicorn processes; several counts, one after the other) of the embedded default (SQLite,
  filesystem broker), its body JSON ``{"rows": ...}`` or a float32 ``.npy`` matrix
  (``Content-Type: application/x-npy``), from 1 keep-alive client and from ``--clients``
  client processes at once;
- **onnxruntime in-process**: the same stored ``model.onnx`` in an InferenceSession with the
  API's options (``TRAINYARD_PREDICT_THREADS``, 1 by default): the limit HTTP can approach;
- **torch eager**: the same weights as the exported torch module (standardization and
  softmax included), ``no_grad``, eval mode, ``torch.set_num_threads`` the same.

The model is examples/digits.json (MLP 64-256-256-10), trained and exported by the worker's
own code (``worker.execution.execute``, ``worker.export.export_model``) into a temporary
TRAINYARD_HOME; the API process then serves it. For each way: single-row latency (p50, p95)
over ``--single`` calls, rows/s in batches of 1 (the same calls; with several clients, all
their rows over the wall time from the first call's start to the last one's end), and rows/s
in batches of 1,000 over ``--batches`` calls. Request bodies are encoded once, before the
clock starts (the client's own ``json.dumps`` of 1,000 x 64 rows is not the server's cost).
The API's resident memory (its process group) is read from /proc when idle after start
(onnxruntime not imported yet) and after the predictions.

    .venv/bin/python bench/predict.py                       # 1 and 2 API processes
    .venv/bin/python bench/predict.py --api-workers 1 --clients 8
    .venv/bin/python bench/predict.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_and_export(home: Path, epochs: int) -> tuple[str, str]:
    """(job id, API key): the digits job trained and exported into ``home``'s database."""
    os.environ["TRAINYARD_HOME"] = str(home)
    from app.config import get_settings
    from app.db import get_sessionmaker, session_scope
    from app.services import keys
    from app.services.admin import upgrade_schema
    from app.services.jobs import submit
    from app.spec import JobSpec
    from worker.execution import execute
    from worker.export import export_model

    upgrade_schema()
    spec = json.loads((ROOT / "examples" / "digits.json").read_text())
    spec["training"]["epochs"] = epochs
    with session_scope() as session:
        key = keys.create(session, tenant_id="bench")[1]
        job, _ = submit(session, tenant_id="bench", spec=JobSpec.model_validate(spec),
                        settings=get_settings(), idempotency_key=None)
    settings, sessions = get_settings(), get_sessionmaker()
    ran = execute(job.id, sessions, settings)
    assert ran == "succeeded", f"the digits job ended {ran}"
    exported = export_model(job.id, sessions, settings)
    assert exported == "ready", f"its export ended {exported}"
    return job.id, key


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every process in the group (the API's workers): its
    cost per request, which the machine's other load does not inflate as it does latency."""
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True,
                         text=True).stdout
    ticks = 0
    for pid in out.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def group_rss_mb(pgid: int) -> float:
    out = subprocess.run(["ps", "-o", "rss=", "-g", str(pgid)], capture_output=True,
                         text=True).stdout
    return sum(int(v) for v in out.split()) / 1024


def start_api(home: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TRAINYARD_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli", "api", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the API did not start")


def timed(call: Callable[[], Any], n: int, warm: bool = True) -> list[float]:
    if warm:
        call()  # warm-up (first-run allocations, a cache miss)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


def figures(single: list[float], batch: list[float], batch_rows: int) -> dict[str, float]:
    single.sort()
    return {"p50_ms": 1000 * statistics.median(single),
            "p95_ms": 1000 * single[int(0.95 * (len(single) - 1))],
            "rows_s_batch1": len(single) / sum(single),
            f"rows_s_batch{batch_rows}": batch_rows * len(batch) / sum(batch)}


def encoded(rows: np.ndarray, kind: str) -> tuple[bytes, str]:
    """A predict body and its content type, encoded once."""
    import io

    import orjson

    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, rows)
        return buffer.getvalue(), "application/x-npy"
    return orjson.dumps({"rows": rows.tolist()}), "application/json"


def client_calls(url: str, key: str, path: str, body: bytes, content_type: str, n: int,
                 start_at: float) -> tuple[list[float], float, float]:
    """One client's ``n`` calls, the first at ``start_at`` (time.time(), the same for every
    client): their latencies, and when the first started and the last ended. The client is
    the standard library's keep-alive ``http.client`` (httpx costs about ten times its CPU
    per call, taken from the server under test on a small host)."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}

    def post() -> None:
        connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        text = reply.read()
        assert reply.status == 200, text[:500]

    post()  # warm-up: the connection, this process's first request
    time.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    latencies = timed(post, n, warm=False)
    connection.close()
    return latencies, began, time.time()


def way_http(url: str, key: str, job_id: str, rows: np.ndarray, kind: str, clients: int,
             n: int, batches: int, api_pgid: int) -> dict[str, float]:
    """One body kind from ``clients`` client processes at once (spawned: the bench process
    holds torch and its threads); with the API's CPU per call, and the rows/s that one core
    of it would serve at that cost."""
    import multiprocessing

    path = f"/v1/jobs/{job_id}/predict"
    out: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        for size, calls in ((1, n), (len(rows), batches)):
            body, content_type = encoded(rows[:size], kind)
            start_at = time.time() + 3.0  # every client spawned and warmed up by then
            # the clients' warm-up calls are counted too: one each
            cpu = group_cpu_s(api_pgid)
            runs = pool.starmap(client_calls, [(url, key, path, body, content_type,
                                                max(1, calls // clients), start_at)] * clients)
            cpu = group_cpu_s(api_pgid) - cpu
            latencies = sorted(t for run in runs for t in run[0])
            wall = max(run[2] for run in runs) - min(run[1] for run in runs)
            out[f"rows_s_batch{size}"] = size * len(latencies) / wall
            per_call = cpu / (len(latencies) + clients)
            out[f"api_cpu_ms_batch{size}"] = 1000 * per_call
            out[f"rows_s_per_core_batch{size}"] = size / per_call if per_call else float("inf")
            if size == 1:
                out["p50_ms"] = 1000 * statistics.median(latencies)
                out["p95_ms"] = 1000 * latencies[int(0.95 * (len(latencies) - 1))]
    return {k: out[k] for k in ("p50_ms", "p95_ms", "rows_s_batch1",
                                f"rows_s_batch{len(rows)}", "api_cpu_ms_batch1",
                                f"api_cpu_ms_batch{len(rows)}", "rows_s_per_core_batch1",
                                f"rows_s_per_core_batch{len(rows)}")}


def way_onnxruntime(graph: bytes, rows: np.ndarray, n: int, batches: int,
                    threads: int) -> dict[str, float]:
    from app.services.inference import new_session

    session = new_session(graph, threads)
    one, many = rows[:1], rows
    return figures(timed(lambda: session.run(None, {"rows": one}), n),
                   timed(lambda: session.run(None, {"rows": many}), batches), len(rows))


def way_torch(job_id: str, rows: np.ndarray, n: int, batches: int,
              threads: int) -> dict[str, float]:
    import torch

    from app.db import get_sessionmaker
    from app.repository import get_job_any_tenant
    from app.spec import JobSpec
    from app.training.data import load_arrays, prepare
    from app.training.export import final_weights, servable
    from app.training.results import Summary
    from worker.execution import newest_good_checkpoint

    torch.set_num_threads(threads)
    sessions = get_sessionmaker()
    with sessions() as session:
        job = get_job_any_tenant(session, job_id)
        assert job is not None
    spec = JobSpec.model_validate(job.spec)
    data = prepare(spec.data, load_arrays(spec.data.source), torch.device("cpu"))
    blob = newest_good_checkpoint(sessions, job_id)
    assert blob is not None
    weights, _ = final_weights(blob, Summary.model_validate(job.summary).restored_best_weights)
    module = servable(spec, data, weights)
    one, many = torch.from_numpy(rows[:1]), torch.from_numpy(rows)

    def run(x: torch.Tensor) -> None:
        with torch.no_grad():
            module(x)

    return figures(timed(lambda: run(one), n), timed(lambda: run(many), batches), len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--single", type=int, default=1000, help="single-row calls per way")
    parser.add_argument("--batches", type=int, default=50, help="1,000-row calls per way")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes "
                        "(besides the single client)")
    parser.add_argument("--api-workers", default="1,2", help="API process counts to serve "
                        "with, comma-separated (trainyard api --workers)")
    parser.add_argument("--kinds", default="json,npy", help="request bodies to send, "
                        "comma-separated (json; npy: Content-Type application/x-npy)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (the model's "
                        "accuracy does not change the cost of a prediction)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.single, args.batches, args.epochs = 100, 8, 1
    threads = int(os.environ.get("TRAINYARD_PREDICT_THREADS", "1"))
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        job_id, key = train_and_export(home, args.epochs)
        from app import export_repository as exports
        from app.db import get_sessionmaker
        from app.training.data import load_builtin

        with get_sessionmaker()() as session:
            graph = exports.onnx_blob(session, job_id)
        assert graph is not None
        x, _ = load_builtin("digits")
        rows = np.ascontiguousarray(np.resize(x, (1000, 64)), dtype=np.float32)
        results: dict[str, dict[str, float]] = {}
        memory: dict[str, tuple[float, float]] = {}
        for workers in (int(w) for w in args.api_workers.split(",")):
            results |= served_by(home, workers, key, job_id, rows, args, memory)
        results["onnxruntime in-process"] = way_onnxruntime(graph, rows, args.single,
                                                            args.batches, threads)
        results["torch eager"] = way_torch(job_id, rows, args.single, args.batches, threads)
    report(results, memory, threads, len(graph))


def served_by(home: Path, workers: int, key: str, job_id: str, rows: np.ndarray,
              args: argparse.Namespace,
              memory: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Every HTTP way against one ``trainyard api --workers N``; its idle and served RSS."""
    port = free_port()
    api = start_api(home, port, workers)
    results = {}
    try:
        time.sleep(2.0)  # let it settle before reading its idle memory
        idle = group_rss_mb(api.pid)
        for kind in args.kinds.split(","):
            for clients in (1, args.clients):
                way = f"HTTP {kind}, {workers} API proc, {clients} client(s)"
                results[way] = way_http(f"http://127.0.0.1:{port}", key, job_id, rows, kind,
                                        clients, args.single, args.batches, api.pid)
        memory[f"{workers} API process(es)"] = (idle, group_rss_mb(api.pid))
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        api.wait(timeout=30)
    return results


def report(results: dict[str, dict[str, float]], memory: dict[str, tuple[float, float]],
           threads: int, graph_bytes: int) -> None:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"digits MLP 64-256-256-10, model.onnx {graph_bytes / 1024:.0f} KiB, "
          f"{threads} inference thread(s), {os.cpu_count()} cores, load average {load}")
    columns = list(next(iter(results.values())))
    short = [c.replace("_batch", " b").replace("rows_s_per_core", "/core").replace("_", " ")
             for c in columns]
    print(f"{'way':<38}" + "".join(f"{c:>13}" for c in short))
    for way, row in results.items():
        print(f"{way:<38}" + "".join(f"{row.get(c, float('nan')):>13,.1f}" for c in columns))
    for api, (idle, served) in memory.items():
        print(f"RSS of {api}: {idle:.0f} MB idle after start (onnxruntime not yet imported), "
              f"{served:.0f} MB after serving")
    print(json.dumps({"results": results, "api_rss_mb": memory, "load_average": load}))

if __name__ == "__main__":
    main()
