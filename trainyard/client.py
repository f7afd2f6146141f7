"""A small HTTP client for the CLI (and for scripts): submit, poll, watch.

Light on purpose: httpx, httpx-sse, stamina and the standard library only, never ``app``
or ``worker``, so the client installs and imports without the server's dependencies.

Every request is retried with exponential backoff (stamina, logged on the ``stamina``
logger) on connection errors and on 429/503, waiting what ``Retry-After`` asks when the
server sends it: a short database outage answers 503 and must not end ``trainyard watch``
while the job keeps training. Submissions carry an ``Idempotency-Key`` (one is made when
the caller gives none), so a retried POST never creates a second job."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import httpx_sse
import stamina

TERMINAL = {"succeeded", "failed", "cancelled"}
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 60.0  # a server asking for longer is waited on by the caller, not here
# A client that has never reached its server retries a refused connection this long: enough
# for a server that is starting (`trainyard run &` then a command), short for a wrong
# TRAINYARD_URL or no server at all. Once it has had an answer, a refused connection is a
# restart and gets the full retry budget.
FIRST_CONTACT_SECONDS = 3.0


class ApiFailure(RuntimeError):
    pass


class TransientStatus(Exception):
    """A 429/5xx answer worth retrying; carries the response for the last attempt."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the form this server sends); a date or junk is ignored."""
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers["Retry-After"])))
    except (KeyError, ValueError):
        return None


def backoff(exc: Exception) -> bool | float:
    """stamina's backoff hook: retry transport errors with its own backoff, transient
    statuses after the server's ``Retry-After`` when it gave one."""
    if isinstance(exc, TransientStatus):
        return retry_after(exc.response) or True
    return isinstance(exc, httpx.TransportError)


class Client:
    def __init__(self, base: str, key: str | None, *, attempts: int = 8,
                 retry_timeout: float = 120.0) -> None:
        self.base = base.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=30)
        self.attempts, self.retry_timeout = attempts, retry_timeout
        self.reached = False  # has any request of this client had an answer?

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried (bounded by attempts and total time) while it fails
        transiently; the last transient answer is returned for ``_check`` to report."""
        started = time.monotonic()

        def retryable(exc: Exception) -> bool | float:
            never_reached = isinstance(exc, httpx.ConnectError) and not self.reached
            if never_reached and time.monotonic() - started >= FIRST_CONTACT_SECONDS:
                return False
            return backoff(exc)

        try:
            for attempt in stamina.retry_context(on=retryable, attempts=self.attempts,
                                                 timeout=self.retry_timeout, wait_max=10.0):
                with attempt:
                    response = self.http.request(method, path, **kwargs)
                    self.reached = True
                    if response.status_code in TRANSIENT_STATUSES:
                        raise TransientStatus(response)
        except TransientStatus as exc:
            return exc.response
        return response

    @classmethod
    def from_env(cls) -> Client:
        key = os.environ.get("TRAINYARD_API_KEY")
        # TRAINYARD_HOME as the server's settings read it (same variable, same default),
        # read here without them so the client needs no server package
        dev_key = Path(os.environ.get("TRAINYARD_HOME", ".trainyard")) / "dev-key"
        if not key and dev_key.exists():
            key = dev_key.read_text().strip()
        return cls(os.environ.get("TRAINYARD_URL", "http://127.0.0.1:8000"), key)

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                detail = err["message"]
            except (ValueError, KeyError, TypeError):
                detail = response.text[:500]
            raise ApiFailure(f"HTTP {response.status_code}: {detail}")
        return response.json()

    def _check_empty(self, response: httpx.Response) -> None:
        """For answers with no body (204): raise like ``_check`` on an error."""
        if response.status_code >= 400:
            self._check(response)

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """A job spec, or an experiment (a body with a top-level ``kind``)."""
        headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}"}
        path = "/v1/experiments" if is_experiment(spec) else "/v1/jobs"
        return self._check(self.send("POST", path, json=spec, headers=headers))

    def get(self, resource_id: str) -> Any:
        """A job or an experiment, by the prefix of its id."""
        if is_experiment_id(resource_id):
            return self.get_experiment(resource_id)
        return self.get_job(resource_id)

    def get_experiment(self, experiment_id: str) -> Any:
        return self._check(self.send("GET", f"/v1/experiments/{experiment_id}"))

    def list_experiments(self, status: str | None = None, kind: str | None = None,
                         limit: int = 20) -> Any:
        params = {k: v for k, v in (("status", status), ("kind", kind)) if v}
        return self._check(self.send("GET", "/v1/experiments",
                                     params={**params, "limit": limit}))

    def get_job(self, job_id: str) -> Any:
        return self._check(self.send("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, status: str | None = None, limit: int = 20, **filters: Any) -> Any:
        """One page of GET /v1/jobs; ``filters``: tag (a list), name_prefix, order_by,
        cursor, experiment_id, created_after, created_before (None: not filtered)."""
        params = {k: v for k, v in {"status": status, **filters}.items() if v is not None}
        return self._check(self.send("GET", "/v1/jobs", params={**params, "limit": limit}))

    def metrics(self, job_id: str, after: int = 0) -> Any:
        return self._check(self.send("GET", f"/v1/jobs/{job_id}/metrics",
                                     params={"after": after}))

    def plot(self, resource_id: str, name: str | None, fmt: str) -> tuple[str, bytes]:
        """A job's or an experiment's plot as SVG or PNG bytes, with its name (without a
        name: the first plot the API lists for it)."""
        kind = "experiments" if is_experiment_id(resource_id) else "jobs"
        base = f"/v1/{kind}/{resource_id}/plots"
        if name is None:
            name = str(self._check(self.send("GET", base))["plots"][0]["name"])
        response = self.send("GET", f"{base}/{name}.{fmt}")
        if response.status_code >= 400:
            self._check(response)  # raises with the API's message (a bad name lists the names)
        return name, response.content

    def predict(self, resource_id: str, body: dict[str, Any], wait: float = 120.0) -> Any:
        """``{"rows": ...}`` or ``{"records": ...}`` through a job's model, or the model an
        experiment produced (an ensemble, a sweep's best), waiting up to ``wait`` seconds
        while a model is being exported."""
        kind = "experiments" if is_experiment_id(resource_id) else "jobs"
        return self._check(self._model_request("POST", f"/v1/{kind}/{resource_id}/predict",
                                               wait, json=body))

    def model_bundle(self, job_id: str, wait: float = 120.0) -> bytes:
        """The model's zip bundle: model.onnx, model.safetensors, model.json, README.md."""
        response = self._model_request("GET", f"/v1/jobs/{job_id}/model", wait)
        if response.status_code >= 400:
            self._check(response)
        return response.content

    def _model_request(self, method: str, path: str, wait: float,
                       **kwargs: Any) -> httpx.Response:
        """A 409 ``model_pending`` (a just-finished job's export) is waited on, as long as
        the server's Retry-After says and up to ``wait`` seconds in all."""
        deadline = time.monotonic() + wait
        while True:
            response = self.send(method, path, **kwargs)
            pause = retry_after(response) or 1.0
            if not (_is_pending(response) and time.monotonic() + pause < deadline):
                return response
            time.sleep(pause)


def _is_pending(response: httpx.Response) -> bool:
    if response.status_code != 409:
        return False
    try:
        return bool(response.json()["error"]["code"] == "model_pending")
    except (ValueError, KeyError, TypeError):
        return False


def is_experiment(body: dict[str, Any]) -> bool:
    return "kind" in body  # a job spec has no top-level kind; every experiment has one


def is_experiment_id(resource_id: str) -> bool:
    return resource_id.startswith("exp_")


def wait_ready(client: Client, stop: dict[str, bool], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop["now"]:
        try:
            if client.http.get("/readyz").status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "#" * filled + "-" * (width - filled)


SHOWN = ("train_loss", "val_loss", "val_accuracy", "val_rmse", "val_r2", "train_lr")


class WatchView(Protocol):
    """What ``watch`` and ``watch_experiment`` tell about progress as it changes."""

    def job(self, job: dict[str, Any], latest: dict[str, float]) -> None: ...

    def experiment(self, exp: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class LineView:
    """How ``watch`` shows progress without rich: a line per epoch (or per children done),
    or one line redrawn in place on a terminal. The CLI passes its rich view instead; any
    ``WatchView`` will do."""

    def __init__(self) -> None:
        self.tty, self.last_epoch = sys.stdout.isatty(), -1
        self.last_done: tuple[int, int] | None = None

    def job(self, job: dict[str, Any], latest: dict[str, float]) -> None:
        epoch, total = job["progress"]["epoch"], job["progress"]["total"]
        if epoch != self.last_epoch or self.tty:
            shown = "  ".join(f"{k} {latest[k]:.4g}" for k in SHOWN if k in latest)
            line = f"[{_bar(epoch, total)}] {job['status']:<9} epoch {epoch}/{total}  {shown}"
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)
            self.last_epoch = epoch

    def experiment(self, exp: dict[str, Any]) -> None:
        done, total = exp["progress"]["done"], exp["progress"]["total"]
        if (done, total) != self.last_done:
            print(f"[{_bar(done, total)}] {exp['status']:<9} {done}/{total} children done",
                  flush=True)
            self.last_done = (done, total)

    def close(self) -> None:
        if self.tty and self.last_epoch >= 0:
            print()


def watch(client: Client, job_id: str, stop: dict[str, bool] | None = None,
          view: WatchView | None = None) -> str:
    """Follow the job's event stream until it ends; returns the final status."""
    view = view or LineView()
    job = client.get_job(job_id)  # the picture now; the stream replays what led to it
    latest: dict[str, float] = {}
    try:
        view.job(job, latest)
        for event in follow_events(client, f"/v1/jobs/{job_id}/events", stop):
            _apply_job_event(job, latest, event)
            view.job(job, latest)
    finally:
        view.close()
    job = client.get_job(job_id)  # the outcome: summary or error
    _print_outcome(job)
    return str(job["status"])


def _apply_job_event(job: dict[str, Any], latest: dict[str, float],
                     event: dict[str, Any]) -> None:
    data = event["data"]
    if event["kind"] == "status":
        job.update(status=data["status"], attempt=data["attempt"],
                   cancel_requested=data["cancel_requested"])
    elif event["kind"] == "progress":  # a replayed epoch does not move the bar back
        job["progress"] = {"epoch": max(job["progress"]["epoch"], data["epoch"]),
                           "total": data["total_epochs"]}
    elif event["kind"] == "metric" and data["value"] is not None:
        latest[f"{data['split']}_{data['name']}"] = data["value"]


STREAM_READ_TIMEOUT = 90.0  # several of the server's heartbeats (15 s): silence is a drop


def follow_events(client: Client, path: str,
                  stop: dict[str, bool] | None = None) -> Iterator[dict[str, Any]]:
    """Each event of an SSE stream (its JSON ``data``), in order, until the server says
    nothing more can follow (204).

    After a drop, or the server closing the stream, it reconnects with ``Last-Event-ID``,
    so no event is lost or repeated. Opening is retried like every request (stamina:
    connection errors and 429/5xx, after ``Retry-After``); a stream that closes before
    its first event counts as a failure and waits longer each time, up to
    ``client.attempts`` in a row."""
    last_id: str | None = None
    quiet = 0  # streams in a row that ended without an event
    while not (stop and stop["now"]):
        response = _open_stream(client, path, last_id)
        if response.status_code == 204:
            return
        got_one = False
        try:
            for sse in httpx_sse.EventSource(response).iter_sse():
                if sse.data:
                    last_id, got_one = sse.id, True
                    yield json.loads(sse.data)
                if stop and stop["now"]:
                    return
        except httpx.TransportError:
            pass  # dropped: reconnect after the last event received
        finally:
            response.close()
        quiet = 0 if got_one else quiet + 1
        if quiet >= client.attempts:
            raise ApiFailure(f"{path}: the stream closed {quiet} times without an event")
        time.sleep(min(10.0, 0.25 * 2**quiet) if quiet else 0.0)


def _open_stream(client: Client, path: str, last_id: str | None) -> httpx.Response:
    """The stream's response, headers read; retried while it fails transiently."""
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
    timeout = httpx.Timeout(30.0, read=STREAM_READ_TIMEOUT)
    try:
        for attempt in stamina.retry_context(on=backoff, attempts=client.attempts,
                                             timeout=client.retry_timeout, wait_max=10.0):
            with attempt:
                request = client.http.build_request("GET", path, headers=headers,
                                                    timeout=timeout)
                response = client.http.send(request, stream=True)
                if response.status_code in TRANSIENT_STATUSES:
                    response.read()
                    raise TransientStatus(response)
    except TransientStatus as exc:
        response = exc.response
    if response.status_code >= 400:
        response.read()
        client._check(response)  # raises ApiFailure with the server's message
    return response


def _print_outcome(job: dict[str, Any]) -> None:
    if job["status"] == "succeeded":
        s = job["summary"]
        test = "  ".join(f"{k} {v:.4f}" for k, v in s["test"].items())
        print(f"{job['id']} succeeded: test {test}  (best epoch {s['best_epoch']}, "
              f"{s['parameters']:,} parameters)", flush=True)
    elif job["error"]:
        print(f"{job['id']} {job['status']}: {job['error']['reason']}: {job['error']['message']}",
              flush=True)
    else:
        print(f"{job['id']} {job['status']}", flush=True)


def watch_experiment(client: Client, experiment_id: str,
                     view: WatchView | None = None) -> str:
    """Follow the experiment's event stream (its children's included) until it and every
    child have ended, showing children done; returns the final status."""
    view = view or LineView()
    exp = client.get_experiment(experiment_id)  # the picture now
    children: dict[str, str] = {}  # child id -> its last status in the stream
    try:
        view.experiment(exp)
        for event in follow_events(client, f"/v1/experiments/{experiment_id}/events"):
            _apply_experiment_event(exp, children, event)
            view.experiment(exp)
    finally:
        view.close()
    exp = client.get_experiment(experiment_id)  # the result
    print(f"{exp['id']} {exp['status']}: {headline(exp)}", flush=True)
    return str(exp["status"])


def _apply_experiment_event(exp: dict[str, Any], children: dict[str, str],
                            event: dict[str, Any]) -> None:
    data = event["data"]
    if event["kind"] == "experiment_status":
        exp["status"] = data["status"]
    elif event["kind"] == "child":
        children.setdefault(data["job_id"], "queued")
    elif event["kind"] == "status" and event["job_id"] in children:
        children[event["job_id"]] = data["status"]
    done = sum(status in TERMINAL for status in children.values())
    progress = exp["progress"]  # replayed history never moves the counts back
    exp["progress"] = {**progress, "done": max(progress["done"], done),
                       "total": max(progress["total"], len(children))}


def headline(exp: dict[str, Any]) -> str:
    """The one line a person looks for first; ``trainyard show ID`` prints the whole result."""
    result = exp.get("result") or {}
    if exp["status"] == "failed" and exp.get("error"):
        return str(exp["error"])
    if exp["kind"] == "cross_validation" and result.get("val"):
        return "  ".join(f"val {name} {v['mean']:.4f} ± {v['std']:.4f}"
                         for name, v in result["val"].items())
    if exp["kind"] == "sweep" and result.get("best") is not None:
        final = result.get("final", {}).get("test", {})
        tested = "  ".join(f"test {k} {v:.4f}" for k, v in final.items())
        return f"best {result['best']}  {tested}".rstrip()
    failures = len(result.get("failures") or [])
    return f"result keys {sorted(result)}; {failures} failed children"
