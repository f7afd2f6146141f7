#!/usr/bin/env python
"""Where one job's time goes outside its training epochs, on a warm worker process.

The digits job (examples/digits.json: MLP 64-256-256-10, batch 64, 30 epochs) runs
through the real worker path, ``worker.execution.execute`` on a fresh SQLite file
(``app.db.make_engine``, tables from ``Base.metadata.create_all``): claim, checkpoint
look-up, data load and preparation, model build, the epochs, the epoch ends (validation,
metrics, checkpoint packing, the SQL sink), the final evaluation and summary, and the
finish write. Each phase is timed by wrapping the function that does it (for measurement
only; the wrappers add well under 1 µs per call against phases of 0.1 ms and more).

Side by side, interleaved in the same process, a minimal hand loop trains the same model
spec on the same prepared tensors for the same number of epochs (``x[perm[i:i+b]]``,
forward, loss, backward, fused Adam step; no validation, no records).

The first job is a warm-up (imports, first-call costs) and is not reported. Figures are
medians over ``--jobs`` jobs, in ms per job.

    .venv/bin/python bench/job_overhead.py             # 5 jobs
    .venv/bin/python bench/job_overhead.py --threads 1
    .venv/bin/python bench/job_overhead.py --quick     # 2 jobs of 3 epochs (smoke run)
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
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

import app.repository as repo  # noqa: E402
import app.training.loop as loop  # noqa: E402
import app.training.report as report  # noqa: E402
import app.training.runner as runner  # noqa: E402
import worker.execution as execution  # noqa: E402
from app import spec as s  # noqa: E402
from app.clock import utcnow  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import make_engine  # noqa: E402
from app.models import Base, Job  # noqa: E402
from app.training.data import load_arrays, prepare  # noqa: E402
from app.training.losses import build_loss  # noqa: E402
from app.training.metrics import Evaluator  # noqa: E402
from app.training.models import build_model  # noqa: E402
from app.training.optim import build_optimizer  # noqa: E402
from app.training.shapes import output_dim  # noqa: E402
from worker.lease import LeaseKeeper  # noqa: E402
from worker.sinks import SqlSink  # noqa: E402

# (label, owner, attribute, depth): depth 0 phases add up to the job; deeper ones are parts
# of the phase above them.
PHASES: list[tuple[str, Any, str, int]] = [
    ("claim transaction (execute's with_retry)", execution, "with_retry", 0),
    ("repo.claim", repo, "claim", 1),
    ("lease keeper start+stop", LeaseKeeper, "__enter__", 0),
    ("", LeaseKeeper, "__exit__", 0),
    ("checkpoint look-up", execution, "newest_good_checkpoint", 0),
    ("data: load arrays", runner, "load_arrays", 0),
    ("data: prepare (split, standardize, to device)", runner, "prepare", 0),
    ("model build (Trainer.__init__)", loop.Trainer, "__init__", 0),
    ("EPOCHS: train_epoch", loop.Trainer, "train_epoch", 0),
    ("epoch ends (end_epoch)", loop.Trainer, "end_epoch", 0),
    ("metrics + validation + host sync", loop.Trainer, "epoch_metrics", 1),
    ("best tracking (judge)", loop.Trainer, "judge", 1),
    ("checkpoint pack", loop.Trainer, "pack", 1),
    ("sink: should_prune", SqlSink, "should_prune", 1),
    ("sink: epoch_end (SQL write)", SqlSink, "epoch_end", 1),
    ("checkpoint rows (SqlSink._store)", SqlSink, "_store", 2),
    ("sink: flush (the waiting epochs)", SqlSink, "flush", 2),
    ("final evaluation + summary (finish)", loop.Trainer, "finish", 0),
    ("Evaluator.metrics (per-epoch val + final splits)", Evaluator, "metrics", 1),
    ("confusion matrix (Evaluator.labels)", Evaluator, "labels", 1),
    ("versions()", report, "versions", 1),
    ("finish write (_record)", execution, "_record", 0),
    ("request_advance", execution, "request_advance", 0),
]


class Clock:
    """Cumulative wall time per wrapped function, for the current job."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, attr: str, key: str) -> None:
        inner = getattr(owner, attr)
        spent = self.spent

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0

        setattr(owner, attr, timed)


def key_of(owner: Any, attr: str) -> str:
    return f"{getattr(owner, '__name__', owner)}.{attr}"


class Bench:
    def __init__(self, spec: dict[str, Any], db: Path, settings: Settings) -> None:
        self.spec, self.settings = spec, settings
        engine = make_engine(f"sqlite+pysqlite:///{db}")
        Base.metadata.create_all(engine)
        self.sessions: sessionmaker[Session] = sessionmaker(bind=engine, expire_on_commit=False)
        with self.sessions() as session:
            repo.ensure_tenant(session, "bench", utcnow())
            session.commit()
        self.clock = Clock()
        for _, owner, attr, _ in PHASES:
            self.clock.wrap(owner, attr, key_of(owner, attr))
        self.epochs_run = 0
        loop.Trainer.end_epoch = self._counting(loop.Trainer.end_epoch)  # type: ignore[method-assign]

    def _counting(self, inner: Callable[..., bool]) -> Callable[..., bool]:
        def counted(*args: Any) -> bool:
            self.epochs_run += 1
            return inner(*args)
        return counted

    def queued_job(self) -> str:
        now, job_id = utcnow(), f"job_bench_{uuid.uuid4().hex[:16]}"
        with self.sessions() as session:
            session.add(Job(id=job_id, tenant_id="bench", experiment_id=None,
                            name=self.spec["name"], spec=self.spec, task="classification",
                            queue="cpu", status="queued", attempt=0, max_attempts=3,
                            cancel_requested=False, epoch=0,
                            total_epochs=self.spec["training"]["epochs"], created_at=now,
                            updated_at=now, enqueued_at=now))
            session.commit()
        return job_id

    def job(self) -> dict[str, float]:
        job_id = self.queued_job()
        self.clock.spent.clear()
        self.epochs_run = 0
        t0 = time.perf_counter()
        result = execution.execute(job_id, self.sessions, self.settings)
        total = time.perf_counter() - t0
        assert result == "succeeded", result
        out = {k: 1e3 * v for k, v in self.clock.spent.items()}
        out["total"], out["epochs"] = 1e3 * total, float(self.epochs_run)
        return out


def hand_loop(spec: s.JobSpec, epochs: int) -> float:
    """The same model spec and data, trained by the minimal loop; ms for the epochs."""
    arrays = load_arrays(spec.data.source, None, None)
    data = prepare(spec.data, arrays, torch.device("cpu"), keep_dev=False)
    torch.manual_seed(spec.training.seed)
    model = build_model(spec.model, data.input_shape, output_dim(data.info, spec.loss))
    loss_fn = build_loss(spec.loss, data.info.n_classes, torch.device("cpu"))
    opt = build_optimizer(spec.optimizer, model)
    x, y, b = data.x_train, data.y_train, int(spec.training.batch_size)
    n = x.shape[0]
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, b):
            idx = perm[i:i + b]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
    return 1e3 * (time.perf_counter() - t0)


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="job_overhead_") as tmp:
        yield Path(tmp)


def phase_ms(run: dict[str, float], owner: Any, attr: str) -> float:
    value = run.get(key_of(owner, attr), 0.0)
    if owner is LeaseKeeper:  # start and stop on one line
        value += run.get(key_of(LeaseKeeper, "__exit__"), 0.0)
    return value


def report_table(runs: list[dict[str, float]], hands: list[float]) -> None:
    """Medians over jobs; 'other' and the overhead are per job first, then the median."""
    train_key = key_of(loop.Trainer, "train_epoch")
    for run in runs:
        top = sum(phase_ms(run, o, a) for label, o, a, d in PHASES if label and d == 0)
        run["other"] = run["total"] - top
        run["overhead"] = run["total"] - run[train_key]
    print(f"\n{'phase':<50} {'ms/job':>9}")
    for label, owner, attr, depth in PHASES:
        if label:
            value = statistics.median(phase_ms(r, owner, attr) for r in runs)
            print(f"{'  ' * depth + label:<50} {value:>9.1f}")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"{'other (execute minus the phases above)':<50} {med('other'):>9.1f}")
    print(f"{'execute() total':<50} {med('total'):>9.1f}")
    print(f"\nepochs run: {med('epochs'):.0f}; everything but train_epoch: "
          f"{med('overhead'):.1f} ms per job (target <= 100 ms)")
    hand = statistics.median(hands)
    ratios = [r[train_key] / h for r, h in zip(runs, hands, strict=True)]
    print(f"hand loop, same epochs: {hand:.1f} ms; train_epoch total / hand (per pair): "
          f"{statistics.median(ratios):.3f}; whole job / hand: {med('total') / hand:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=5, help="measured jobs (after one warm-up)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--spec", default=str(ROOT / "examples" / "digits.json"))
    p.add_argument("--json", help="also write the per-job figures here")
    p.add_argument("--quick", action="store_true", help="2 jobs of 3 epochs (smoke run)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec_dict = json.loads(Path(args.spec).read_text())
    jobs = args.jobs
    if args.quick:
        spec_dict["training"]["epochs"], jobs = 3, 2
    spec = s.JobSpec.model_validate(spec_dict)
    print(f"job overhead: {spec_dict['name']}, {spec.training.epochs} epochs, batch "
          f"{spec.training.batch_size}, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    with scratch() as tmp:
        bench = Bench(spec_dict, tmp / "jobs.db", Settings(home=tmp))
        warm = bench.job()  # imports, first-call costs
        hand_loop(spec, int(warm["epochs"]))
        runs, hands = [], []
        for _ in range(jobs):
            runs.append(bench.job())
            hands.append(hand_loop(spec, int(runs[-1]["epochs"])))
    print(f"(load at the end {os.getloadavg()[0]:.2f})")
    report_table(runs, hands)
    if args.json:
        Path(args.json).write_text(json.dumps({"jobs": runs, "hand_ms": hands}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
