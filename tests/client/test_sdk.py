"""The typed Python client against a real server and worker (the embedded default):
submit with metadata, wait, metrics as a DataFrame, auto-paging lists with filters, tag,
compare, download and predict, datasets, usage, delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Stack, tiny_spec
from trainyard import Trainyard
from trainyard.client import ApiFailure
from trainyard.models import Job

pytestmark = pytest.mark.integration
CSV = b"a,b,label\n" + b"".join(b"%d.5,%d,%s\n" % (i, i % 7, b"yes" if i % 2 else b"no")
                                for i in range(120))


def test_a_session_in_a_notebook(embedded: Stack, tmp_path: Path) -> None:
    embedded.start_worker("w1")
    ty = Trainyard.connect(embedded.url, embedded.key)
    ty.page_size = 1  # every list below spans pages
    first = ty.submit(tiny_spec(name="sdk-a"), tags=["sdk"], note="first")
    second = ty.submit(tiny_spec(name="sdk-b", optimizer__lr=0.05), tags=["sdk", "fast"])
    done = [ty.wait(first.id, timeout=180), ty.wait(second.id, timeout=180)]
    assert all(isinstance(j, Job) and j.status == "succeeded" for j in done)

    frame = ty.metrics_frame(first.id)
    assert list(frame.index) == [1, 2, 3, 4, 5]
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(frame.columns)
    assert frame.loc[5, "val_loss"] == pytest.approx(
        next(p.value for p in ty.metrics(first.id)
             if (p.epoch, p.split, p.name) == (5, "val", "loss")))

    assert [j.id for j in ty.jobs(tag="sdk")] == [second.id, first.id]  # newest first
    assert [j.id for j in ty.jobs(tag=["sdk", "fast"])] == [second.id]
    ranked = list(ty.jobs(order_by="-test_accuracy"))
    assert [j.id for j in ranked] == [j.id for j in sorted(
        done, key=lambda j: (j.summary or {})["test"]["accuracy"], reverse=True)] or \
        len({(j.summary or {})["test"]["accuracy"] for j in done}) == 1
    assert ty.tag(first.id, keep=True).keep and ty.job(first.id).note == "first"
    assert ty.tag(first.id, clear_note=True).note is None and ty.job(first.id).keep
    assert ty.compare([first.id, second.id])["spec_differences"][0]["path"] == "optimizer.lr"

    bundle = ty.download(first.id, tmp_path / "model")
    manifest = json.loads((bundle / "model.json").read_text())
    assert manifest["job_id"] == first.id
    predictions = ty.predict(first.id, [[0.5, 0.25], [1.5, -0.5]])
    assert len(predictions) == 2

    (tmp_path / "d.csv").write_bytes(CSV)
    ds = ty.upload_dataset(tmp_path / "d.csv", target="label", name="yes-no")
    assert (ds.rows, ds.features, ds.n_classes) == (120, 2, 2)
    assert [d.id for d in ty.datasets()] == [ds.id]
    assert ty.usage().storage_bytes["datasets"] == ds.size_bytes

    ty.delete(ds.id)
    ty.delete(second.id)
    assert [j.id for j in ty.jobs(tag="sdk")] == [first.id]
    with pytest.raises(ApiFailure, match="HTTP 404"):
        ty.job(second.id)
