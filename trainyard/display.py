"""What the CLI prints for people: rich tables, a live progress bar, metrics as a table or
CSV. Scripts pass ``--json`` (or ``--csv``) and get the API's own data instead.

On a terminal rich draws colour and fits the window; piped, the tables are plain text on
long lines (never wrapped), so ``grep`` and ``awk`` keep working."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from trainyard.client import SHOWN, headline


def console() -> Console:
    tty = sys.stdout.isatty()
    return Console(width=None if tty else 250, no_color=not tty, highlight=False)


def plain_table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    return table


def _epochs(job: dict[str, Any]) -> str:
    return f"{job['progress']['epoch']}/{job['progress']['total']}"


def jobs_table(jobs: Iterable[dict[str, Any]]) -> Table:
    table = plain_table("ID", "STATUS", "EPOCH", "NAME", "TEST")
    for job in jobs:
        test = (job.get("summary") or {}).get("test", {})
        score = " ".join(f"{k}={v:.4f}" for k, v in test.items() if k != "loss")
        table.add_row(job["id"], job["status"], _epochs(job), job["name"][:40], score)
    return table


def experiments_table(experiments: Iterable[dict[str, Any]]) -> Table:
    table = plain_table("ID", "STATUS", "DONE", "KIND", "NAME", "RESULT")
    for exp in experiments:
        progress = exp["progress"]
        summary = headline(exp) if exp["status"] != "running" else ""
        table.add_row(exp["id"], exp["status"], f"{progress['done']}/{progress['total']}",
                      exp["kind"], exp["name"][:40], summary)
    return table


def resource_table(resource: dict[str, Any]) -> Table:
    """A job or an experiment as FIELD VALUE rows (nested values as compact JSON)."""
    import json

    table = plain_table("FIELD", "VALUE")
    table.columns[1].no_wrap = False
    for key, value in resource.items():
        if key in ("spec", "request", "links") or value is None:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
        table.add_row(key, shown)
    return table


# ------------------------------------------------------------------ metric points


def pivot(points: Iterable[dict[str, Any]]) -> tuple[list[str], list[tuple[int, dict[str, float]]]]:
    """Points as one row per epoch and one column per ``split_name`` (first seen first)."""
    columns: dict[str, None] = {}
    rows: dict[int, dict[str, float]] = {}
    for point in points:
        column = f"{point['split']}_{point['name']}"
        columns.setdefault(column)
        rows.setdefault(point["epoch"], {})[column] = point["value"]
    return list(columns), sorted(rows.items())


def metrics_table(points: Iterable[dict[str, Any]]) -> Table:
    columns, rows = pivot(points)
    table = plain_table("EPOCH", *(c.upper() for c in columns))
    for epoch, values in rows:
        table.add_row(str(epoch), *(f"{values[c]:.4g}" if c in values else "" for c in columns))
    return table


def write_metrics_csv(points: Iterable[dict[str, Any]], out: IO[str]) -> None:
    """Full precision; an epoch without a value for a column leaves the cell empty."""
    columns, rows = pivot(points)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *columns])
    for epoch, values in rows:
        writer.writerow([epoch, *(repr(values[c]) if c in values else "" for c in columns)])


# ----------------------------------------------------------------- live progress


class ProgressView:
    """``trainyard watch`` on a terminal: a rich progress bar (epochs of a job, children of
    an experiment) with the latest headline metrics beside it."""

    def __init__(self, out: Console | None = None) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[shown]}"),
                                 console=out or console())
        self.task: TaskID | None = None

    def _show(self, label: str, done: int, total: int, shown: str) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(label, total=max(total, 1), shown=shown)
        self.progress.update(self.task, description=label, completed=done,
                             total=max(total, 1), shown=shown)

    def job(self, job: dict[str, Any], latest: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {latest[k]:.4g}" for k in SHOWN if k in latest)
        self._show(f"{job['id']} {job['status']:<9}", job["progress"]["epoch"],
                   job["progress"]["total"], shown)

    def experiment(self, exp: dict[str, Any]) -> None:
        progress = exp["progress"]
        self._show(f"{exp['id']} {exp['status']:<9}", progress["done"], progress["total"],
                   "children done")

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()
