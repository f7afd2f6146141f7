#!/usr/bin/env python
"""Training throughput of the core (``app.training.loop.Trainer``) against a minimal
hand-written PyTorch loop, side by side in one process.

The claim under test: the core's training throughput is at least 0.95x that of a
minimal hand-written loop (randperm + slicing + forward/backward/step) on the same
model and data, at batch 32 and at batch 256, on 200,000 x 100 synthetic rows with a
100-512-512-10 MLP.

Contenders (each owns its model and optimizer, initialised from the same seed; all use
the same torch.get_num_threads(); numpy/sklearn BLAS is limited to the same count):

  hand         the baseline: tensors in memory; per epoch ``perm = torch.randperm(n)``;
               per batch ``idx = perm[i:i+b]; out = model(x[idx]);
               loss = F.cross_entropy(out, y[idx]); opt.zero_grad(); loss.backward();
               opt.step()`` on an nn.Sequential of Linear/ReLU with Adam(lr=1e-3).
  hand+appmlp  the same loop on the model the core builds (``build_model``), to separate
               the cost of the core's module structure from the cost of its loop.
  trainer      the core as it is: ``Trainer.train_epoch()`` (its optimizer from
               ``build_optimizer``) on an ``app.training.data.Prepared`` holding the
               same tensors (train = all n rows; val and test are separate 30,000-row
               blocks, like a default 70/15/15 job). Only train_epoch() is timed;
               end_epoch() (val evaluation, metrics, checkpoint pack, sink report) is
               timed on its own and reported in the "epoch end" column.
  dataloader   reference: the hand loop fed by ``DataLoader(TensorDataset(x, y),
               batch_size=b, shuffle=True)`` (default collate).
  sklearn      reference: ``MLPClassifier((512, 512), solver="adam", batch_size=b,
               alpha=0)``; ``partial_fit`` passes over float32 rows.

Equal-terms rows (--no-equal-terms drops them). The core builds its optimizer with torch's
fused kernel (app/training/optim.py, since 5061b91), the minimal loop uses torch's CPU
default (a Python loop over the tensors), so "trainer" vs "hand" compares loops AND
optimizer implementations. These two rows separate the two:
  trainer/loopadam  the Trainer with its optimizer forced to the default for-loop
               implementation (group["fused"] = None, group["foreach"] = False): the
               core's loop and bookkeeping against the hand loop, same optimizer.
  hand+fused   the minimal loop with Adam(fused=True): the same optimizer as the core.

Work: every contender trains the same measured "epochs": a full epoch of n rows, or,
where ``--rows-per-measure`` says fewer rows (batch 32: 60,000 by default), the first
ceil(rows / b) batches of a fresh permutation over all n rows (for the trainer,
``trainer.steps`` is capped to that count, so train_epoch()/end_epoch() run their normal
code on a truncated epoch).

Alternation: this machine is shared, and load bursts last seconds, so the contenders
alternate inside each measured epoch, every ceil(--chunk-rows / b) steps (125 steps at
batch 32, 16 at batch 256), in a fresh random order for every chunk (seeded). The
trainer is paused between chunks through its sink's ``should_stop`` (the preemption
path) and the next train_epoch() call continues the same epoch from that step; the hand
loop keeps its permutation and position. "x hand" is the median over all chunks of the paired ratio
(hand chunk seconds / contender chunk seconds), with its inter-quartile range; "x hand,
epoch totals" is the median over epochs of the ratio of summed times; samples/s is the
median over epochs. ``--chunk-rows 0`` alternates whole epochs instead.

sklearn runs apart: after the torch contenders' epoch, with a 0.5 s pause around it.
OpenBLAS worker threads (sklearn) and OpenMP worker threads (torch) both busy-wait after
a call, so with 2 threads, interleaving them stalls whichever runs next (measured: the
contender that followed sklearn ran 1.6x slower). Its ratio is therefore not time-paired.

Run from the repository root:
    .venv/bin/python bench/core_throughput.py              # full size (minutes)
    .venv/bin/python bench/core_throughput.py --threads 1  # one thread for everyone
    .venv/bin/python bench/core_throughput.py --quick      # smoke run (~10 s, 1 thread)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

SEED = 0
N_CLASSES = 10
HIDDEN = (512, 512)


# ----------------------------------------------------------------------------- data


def make_data(n: int, d: int, n_extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n + n_extra rows of standard-normal features with labels from a fixed random
    linear map (a learnable task, so the nets do real work; speed does not depend on it)."""
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(n + n_extra, d, generator=g)
    w = torch.randn(d, N_CLASSES, generator=g)
    y = (x @ w).argmax(dim=1)
    return x.contiguous(), y.contiguous()


# ------------------------------------------------------------------------ contenders
#
# A contender trains "epochs" of `rows` rows in chunks: begin(rows) starts an epoch,
# chunk(k) runs its next k steps and returns the seconds they took, finish() ends the
# epoch and returns the seconds the epoch end took (None: nothing to do).


def plain_mlp(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, HIDDEN[0]), nn.ReLU(), nn.Linear(HIDDEN[0], HIDDEN[1]),
                         nn.ReLU(), nn.Linear(HIDDEN[1], N_CLASSES))


class Contender:
    name = ""

    def __init__(self) -> None:
        self.epochs: list[list[float]] = []  # chunk seconds, per measured epoch
        self.end_times: list[float] = []

    def begin(self, rows: int) -> None:
        raise NotImplementedError

    def chunk(self, k: int) -> float:
        raise NotImplementedError

    def finish(self) -> float | None:
        return None


class HandLoop(Contender):
    """The baseline, verbatim: randperm per epoch, index slices, forward/backward/step."""

    def __init__(self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 b: int) -> None:
        super().__init__()
        self.name, self.model, self.x, self.y, self.b = name, model, x, y, b
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def begin(self, rows: int) -> None:
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def chunk(self, k: int) -> float:
        model, opt, x, y, b = self.model, self.opt, self.x, self.y, self.b
        t0 = time.perf_counter()
        if self.perm is None:
            self.perm = torch.randperm(x.shape[0])
        perm, i = self.perm, self.pos
        for i in range(self.pos, self.pos + k * b, b):
            idx = perm[i:i + b]
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        self.pos += k * b
        return seconds


class Loader(Contender):
    """Reference: the same loop fed by DataLoader(TensorDataset, shuffle=True)."""

    name = "dataloader"

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, b: int) -> None:
        from torch.utils.data import DataLoader, TensorDataset

        super().__init__()
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.loader = DataLoader(TensorDataset(x, y), batch_size=b, shuffle=True,
                                 generator=torch.Generator().manual_seed(SEED + 1))

    def begin(self, rows: int) -> None:
        self.it: object | None = None

    def chunk(self, k: int) -> float:
        model, opt = self.model, self.opt
        t0 = time.perf_counter()
        if self.it is None:
            self.it = iter(self.loader)  # the sampler draws its permutation here
        it = self.it
        for _ in range(k):
            xb, yb = next(it)  # type: ignore[call-overload]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0


class StepBudgetSink:
    """MemorySink's behaviour plus a step budget: should_stop() asks the trainer to stop
    after `budget` more batches -- the path a preemption takes; the next train_epoch()
    call continues the same epoch (same permutation) from that step."""

    def __init__(self) -> None:
        self.budget, self.calls, self.reports = 0, 0, 0

    def should_stop(self) -> str | None:
        self.calls += 1
        return "preempted" if self.calls > self.budget else None

    def epoch_end(self, report: object) -> None:
        self.reports += 1

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> None:
        return None


class TrainerContender(Contender):
    """Trainer.train_epoch() on a Prepared holding the same tensors."""

    name = "trainer"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                 test: tuple[torch.Tensor, torch.Tensor], b: int, checkpoint_every: int,
                 loop_adam: bool = False) -> None:
        from app import spec as s
        from app.training.data import Prepared, Standardizer
        from app.training.loop import Trainer
        from app.training.shapes import DataInfo

        super().__init__()
        n, d = x.shape
        total = n + val[0].shape[0] + test[0].shape[0]
        spec = s.JobSpec.model_validate({
            "name": "bench-core",
            "data": {"source": {"synthetic": "make_classification", "n_samples": total,
                                "n_features": d, "n_informative": 10, "n_classes": N_CLASSES}},
            "model": {"kind": "mlp", "hidden": list(HIDDEN), "activation": "relu",
                      "dropout": 0.0, "norm": "none"},
            "loss": {"kind": "cross_entropy"},
            "optimizer": {"kind": "adam", "lr": 1e-3},
            "training": {"epochs": 1_000_000, "batch_size": b, "seed": SEED, "device": "cpu",
                         "checkpoint_every": checkpoint_every},
        })
        data = Prepared(DataInfo("classification", total, d, N_CLASSES), (d,), x, y,
                        val[0], val[1], test[0], test[1],
                        Standardizer.identity(d), Standardizer.identity(1))
        self.sink = StepBudgetSink()
        self.trainer = Trainer(spec, data, self.sink, torch.device("cpu"))  # seeds itself
        if loop_adam:  # the optimizer implementation the hand loop gets by default on CPU
            self.name = "trainer/loopadam"
            for group in self.trainer.optimizer.param_groups:
                group["fused"], group["foreach"] = None, False
        self.full_steps, self.n, self.b = self.trainer.steps, n, b

    def begin(self, rows: int) -> None:
        # rows < n: a truncated epoch, the first ceil(rows / b) batches of a permutation
        # over all n rows; train_epoch() and end_epoch() run unchanged on it
        t = self.trainer
        t.steps = min(self.full_steps, -(-rows // self.b))
        t.rows_per_epoch = min(self.n, t.steps * self.b)

    def chunk(self, k: int) -> float:
        self.sink.budget, self.sink.calls = k, 0
        t0 = time.perf_counter()
        reason = self.trainer.train_epoch()
        seconds = time.perf_counter() - t0
        self.done = reason is None
        return seconds

    def finish(self) -> float:
        t = self.trainer
        assert self.done, "the trainer's epoch did not complete"
        t0 = time.perf_counter()
        t.end_epoch()  # val evaluation, metrics (one host sync), checkpoint pack, report
        return time.perf_counter() - t0


class SklearnContender(Contender):
    """Reference: MLPClassifier((512, 512), adam, batch_size=b); one partial_fit (= one
    pass) per chunk over the chunk's rows of a random permutation (gathered untimed)."""

    name = "sklearn"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, b: int) -> None:
        from sklearn.neural_network import MLPClassifier

        super().__init__()
        self.xn, self.yn, self.b = x.numpy(), y.numpy(), b
        self.clf = MLPClassifier(hidden_layer_sizes=HIDDEN, solver="adam", batch_size=b,
                                 max_iter=1, learning_rate_init=1e-3, alpha=0.0, shuffle=True,
                                 random_state=SEED)
        self.rng = np.random.default_rng(SEED)
        self.started = False

    def begin(self, rows: int) -> None:
        self.order = self.rng.permutation(self.xn.shape[0])[:rows]
        self.pos = 0

    def chunk(self, k: int) -> float:
        from sklearn.exceptions import ConvergenceWarning

        rows = self.order[self.pos:self.pos + k * self.b]
        self.pos += k * self.b
        xs, ys = self.xn[rows], self.yn[rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)  # batch_size clipped (tiny runs)
            t0 = time.perf_counter()
            if self.started:
                self.clf.partial_fit(xs, ys)
            else:
                self.clf.partial_fit(xs, ys, classes=np.arange(N_CLASSES))
                self.started = True
            return time.perf_counter() - t0


# ------------------------------------------------------------------------- benchmark


def run_epoch(contenders: list[Contender], rows: int, b: int, chunk_steps: int,
              rng: random.Random, record: bool) -> None:
    """One measured epoch for every contender, alternating every `chunk_steps` steps in a
    fresh random order each time (so no contender always follows the same one)."""
    steps = -(-rows // b)
    for c in contenders:
        c.begin(rows)
        if record:
            c.epochs.append([])
    for first in range(0, steps, chunk_steps):
        n_steps = min(chunk_steps, steps - first)
        for c in rng.sample(contenders, len(contenders)):
            seconds = c.chunk(n_steps)
            if record:
                c.epochs[-1].append(seconds)
    for c in contenders:
        end = c.finish()
        if record and end is not None:
            c.end_times.append(end)


def bench_batch(b: int, x: torch.Tensor, y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                test: tuple[torch.Tensor, torch.Tensor], rows: int, repeats: int,
                warmup_rows: int, chunk_rows: int, with_sklearn: bool, with_dataloader: bool,
                checkpoint_every: int, equal_terms: bool, pause: float) -> dict[str, object]:
    from app import spec as s
    from app.training.models import build_model

    d = x.shape[1]
    torch.manual_seed(SEED)
    contenders: list[Contender] = [HandLoop("hand", plain_mlp(d), x, y, b)]
    torch.manual_seed(SEED)
    app_mlp = build_model(s.MLP(hidden=list(HIDDEN)), (d,), N_CLASSES)
    contenders.append(HandLoop("hand+appmlp", app_mlp, x, y, b))
    contenders.append(TrainerContender(x, y, val, test, b, checkpoint_every))
    if equal_terms:
        contenders.append(TrainerContender(x, y, val, test, b, checkpoint_every,
                                           loop_adam=True))
        torch.manual_seed(SEED)
        fused = HandLoop("hand+fused", plain_mlp(d), x, y, b)
        fused.opt = torch.optim.Adam(fused.model.parameters(), lr=1e-3, fused=True)
        contenders.append(fused)
    if with_dataloader:
        torch.manual_seed(SEED)
        contenders.append(Loader(plain_mlp(d), x, y, b))
    # sklearn runs apart, after the torch contenders' epoch: OpenBLAS's worker threads
    # busy-wait after each call and torch's OpenMP threads do the same, so with more than
    # one thread, interleaving them makes whichever runs next stall on a stolen core.
    apart: list[Contender] = [SklearnContender(x, y, b)] if with_sklearn else []

    steps = -(-rows // b)
    chunk_steps = steps if chunk_rows <= 0 else max(1, min(steps, -(-chunk_rows // b)))
    warm = min(max(warmup_rows, b), rows)  # allocator, first-call dispatch, sklearn init
    rng = random.Random(SEED)
    run_epoch(contenders, warm, b, -(-warm // b), rng, record=False)
    for c in apart:
        run_epoch([c], warm, b, -(-warm // b), rng, record=False)
    for r in range(repeats):
        t0 = time.perf_counter()
        run_epoch(contenders, rows, b, chunk_steps, rng, record=True)
        for c in apart:
            time.sleep(pause)  # let spinning OpenMP threads go idle
            run_epoch([c], rows, b, chunk_steps, rng, record=True)
            time.sleep(pause)
        print(f"  [batch {b}] epoch {r + 1}/{repeats} done in {time.perf_counter() - t0:.1f} s"
              f" (load {os.getloadavg()[0]:.2f}): " + ", ".join(
                  f"{c.name} {sum(c.epochs[-1]):.2f}s" for c in contenders + apart),
              file=sys.stderr, flush=True)

    hand = contenders[0]
    results = {}
    for c in contenders + apart:
        totals = [sum(e) for e in c.epochs]
        chunk_ratios = [h / t for he, ce in zip(hand.epochs, c.epochs, strict=True)
                        for h, t in zip(he, ce, strict=True)]
        q = statistics.quantiles(chunk_ratios, n=4) if len(chunk_ratios) > 1 else [1, 1, 1]
        results[c.name] = {
            "samples_per_s": rows / statistics.median(totals),
            "us_per_step": 1e6 * statistics.median(totals) / steps,
            "ratio_to_hand": statistics.median(chunk_ratios),
            "ratio_q1": q[0], "ratio_q3": q[2],
            "ratio_of_epoch_times": statistics.median(
                sum(he) / sum(ce) for he, ce in zip(hand.epochs, c.epochs, strict=True)),
            "epoch_seconds": totals,
            "epoch_end_ms": (1e3 * statistics.median(c.end_times)) if c.end_times else None,
            "interleaved": c not in apart,
        }
    by_name = {c.name: c for c in contenders}
    equal = {}
    for slow, base in (("trainer/loopadam", "hand"), ("trainer", "hand+fused")):
        if slow in by_name and base in by_name:
            equal[f"{slow} vs {base}"] = statistics.median(
                h / t for he, ce in zip(by_name[base].epochs, by_name[slow].epochs, strict=True)
                for h, t in zip(he, ce, strict=True))
    return {"batch_size": b, "rows_per_measure": rows, "steps_per_measure": steps,
            "chunk_steps": chunk_steps, "repeats": repeats, "results": results,
            "equal_terms": equal}


def print_table(res: dict[str, Any]) -> None:
    print(f"\nbatch {res['batch_size']}: {res['rows_per_measure']} rows "
          f"({res['steps_per_measure']} steps) per measured epoch, {res['repeats']} epochs "
          f"per contender, alternating every {res['chunk_steps']} steps")
    print(f"  {'contender':<16} {'samples/s':>10} {'us/step':>8} {'x hand':>7} "
          f"{'(IQR)':>13} {'x hand, epoch totals':>21} {'epoch end':>10}")
    for name, r in res["results"].items():
        end = f"{r['epoch_end_ms']:.0f} ms" if r["epoch_end_ms"] is not None else ""
        if not r["interleaved"]:
            end += " (apart*)"
        print(f"  {name:<16} {r['samples_per_s']:>10,.0f} {r['us_per_step']:>8.0f} "
              f"{r['ratio_to_hand']:>7.3f} {r['ratio_q1']:>6.3f}..{r['ratio_q3']:<6.3f} "
              f"{r['ratio_of_epoch_times']:>21.3f} {end:>10}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="training rows (n)")
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--batches", default="32,256", help="comma-separated batch sizes")
    p.add_argument("--rows-per-measure", default="32:60000",
                   help="b:rows pairs; a batch size not listed trains a full epoch (n rows)")
    p.add_argument("--repeats", type=int, default=5,
                   help="measured epochs per contender (>= 3)")
    p.add_argument("--chunk-rows", type=int, default=4000,
                   help="alternate the contenders every ceil(chunk_rows / b) steps "
                        "(0: whole epochs, rotated per round)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--checkpoint-every", type=int, default=1,
                   help="trainer checkpoint_every (affects only the epoch-end column)")
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--no-dataloader", action="store_true")
    p.add_argument("--no-equal-terms", action="store_true",
                   help="drop the trainer/loopadam and hand+fused rows")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    args = p.parse_args(argv)

    if args.quick and not args.threads:
        args.threads = 1  # a smoke run: immune to 2-thread stalls on a busy machine
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batches = [int(b) for b in args.batches.split(",")]
    per_measure = {int(k): int(v) for k, v in
                   (pair.split(":") for pair in args.rows_per_measure.split(",") if pair)}
    n, repeats, eval_rows, warmup = args.rows, max(3, args.repeats), 30_000, 3_000
    if args.quick:
        n, repeats, eval_rows, warmup = 2_048, 3, 256, 64
        per_measure = {b: 512 for b in batches}
        args.chunk_rows = 256

    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=threads)  # numpy/sklearn BLAS: same thread count
    except ImportError:  # pragma: no cover
        limiter = None

    x_all, y_all = make_data(n, args.features, 2 * eval_rows)
    x, y = x_all[:n], y_all[:n]
    val = (x_all[n:n + eval_rows], y_all[n:n + eval_rows])
    test = (x_all[n + eval_rows:], y_all[n + eval_rows:])
    import subprocess

    import sklearn

    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip() or "?"
    from app import spec as s
    from app.training.optim import build_optimizer

    group = build_optimizer(s.Adam(), nn.Linear(2, 2)).param_groups[0]
    impl = ("fused" if group.get("fused") else "foreach" if group.get("foreach")
            else "for-loop (torch's CPU default)")
    header = {"git": git, "core_adam": impl, "python": platform.python_version(),
              "torch": torch.__version__,
              "numpy": np.__version__, "sklearn": sklearn.__version__,
              "torch_threads": threads, "interop_threads": torch.get_num_interop_threads(),
              "cpus": os.cpu_count(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "-"),
              "rows": n, "features": args.features,
              "model": f"{args.features}-{HIDDEN[0]}-{HIDDEN[1]}-{N_CLASSES}"}
    print("core throughput: " + ", ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}", flush=True)
    results: list[dict[str, Any]] = []
    for b in batches:
        rows = min(n, per_measure.get(b, n))
        res = bench_batch(b, x, y, val, test, rows, repeats, warmup, args.chunk_rows,
                          not args.no_sklearn, not args.no_dataloader, args.checkpoint_every,
                          not args.no_equal_terms, 0.0 if args.quick else 0.5)
        print_table(res)
        results.append(res)
        if any(not r["interleaved"] for r in res["results"].values()):
            print("  * run apart, after each torch epoch: its ratios are not time-paired")
        sys.stdout.flush()
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    for res in results:
        ratio = res["results"]["trainer"]["ratio_to_hand"]
        if args.quick:
            print("(--quick: a smoke run; its figures mean nothing)")
            break
        print(f"claim (trainer >= 0.95x hand) at batch {res['batch_size']}: "
              f"{'MET' if ratio >= 0.95 else 'NOT MET'} ({ratio:.3f}x); same optimizer on "
              "both sides: " + ", ".join(f"{k} {v:.3f}x" for k, v in res["equal_terms"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))
    del limiter
    return 0


if __name__ == "__main__":
    sys.exit(main())
