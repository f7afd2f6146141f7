#!/usr/bin/env python
"""What training.record_grad_norms costs per step in the first epoch (the only epoch it
records): the depth example's networks (spirals, width 32, batch 32, Adam) at a few depths,
each first epoch timed with the option off and on, in alternating order, over several
rounds; the median per-step time of each and their difference.

    .venv/bin/python bench/grad_norms.py                  # one thread
    .venv/bin/python bench/grad_norms.py --rounds 9 --depths 2 8 24 48
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from app import spec as s
from app.training.data import load_arrays, prepare
from app.training.loop import Trainer
from app.training.sink import MemorySink


def spec(depth: int, record: bool) -> s.JobSpec:
    return s.JobSpec.model_validate({
        "data": {"source": {"synthetic": "spirals", "n_samples": 2000}},
        "model": {"kind": "mlp", "hidden": [32] * depth},
        "optimizer": {"kind": "adam", "lr": 0.003},
        "training": {"epochs": 1, "batch_size": 32, "device": "cpu",
                     "record_grad_norms": record}})


def ms_per_step(depth: int, record: bool) -> float:
    job = spec(depth, record)
    data = prepare(job.data, load_arrays(job.data.source), torch.device("cpu"))
    trainer = Trainer(job, data, MemorySink(), torch.device("cpu"))
    start = time.perf_counter()
    trainer.train_epoch()
    return (time.perf_counter() - start) / trainer.steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 24])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'depth':>5} {'off ms/step':>12} {'on ms/step':>11} {'added':>8}")
    for depth in args.depths:
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for record in (r % 2 == 0, r % 2 == 1):
                times[record].append(ms_per_step(depth, record))
        off, on = (statistics.median(times[k]) for k in (False, True))
        print(f"{depth:>5} {off:>12.2f} {on:>11.2f} {on - off:>+8.2f}")


if __name__ == "__main__":
    main()
