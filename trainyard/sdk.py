"""``Trainyard``: the Python client for scripts and notebooks, typed.

    from trainyard import Trainyard

    ty = Trainyard.from_env()            # TRAINYARD_URL, TRAINYARD_API_KEY
    job = ty.wait(ty.submit({"model": {"kind": "mlp", "hidden": [64]}}).id)
    ty.metrics_frame(job.id)             # a pandas DataFrame, when pandas is installed
    for j in ty.jobs(tag="baseline", order_by="-test_accuracy"):
        print(j.id, j.summary)

It rides on ``Client`` (trainyard/client.py), so every call is retried with backoff on
connection errors and 429/503, honouring ``Retry-After``; failures raise ``ApiFailure``
with the API's message. Lists are iterators that fetch page after page as they are read."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainyard.client import Client, is_experiment, is_experiment_id
from trainyard.models import Dataset, Experiment, Job, MetricPoint, Usage

PAGE = 100


class Trainyard:
    def __init__(self, client: Client, page_size: int = PAGE) -> None:
        self.client, self.page_size = client, page_size

    @classmethod
    def from_env(cls) -> Trainyard:
        return cls(Client.from_env())

    @classmethod
    def connect(cls, url: str, key: str) -> Trainyard:
        return cls(Client(url, key))

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client._check(self.client.send(method, path, **kwargs))

    # ------------------------------------------------------------------ runs

    def submit(self, spec: dict[str, Any], *, tags: list[str] | None = None,
               note: str | None = None, keep: bool = False,
               idempotency_key: str | None = None) -> Job | Experiment:
        """A job spec, or an experiment (a body with a top-level ``kind``)."""
        body = {**spec, "metadata": {"tags": tags or [], "note": note, "keep": keep}}
        made = self.client.submit(body, idempotency_key=idempotency_key)
        return Experiment.model_validate(made) if is_experiment(spec) else Job.model_validate(made)

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def experiment(self, experiment_id: str) -> Experiment:
        return Experiment.model_validate(self._call("GET", f"/v1/experiments/{experiment_id}"))

    def jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters of GET /v1/jobs (status, tag, name_prefix,
        experiment_id, created_after, created_before, order_by), page after page."""
        for item in self._pages("/v1/jobs", filters):
            yield Job.model_validate(item)

    def experiments(self, **filters: Any) -> Iterator[Experiment]:
        for item in self._pages("/v1/experiments", filters):
            yield Experiment.model_validate(item)

    def wait(self, resource_id: str, timeout: float | None = None,
             interval: float = 1.0) -> Job | Experiment:
        """Poll until the job or experiment has ended (TimeoutError past ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            found = (self.experiment(resource_id) if is_experiment_id(resource_id)
                     else self.job(resource_id))
            if found.done:
                return found
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{resource_id} is still {found.status} after {timeout}s")
            time.sleep(interval)

    def cancel(self, resource_id: str) -> Job | Experiment:
        if is_experiment_id(resource_id):
            return Experiment.model_validate(
                self._call("POST", f"/v1/experiments/{resource_id}/cancel"))
        return Job.model_validate(self._call("POST", f"/v1/jobs/{resource_id}/cancel"))

    def delete(self, resource_id: str) -> None:
        """A job, an experiment (with its children) or a dataset, by its id's prefix."""
        self.client._check_empty(self.client.send("DELETE", path_of(resource_id)))

    def tag(self, resource_id: str, *, tags: list[str] | None = None,
            note: str | None = None, clear_note: bool = False,
            keep: bool | None = None) -> Job | Experiment:
        """Replace what is given (tags, note, keep); leave the rest. ``clear_note``
        removes the note (``note=None`` means: leave it as it is)."""
        patch: dict[str, Any] = {k: v for k, v in (("tags", tags), ("note", note),
                                                   ("keep", keep)) if v is not None}
        if clear_note:
            patch["note"] = None
        found = self._call("PATCH", path_of(resource_id), json=patch)
        return (Experiment.model_validate(found) if is_experiment_id(resource_id)
                else Job.model_validate(found))

    # ------------------------------------------------------------------ results

    def metrics(self, job_id: str) -> list[MetricPoint]:
        """Every metric point the job has logged so far, in order."""
        points: list[MetricPoint] = []
        after = 0
        while True:
            page = self._call("GET", f"/v1/jobs/{job_id}/metrics",
                              params={"after": after, "limit": 5000})
            points += [MetricPoint.model_validate(p) for p in page["points"]]
            if not page["points"]:
                return points
            after = page["next_after"]

    def metrics_frame(self, job_id: str) -> Any:
        """The metrics as a pandas DataFrame: one row per epoch, one column per
        ``split_name`` (``train_loss``, ``val_accuracy``, ...)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("metrics_frame needs pandas: pip install pandas "
                              "(or use metrics(), which needs nothing)") from exc
        rows = [{"epoch": p.epoch, "metric": f"{p.split}_{p.name}", "value": p.value}
                for p in self.metrics(job_id)]
        if not rows:
            return pd.DataFrame(index=pd.Index([], name="epoch"))
        frame = pd.DataFrame(rows).pivot(index="epoch", columns="metric", values="value")
        frame.columns.name = None
        return frame

    def compare(self, job_ids: list[str], metrics: list[str] | None = None) -> dict[str, Any]:
        params = {"jobs": ",".join(job_ids)}
        if metrics:
            params["metrics"] = ",".join(metrics)
        return dict(self._call("GET", "/v1/compare", params=params))

    def download(self, job_id: str, directory: str | Path) -> Path:
        """The job's model bundle, unpacked into ``directory`` (waits while it exports)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(self.client.model_bundle(job_id))) as bundle:
            bundle.extractall(target)
        return target

    def predict(self, resource_id: str, rows: list[list[float]]) -> list[dict[str, Any]]:
        """Predictions of a job's model, or of an experiment's (``exp_...``: bagging's soft
        vote, boosting's weighted vote or sum, a sweep's retrained best)."""
        return list(self.client.predict(resource_id, {"rows": rows})["predictions"])

    # ------------------------------------------------------------------ data

    def upload_dataset(self, path: str | Path, *, target: str | None = None,
                       name: str | None = None, task: str = "auto") -> Dataset:
        """A CSV (name its target column) or an NPZ with X and y."""
        file = Path(path)
        form = {k: v for k, v in (("target", target), ("name", name), ("task", task)) if v}
        with file.open("rb") as handle:
            made = self._call("POST", "/v1/datasets", files={"file": (file.name, handle)},
                              data=form)
        return Dataset.model_validate(made)

    def datasets(self) -> Iterator[Dataset]:
        for item in self._pages("/v1/datasets", {}):
            yield Dataset.model_validate(item)

    def usage(self) -> Usage:
        return Usage.model_validate(self._call("GET", "/v1/usage"))

    def _pages(self, path: str, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        cursor = None
        while True:
            page = self._call("GET", path, params={**params, "limit": self.page_size,
                                                   **({"cursor": cursor} if cursor else {})})
            yield from page["items"]
            if not (cursor := page["next_cursor"]):
                return


def path_of(resource_id: str) -> str:
    """The API path of a job, experiment or dataset, by its id's prefix."""
    kind = ("experiments" if is_experiment_id(resource_id)
            else "datasets" if resource_id.startswith("ds_") else "jobs")
    return f"/v1/{kind}/{resource_id}"
