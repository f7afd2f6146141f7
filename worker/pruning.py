"""Early termination of sweep trials on the worker: the curves come from SQL, the decision
from the pure median rule (``app/training/experiments/prune.py``)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.experiment_spec import MedianStopping, Sweep
from app.models import Job
from app.services.experiments import parse
from app.training.experiments.prune import median_stop
from app.training.experiments.roles import TrialRole, parse_role
from app.training.metric_names import metric_mode
from app.training.results import Summary

log = logging.getLogger("trainyard.worker")


class TrialPruner:
    """Decides, at each epoch end of one trial, whether the median rule stops it.

    A completed trial's curve never changes, so each is read once and kept."""

    def __init__(self, job_id: str, experiment_id: str, sweep: Sweep,
                 rule: MedianStopping) -> None:
        self.job_id, self.experiment_id, self.rule = job_id, experiment_id, rule
        self.metric = sweep.objective.metric
        self.split, self.name = self.metric.split("_", 1)
        self.maximize = metric_mode(self.metric, sweep.objective.direction) == "max"
        self.peers: dict[str, list[float] | None] = {}  # None: not a full-budget trial

    def decide(self, session: Session, epoch: int, metrics: dict[str, float]) -> str | None:
        if self.metric not in metrics:
            return None
        own = repo.metric_curve(session, self.job_id, self.split, self.name)[: epoch - 1]
        self._read_new_peers(session)
        completed = [c for c in self.peers.values() if c is not None]
        decision = median_stop([*own, metrics[self.metric]], completed, maximize=self.maximize,
                               grace_epochs=self.rule.grace_epochs,
                               min_completed=self.rule.min_completed)
        if decision is None:
            return None
        reason = decision.reason(self.metric)
        log.info("job %s: stopped by the median rule: %s", self.job_id, reason)
        return reason

    def _read_new_peers(self, session: Session) -> None:
        for job in repo.succeeded_children(session, self.experiment_id, list(self.peers)):
            full = is_trial(job) and job.summary is not None and Summary.model_validate(
                job.summary).pruned is None
            self.peers[job.id] = (repo.metric_curve(session, job.id, self.split, self.name)
                                  if full else None)


def is_trial(job: Job) -> bool:
    return job.role is not None and isinstance(parse_role(job.role), TrialRole)


def trial_pruner(sessions: sessionmaker[Session], job: Job) -> TrialPruner | None:
    """A pruner when ``job`` is a trial of a sweep that asked for early termination."""
    if job.experiment_id is None or not is_trial(job):
        return None
    with sessions() as session:
        exp = repo.get_experiment_any_tenant(session, job.experiment_id)
    request = parse(exp.request) if exp is not None else None
    if not isinstance(request, Sweep) or request.early_termination is None:
        return None
    return TrialPruner(job.id, job.experiment_id, request, request.early_termination)
