"""The CLI's rendering, without a server: pivoting points into epochs, CSV at full precision,
the rich progress bar, and the plain line view scripts have always read."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from rich.console import Console

from trainyard.client import LineView
from trainyard.display import ProgressView, metrics_table, pivot, write_metrics_csv

POINTS = [
    {"id": 1, "epoch": 1, "split": "train", "name": "loss", "value": 0.6931471805599453},
    {"id": 2, "epoch": 1, "split": "val", "name": "loss", "value": 0.7},
    {"id": 3, "epoch": 2, "split": "train", "name": "loss", "value": 0.5},
    {"id": 4, "epoch": 2, "split": "val", "name": "accuracy", "value": 0.875},
]


def job(epoch: int, total: int = 3, status: str = "running") -> dict[str, Any]:
    return {"id": "job_1", "status": status, "progress": {"epoch": epoch, "total": total}}


def test_points_pivot_to_one_row_per_epoch_columns_in_first_seen_order() -> None:
    columns, rows = pivot(reversed(POINTS))
    assert columns == ["val_accuracy", "train_loss", "val_loss"]
    assert rows == [(1, {"val_loss": 0.7, "train_loss": 0.6931471805599453}),
                    (2, {"train_loss": 0.5, "val_accuracy": 0.875})]


def test_csv_keeps_full_precision_and_leaves_missing_cells_empty() -> None:
    out = io.StringIO()
    write_metrics_csv(POINTS, out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows == [["epoch", "train_loss", "val_loss", "val_accuracy"],
                    ["1", "0.6931471805599453", "0.7", ""],
                    ["2", "0.5", "", "0.875"]]


def test_the_table_rounds_for_reading() -> None:
    screen = Console(file=io.StringIO(), width=120)
    screen.print(metrics_table(POINTS))
    lines = screen.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines[0].split() == ["EPOCH", "TRAIN_LOSS", "VAL_LOSS", "VAL_ACCURACY"]
    assert lines[1].split() == ["1", "0.6931", "0.7"]


def test_the_progress_bar_shows_epochs_and_latest_metrics() -> None:
    screen = Console(file=io.StringIO(), force_terminal=True, width=160)
    view = ProgressView(screen)
    view.job(job(1), {"train_loss": 0.5, "val_accuracy": 0.8125})
    view.job(job(3, status="succeeded"), {"train_loss": 0.25, "val_accuracy": 0.9375})
    view.close()
    drawn = screen.file.getvalue()  # type: ignore[attr-defined]
    assert "3/3" in drawn and "succeeded" in drawn
    assert "train_loss 0.25" in drawn and "val_accuracy 0.9375" in drawn


def test_the_line_view_prints_a_line_per_epoch_when_piped(
        capsys: pytest.CaptureFixture[str]) -> None:
    view = LineView()
    for epoch in (0, 1, 1, 2):
        view.job(job(epoch), {"train_loss": 1.0 / (epoch + 1)})
    view.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ")[1].split()[:3] for line in lines] == [
        ["running", "epoch", "0/3"], ["running", "epoch", "1/3"], ["running", "epoch", "2/3"]]
