#!/usr/bin/env python
"""Where the core's per-step time goes, relative to the minimal hand loop of
bench/core_throughput.py (same data, same 100-512-512-10 MLP, Adam lr 1e-3).

Part 1, a ladder: loops that add the core's differences to the hand loop one at a time,
then the Trainer itself; each variant runs `--chunk-steps` steps per turn, in a fresh
random order every round, and the delta to the hand loop is the median over rounds of
the paired per-step difference. Every rung up to "Trainer/loopadam" uses torch's CPU
default Adam (a Python loop over the tensors), so the rungs add loop costs only:

  hand               the minimal loop (nn.Sequential, Adam(model.parameters()))
  +app model         the model the core builds (MLP of MLPBlocks: Linear, Identity norm,
                     ReLU, Identity dropout; flatten)
  +2 groups          ... and the core's parameter groups (build_optimizer: one group
                     when the weight decay is 0, as here; decay / no decay otherwise)
  +bookkeeping       ... and the core's per-step records: step_loss[step] = loss;
                     step_correct[step] = (out.argmax(1) == y).sum()
  Trainer/loopadam   Trainer.train_epoch() (paused/resumed through its sink), optimizer
                     forced to the default for-loop implementation
  Trainer            Trainer.train_epoch() as shipped (build_optimizer's implementation)
  hand+fused         the minimal loop with Adam(fused=True)

Part 2, the shipped Trainer against hand+fused (the same optimizer kernel), and the
Trainer with the two costs it no longer pays put back (for measurement only):
  +Identity calls    the MLP's forward calling its Identity norm/dropout modules again
  +2 groups          the decay/no-decay parameter groups at weight decay 0 (two fused
                     kernel calls per step instead of one)
  +both (before)     the two together: the Trainer as it was before issue 12 item 4
What remains between Trainer and hand+fused is the per-step accuracy count and the loop
itself (should_stop, train_step plumbing, step_loss/step_correct writes).

Part 3: one optimizer.step() of the core's optimizer for that model: the for-loop
implementation (torch's CPU default), foreach, and fused.

    .venv/bin/python bench/core_overhead.py                 # batch 32, torch's threads
    .venv/bin/python bench/core_overhead.py --batch 256 --threads 1
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import core_throughput as ct  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from app import spec as s  # noqa: E402
from app.training.models import MLPBlock, build_model  # noqa: E402
from app.training.optim import build_optimizer  # noqa: E402


class Variant:
    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, b: int, *, app: bool = False,
                 groups: bool = False, record: bool = False, fused: bool = False) -> None:
        torch.manual_seed(ct.SEED)
        self.name, self.x, self.y, self.b, self.record = name, x, y, b, record
        n = x.shape[0]
        self.model = (build_model(s.MLP(hidden=list(ct.HIDDEN)), (x.shape[1],), ct.N_CLASSES)
                      if app else ct.plain_mlp(x.shape[1]))
        self.opt = (build_optimizer(s.Adam(), self.model) if groups
                    else torch.optim.Adam(self.model.parameters(), lr=1e-3))
        for group in self.opt.param_groups:  # the for-loop implementation, or fused
            group["fused"], group["foreach"] = (True, None) if fused else (None, False)
        self.perm = torch.randperm(n)
        self.steps = n // b
        self.step_loss = torch.zeros(self.steps)
        self.step_correct = torch.zeros(self.steps)
        self.step = 0
        self.times: list[float] = []

    def run(self, k: int) -> float:
        model, opt, perm, x, y, bs = self.model, self.opt, self.perm, self.x, self.y, self.b
        t0 = time.perf_counter()
        for _ in range(k):
            step = self.step
            if step >= self.steps:
                step = self.step = 0
            idx = perm[step * bs:(step + 1) * bs]
            yb = y[idx]
            out = model(x[idx])
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if self.record:
                self.step_loss[step] = loss.detach()
                self.step_correct[step] = (out.argmax(dim=1) == yb).sum()
            self.step += 1
        return time.perf_counter() - t0


class TrainerVariant:
    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, b: int,
                 loop_adam: bool) -> None:
        n = x.shape[0]
        val = (x[: n // 100], y[: n // 100])
        self.name = name
        self.c = ct.TrainerContender(x, y, val, val, b, 10**6, loop_adam=loop_adam)
        self.c.begin(n)
        self.left = self.c.full_steps
        self.times: list[float] = []

    def run(self, k: int) -> float:
        if self.left < k:  # finish the epoch untimed, start the next
            if self.left:
                self.c.chunk(self.left)
            self.c.finish()
            self.c.begin(self.c.n)
            self.left = self.c.full_steps
        self.left -= k
        return self.c.chunk(k)


def time_interleaved(variants: list[Any], chunk: int, rounds: int) -> None:
    """One warm-up chunk each, then ``rounds`` chunks per variant in a seeded random order,
    so drift on the machine falls on every variant alike."""
    for v in variants:
        v.run(chunk)
    rng = random.Random(ct.SEED)
    for _ in range(rounds):
        for v in rng.sample(variants, len(variants)):
            v.times.append(v.run(chunk))


def ladder(x: torch.Tensor, y: torch.Tensor, b: int, chunk: int, rounds: int) -> None:
    variants: list[Any] = [
        Variant("hand", x, y, b),
        Variant("+app model", x, y, b, app=True),
        Variant("+2 groups", x, y, b, app=True, groups=True),
        Variant("+bookkeeping", x, y, b, app=True, groups=True, record=True),
        TrainerVariant("Trainer/loopadam", x, y, b, loop_adam=True),
        TrainerVariant("Trainer", x, y, b, loop_adam=False),
        Variant("hand+fused", x, y, b, fused=True),
    ]
    time_interleaved(variants, chunk, rounds)
    hand = variants[0]
    print(f"\nladder: batch {b}, {rounds} rounds x {chunk} steps, random order "
          f"(load {os.getloadavg()[0]:.2f})")
    print(f"  {'variant':<17} {'us/step':>8} {'x hand':>7} {'delta us/step':>14} "
          f"{'(IQR)':>13}")
    for v in variants:
        deltas = [1e6 * (t - h) / chunk for h, t in zip(hand.times, v.times, strict=True)]
        ratios = [h / t for h, t in zip(hand.times, v.times, strict=True)]
        q = statistics.quantiles(deltas, n=4)
        print(f"  {v.name:<17} {1e6 * statistics.median(v.times) / chunk:>8.0f} "
              f"{statistics.median(ratios):>7.3f} {statistics.median(deltas):>+14.1f} "
              f"{q[0]:>+6.0f}..{q[2]:<+6.0f}")


def ablation(x: torch.Tensor, y: torch.Tensor, b: int, chunk: int, rounds: int) -> None:
    def trainer(name: str, identity_calls: bool = False, two_groups: bool = False) -> Any:
        v = TrainerVariant(name, x, y, b, loop_adam=False)
        t = v.c.trainer
        if identity_calls:  # the forward before it skipped its Identity norm/dropout
            for block in (m for m in t.model.modules() if isinstance(m, MLPBlock)):
                block.normed = block.dropped = True
        if two_groups:  # the decay/no-decay groups the core built before, at decay 0
            params = list(t.model.parameters())
            t.optimizer = torch.optim.Adam(
                [{"params": [p for p in params if p.dim() >= 2]},
                 {"params": [p for p in params if p.dim() < 2]}], lr=1e-3, fused=True)
        return v

    variants: list[Any] = [
        Variant("hand+fused", x, y, b, fused=True),
        trainer("Trainer"),
        trainer("+Identity calls", identity_calls=True),
        trainer("+2 groups", two_groups=True),
        trainer("+both (before)", True, True),
    ]
    time_interleaved(variants, chunk, rounds)
    base = variants[0]
    print(f"\nablation of the shipped Trainer: batch {b}, {rounds} rounds x {chunk} steps "
          f"(load {os.getloadavg()[0]:.2f})")
    print(f"  {'variant':<17} {'us/step':>8} {'delta to hand+fused':>20} {'(IQR)':>13}")
    for v in variants:
        deltas = [1e6 * (t - h) / chunk for h, t in zip(base.times, v.times, strict=True)]
        q = statistics.quantiles(deltas, n=4)
        print(f"  {v.name:<17} {1e6 * statistics.median(v.times) / chunk:>8.0f} "
              f"{statistics.median(deltas):>+20.1f} {q[0]:>+6.0f}..{q[2]:<+6.0f}")


def optimizer_steps(d: int, b: int, rounds: int) -> None:
    variants = {}
    for groups in (False, True):
        for mode in ("for-loop", "foreach", "fused"):
            torch.manual_seed(ct.SEED)
            model = build_model(s.MLP(hidden=list(ct.HIDDEN)), (d,), ct.N_CLASSES)
            opt = (build_optimizer(s.Adam(), model) if groups
                   else torch.optim.Adam(model.parameters(), lr=1e-3))
            for group in opt.param_groups:
                group["foreach"] = mode == "foreach"
                group["fused"] = True if mode == "fused" else None
            F.cross_entropy(model(torch.randn(b, d)), torch.zeros(b, dtype=torch.long)).backward()
            variants[f"{'core (build_optimizer)' if groups else 'hand (1 group)'}, {mode}"] = opt
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(ct.SEED)
    for _ in range(rounds):
        for name in rng.sample(list(variants), len(variants)):
            opt = variants[name]
            t0 = time.perf_counter()
            for _ in range(20):
                opt.step()
            times[name].append((time.perf_counter() - t0) / 20)
    print(f"\nAdam.step() for the {d}-{ct.HIDDEN[0]}-{ct.HIDDEN[1]}-{ct.N_CLASSES} MLP "
          f"({sum(p.numel() for g in opt.param_groups for p in g['params']):,} params), "
          f"median of {rounds} x 20 steps")
    for name, ts in times.items():
        print(f"  {name:<28} {1e6 * statistics.median(ts):8.0f} us")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--chunk-steps", type=int, default=0, help="0: ceil(4000 / batch)")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, rounds = (4_096, 3) if args.quick else (args.rows, args.rounds)
    chunk = args.chunk_steps or max(1, -(-4000 // args.batch))
    if args.quick:
        chunk = 4
    print(f"core overhead: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus, {rows} x 100 rows")
    x_all, y_all = ct.make_data(rows, 100, 0)
    ladder(x_all, y_all, args.batch, chunk, rounds)
    ablation(x_all, y_all, args.batch, chunk, rounds)
    optimizer_steps(100, args.batch, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
