#!/usr/bin/env python
"""Per-epoch overhead of the SQL sink (``worker.sinks.SqlSink``) against the in-memory
``MemorySink``, on the digits example (examples/digits.json, 30 epochs).

Each run trains the same spec from the same seed on data prepared once (load, split and
standardize are not timed), so every run does identical training work and stops at the
same epoch; runs differ only in the sink and in the checkpoint cadence: ck1 and ck30 set
``training.checkpoint_every`` (epochs, which replaces the time rule), default sets
nothing (``training.checkpoint_every_seconds``' default, 30 s: on a run this short, only
the last epoch is written):

  memory/ck1, memory/ck30   MemorySink
  sqlite/ck1, sqlite/ck30   SqlSink on a fresh SQLite file (app.db.make_engine: WAL,
                            synchronous=NORMAL), tables from Base.metadata.create_all
  sqlite/nockpt             SqlSink behind a filter that drops every checkpoint from the
                            reports: the cost of the metric rows + progress alone
  postgres/...              the same three on a database this script creates and drops
                            (--postgres ADMIN_URL)
  pg-external/ck1, /ck30    Postgres with ``ALTER TABLE checkpoints ALTER COLUMN blob SET
                            STORAGE EXTERNAL`` (no TOAST compression of the blob): the
                            change proposed in bench/README.md (--no-proposal drops it)

A best epoch does not force a checkpoint (its weights travel in the next one), so ck30
and default write one checkpoint, at the last epoch. The cost of a checkpoint is measured
as ck1 minus nockpt (SQL side) plus the trainer's own serialization time (pack), and the
number of checkpoints each run wrote is reported.

Figures per run, all per epoch (ms): total = wall time of Trainer.run() / epochs;
sink = time inside the sink (epoch_end + should_stop), timed directly -- the SQL
overhead, independent of training-time noise; pack = Trainer.pack() (checkpoint
serialization, paid with any sink). Medians over interleaved rounds (round r starts
with configuration r mod k).

For the SQL sinks every run gets its own job row, inserted as 'queued' and claimed with
``app.repository.claim`` (status 'running', attempt 1, lease set), exactly as the worker
does, so the fenced writes of ``record_epoch`` / ``add_checkpoint`` succeed; after each
run the job's progress, metric rows and kept checkpoints are checked.

    .venv/bin/python bench/sink_overhead.py
    .venv/bin/python bench/sink_overhead.py \
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/sink_overhead.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from sqlalchemy import Engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from app import repository as repo  # noqa: E402
from app import spec as s  # noqa: E402
from app.clock import utcnow  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import make_engine  # noqa: E402
from app.models import Base, Checkpoint, Job, Metric  # noqa: E402
from app.training.data import load_arrays, prepare  # noqa: E402
from app.training.loop import Trainer  # noqa: E402
from app.training.sink import EpochReport, MemorySink  # noqa: E402

BENCH_DB = "trainyard_bench"


class TimedSink:
    """Wraps a sink and accumulates the wall time spent in its methods."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.epoch_end_s = 0.0
        self.should_stop_s = 0.0
        self.checkpoints = 0
        self.epochs = 0
        self.checkpoint_bytes = 0

    def epoch_end(self, report: EpochReport) -> None:
        self.epochs += 1
        if report.checkpoint is not None:
            self.checkpoints += 1
            self.checkpoint_bytes = len(report.checkpoint)
        t0 = time.perf_counter()
        self.inner.epoch_end(report)
        self.epoch_end_s += time.perf_counter() - t0

    def flush(self) -> None:
        """The run's end, as the worker calls it: epochs still waiting are written."""
        t0 = time.perf_counter()
        getattr(self.inner, "flush", lambda: None)()
        self.epoch_end_s += time.perf_counter() - t0

    def should_stop(self) -> str | None:
        t0 = time.perf_counter()
        reason = self.inner.should_stop()
        self.should_stop_s += time.perf_counter() - t0
        return reason

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> str | None:
        return self.inner.should_prune(epoch, metrics)


class TimedTrainer(Trainer):
    pack_s = 0.0

    def pack(self) -> bytes:
        t0 = time.perf_counter()
        blob = super().pack()
        self.pack_s += time.perf_counter() - t0
        return blob


class DropCheckpoints:
    """Forwards reports without their checkpoint: the metrics-only cost of a sink."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def epoch_end(self, report: EpochReport) -> None:
        self.inner.epoch_end(EpochReport(report.epoch, report.metrics, None, report.is_best))

    def flush(self) -> None:
        self.inner.flush()

    def should_stop(self) -> str | None:
        return self.inner.should_stop()

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> str | None:
        return self.inner.should_prune(epoch, metrics)


@dataclass
class Config:
    name: str
    make_sink: Callable[[dict[str, Any]], Any]
    checkpoint_every: int | None  # None: the default cadence (by time)
    target: SqlTarget | None = None
    runs: list[dict[str, float]] = field(default_factory=list)


class SqlTarget:
    """A database with the schema, one tenant, and a fresh claimed job per run."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        Base.metadata.create_all(engine)
        self.sessions = sessionmaker(bind=engine, expire_on_commit=False)
        with self.sessions() as session:
            repo.ensure_tenant(session, "bench", utcnow())
            session.commit()

    def new_running_job(self, spec: dict[str, Any]) -> tuple[str, int]:
        now = utcnow()
        job_id = f"job_bench_{uuid.uuid4().hex[:16]}"
        with self.sessions() as session:
            session.add(Job(id=job_id, tenant_id="bench", experiment_id=None,
                            name=spec.get("name", "bench"), spec=spec, task="classification",
                            queue="cpu", status="queued", attempt=0, max_attempts=3,
                            cancel_requested=False, epoch=0,
                            total_epochs=spec["training"]["epochs"], created_at=now,
                            updated_at=now, enqueued_at=now))
            session.commit()
            job = repo.claim(session, job_id, "bench:0", utcnow(), self.settings.lease_seconds)
            session.commit()
        assert job is not None and job.status == "running" and job.attempt == 1
        return job_id, job.attempt

    def sink(self, spec: dict[str, Any]) -> Any:
        from worker.lease import LeaseKeeper
        from worker.sinks import SqlSink

        job_id, attempt = self.new_running_job(spec)
        # the keeper's heartbeat thread is not started: a run is far shorter than the lease
        keeper = LeaseKeeper(self.sessions, self.settings, job_id=job_id, attempt=attempt)
        sink = SqlSink(keeper, self.settings)
        sink.bench_job_id = job_id  # type: ignore[attr-defined]
        return sink

    def check(self, job_id: str, epochs: int, checkpoints_kept: int) -> None:
        """The run really wrote its epochs (progress, metric rows, checkpoints)."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            n_metrics = len(session.scalars(select(Metric.id).where(Metric.job_id == job_id))
                            .all())
            n_ckpt = len(session.scalars(select(Checkpoint.id).where(
                Checkpoint.job_id == job_id)).all())
        assert job is not None and job.epoch == epochs, (job and job.epoch, epochs)
        assert n_metrics >= epochs, n_metrics
        assert min(1, checkpoints_kept) <= n_ckpt <= checkpoints_kept, n_ckpt


def _pg_admin(admin_url: str) -> Any:
    import psycopg

    url = make_url(admin_url)
    dsn = url.set(drivername="postgresql", database=url.database or "postgres")
    return psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True,
                           connect_timeout=5)


def create_pg_database(admin_url: str, name: str) -> str:
    with _pg_admin(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, name: str) -> None:
    with _pg_admin(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dropping(target: SqlTarget) -> Callable[[dict[str, Any]], Any]:
    return lambda spec: DropCheckpoints(target.sink(spec))


def cadence_name(checkpoint_every: int | None) -> str:
    return "default" if checkpoint_every is None else f"ck{checkpoint_every}"


def with_cadence(base: dict[str, Any], checkpoint_every: int | None,
                 **training: Any) -> dict[str, Any]:
    extra = {} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}
    return base | {"training": base["training"] | extra | training}


def run_once(spec_dict: dict[str, Any], data: Any, sink: Any) -> dict[str, float]:
    spec = s.JobSpec.model_validate(spec_dict)
    timed = TimedSink(sink)
    trainer = TimedTrainer(spec, data, timed, torch.device("cpu"))
    t0 = time.perf_counter()
    outcome = trainer.run()
    timed.flush()
    wall = time.perf_counter() - t0
    assert outcome.status == "completed", outcome
    e = timed.epochs
    return {"epochs": e, "checkpoints": timed.checkpoints,
            "total_ms": 1e3 * wall / e,
            "sink_ms": 1e3 * (timed.epoch_end_s + timed.should_stop_s) / e,
            "epoch_end_ms": 1e3 * timed.epoch_end_s / e,
            "should_stop_ms": 1e3 * timed.should_stop_s / e,
            "pack_ms": 1e3 * trainer.pack_s / e,
            "checkpoint_bytes": timed.checkpoint_bytes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(ROOT / "examples" / "digits.json"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (>= 3)")
    p.add_argument("--postgres", help="admin URL of a Postgres server; the script creates "
                   f"and drops databases named {BENCH_DB} and {BENCH_DB}_external there")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-proposal", action="store_true",
                   help="skip the pg-external configurations")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs, repeats = (3, 1) if args.quick else (args.epochs, max(3, args.repeats))

    base = json.loads(Path(args.spec).read_text())
    base["training"] = base.get("training", {}) | {"epochs": epochs, "device": "cpu"}
    spec0 = s.JobSpec.model_validate(base)
    arrays = load_arrays(spec0.data.source)
    data = prepare(spec0.data, arrays, torch.device("cpu"))

    tmp = tempfile.TemporaryDirectory(prefix="trainyard-bench-sink-")
    settings = Settings(home=Path(tmp.name))
    engines: list[Engine] = []
    pg_databases: list[str] = []
    targets: dict[str, SqlTarget] = {}
    try:
        sqlite_engine = make_engine(f"sqlite+pysqlite:///{Path(tmp.name) / 'bench.db'}")
        engines.append(sqlite_engine)
        targets["sqlite"] = SqlTarget(sqlite_engine, settings)
        if args.postgres:
            for name, external in (("postgres", False), ("pg-external", True)):
                if external and args.no_proposal:
                    continue
                database = BENCH_DB + ("_external" if external else "")
                pg_databases.append(database)
                engine = make_engine(create_pg_database(args.postgres, database))
                engines.append(engine)
                targets[name] = SqlTarget(engine, settings)
                if external:
                    with engine.begin() as conn:
                        conn.execute(text("ALTER TABLE checkpoints ALTER COLUMN blob "
                                          "SET STORAGE EXTERNAL"))
            with engines[-1].connect() as conn:
                pg_version = conn.execute(text("show server_version")).scalar()
            print(f"postgres server {pg_version}, databases {', '.join(pg_databases)}")

        configs: list[Config] = []
        cadences = (1, epochs, None)
        for ck in cadences:
            configs.append(Config(f"memory/{cadence_name(ck)}", lambda _spec: MemorySink(), ck))
        for name, target in targets.items():
            for ck in cadences:
                configs.append(Config(f"{name}/{cadence_name(ck)}", target.sink, ck, target))
            if name != "pg-external":  # (dropping checkpoints makes it plain postgres)
                configs.append(Config(f"{name}/nockpt", dropping(target), 1, target))

        print(f"sink overhead: spec {Path(args.spec).name}, {epochs} epochs, "
              f"{data.x_train.shape[0]} train rows, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {repeats} interleaved rounds, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        # warm-up (imports, first-call dispatch, SQL connection pools), not recorded
        for c in configs:
            spec = with_cadence(base, c.checkpoint_every, epochs=min(epochs, 2))
            run_once(spec, data, c.make_sink(spec))
        k = len(configs)
        for r in range(repeats):
            for j in range(k):
                c = configs[(r + j) % k]
                spec = with_cadence(base, c.checkpoint_every)
                sink = c.make_sink(spec)
                res = run_once(spec, data, sink)
                inner = getattr(sink, "inner", sink)
                if c.target is not None:
                    c.target.check(inner.bench_job_id, int(res["epochs"]),
                                   0 if isinstance(sink, DropCheckpoints) else 2)
                c.runs.append(res)

        def med(c: Config, key: str) -> float:
            return statistics.median(run[key] for run in c.runs)

        summary: dict[str, dict[str, float]] = {}
        for c in configs:
            summary[c.name] = {key: med(c, key) for key in c.runs[0]}
        print(f"\n{'config':<19} {'epochs':>6} {'ckpts':>5} {'total ms/ep':>11} "
              f"{'vs memory':>9} {'sink ms/ep':>10} {'(min..max)':>13} {'pack ms/ep':>10}")
        for c in configs:
            m = summary[c.name]
            mem = summary[f"memory/{cadence_name(c.checkpoint_every)}"]
            lo = min(run["sink_ms"] for run in c.runs)
            hi = max(run["sink_ms"] for run in c.runs)
            print(f"{c.name:<19} {m['epochs']:>6.0f} {m['checkpoints']:>5.0f} "
                  f"{m['total_ms']:>11.2f} {m['total_ms'] - mem['total_ms']:>+9.2f} "
                  f"{m['sink_ms']:>10.2f} {lo:>6.2f}..{hi:<6.2f} {m['pack_ms']:>10.2f}")
        size = summary["memory/ck1"]["checkpoint_bytes"]
        print(f"\ncheckpoint size {size / 1e6:.2f} MB; should_stop costs "
              f"{max(m['should_stop_ms'] for m in summary.values()):.3f} ms/epoch at most")
        print("split of the SQL sink's cost (ck1 runs; per epoch, and per checkpoint written):")
        mem = summary["memory/ck1"]
        pack_per = mem["pack_ms"] * mem["epochs"] / max(mem["checkpoints"], 1)
        print(f"  {'all sinks':<12} trainer pack {pack_per:6.2f} ms per checkpoint")
        for name in targets:
            ck = summary[f"{name}/ck1"]
            base_name = "postgres" if name == "pg-external" else name
            metrics_only = summary[f"{base_name}/nockpt"]["sink_ms"]
            per_ckpt = (ck["sink_ms"] - metrics_only) * ck["epochs"] / max(ck["checkpoints"], 1)
            print(f"  {name:<12} metrics+progress {metrics_only:6.2f} ms/epoch   checkpoint "
                  f"write {per_ckpt:6.2f} ms each ({ck['checkpoints']:.0f} of "
                  f"{ck['epochs']:.0f} epochs wrote one)")
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary, "runs": {
                c.name: c.runs for c in configs}}, indent=1))
    finally:
        for engine in engines:
            engine.dispose()
        for database in pg_databases:
            drop_pg_database(args.postgres, database)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
