"""Prometheus metrics: what each process counts, and what ``/metrics`` reads from SQL.

Two kinds of series, each from where it is true:

- **Events counted by the process they happen in** (HTTP requests in each API process, job
  attempts and epochs in pool children, reaper actions in each worker's main process).
  ``trainyard api`` / ``worker`` / ``run`` put prometheus_client in multiprocess mode: every
  process on a host writes memory-mapped files to one folder (``PROMETHEUS_MULTIPROC_DIR``,
  by default ``$TRAINYARD_HOME/metrics``), and a scrape sums the folder, so whichever API
  process answers reports all of them, and a dead process's counts stay counted.
- **State, read from SQL at scrape time** (jobs by status and queue, the oldest queued job's
  age, each worker's last beat): global truths any API process reports identically.

Every label is an aggregate an operator chose (status, queue, route template, outcome) or an
opaque registry id: no tenant, job, path or host name ever becomes a label.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("trainyard_http_requests_total",
                        "HTTP requests answered, by method, route template and status code.",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("trainyard_http_request_duration_seconds",
                         "Time from a request's arrival to its response headers, by method "
                         "and route template.", ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
JOB_SECONDS = Histogram("trainyard_job_attempt_duration_seconds",
                        "Wall time of one attempt of a job in a worker (claim, training, final "
                        "write), "
                        "by outcome (succeeded, failed, cancelled, preempted, lease_lost).",
                        ["outcome"],
                        buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600))
EPOCH_SECONDS = Histogram("trainyard_epoch_duration_seconds",
                          "Wall time of one training epoch (the loop's epoch_seconds).",
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
REAPER_ACTIONS = Counter("trainyard_reaper_actions_total",
                         "Jobs and experiments the reapers acted on, by action (enqueued: "
                         "re-sent to the broker; failed; cancelled; advanced: an experiment "
                         "re-asked to advance).", ["action"])


# ------------------------------------------------------------------ what we observe


def observe_job_attempt(outcome: str, seconds: float) -> None:
    """``outcome`` is what ``worker.execution.execute`` returned ("failed:<reason>" counts
    as failed); attempts that claimed nothing are not runs and are not observed."""
    kind = outcome.split(":", 1)[0].replace("-", "_")
    if kind not in ("not_claimed", "database_unavailable"):
        JOB_SECONDS.labels(kind).observe(seconds)


def observe_reaper_pass(report: dict[str, list[str]]) -> None:
    for action, ids in report.items():
        if ids:
            REAPER_ACTIONS.labels(action).inc(len(ids))


def observe_epoch(metrics: dict[str, dict[str, float]]) -> None:
    seconds = metrics.get("train", {}).get("epoch_seconds")
    if seconds is not None:
        EPOCH_SECONDS.observe(seconds)
