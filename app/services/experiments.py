"""Experiment verbs: submit (plan the first stage, validate every child, commit, enqueue),
get, list, children, cancel. The aggregation runs on workers (``worker/orchestrate.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from app import experiment_spec as e
from app import repository as repo
from app.clock import new_id, utcnow
from app.config import Settings
from app.models import Experiment, Job
from app.services import cursors, dataset_refs, tagging, usage
from app.services import jobs as job_service
from app.services.idempotency import create_once, request_hash
from app.services.rows import found
from app.spec import Task
from app.statuses import ExperimentStatus
from app.training.experiments.plan import (
    ChildPlan,
    boosting_round,
    child_bytes_bound,
    child_count,
    final_retrain,
    first_stage,
    grid_size,
)
from app.training.experiments.roles import TrialRole
from app.training.metric_names import epoch_metric_names
from app.training.shapes import DataInfo
from app.validation import Problem, SpecRejected

EXPERIMENT = TypeAdapter(e.Experiment)
METADATA = {"metadata": True, "base": {"metadata"}}  # stored apart from the request


def parse(raw: dict[str, Any]) -> Any:
    return EXPERIMENT.validate_python(raw)


def check_child_count(exp: Any, settings: Settings) -> None:
    """Refuse too many children from their count alone: a grid's size is a product of list
    lengths, so nothing is built for a design that could never run."""
    cap = settings.limits.max_experiment_children
    count = child_count(exp)
    if count <= cap:
        return
    loc: tuple[str, ...] = ("kind",)
    what = f"{count:,} child jobs"
    if isinstance(exp, e.Sweep) and exp.method == "grid":
        loc = ("parameters",)
        lengths = " x ".join(str(len(v)) for v in exp.parameters.values()
                             if isinstance(v, list))
        what += f" (a grid of {lengths} = {grid_size(exp.parameters):,} combinations"
        what += f", x {exp.objective.cv_folds} folds)" if exp.objective.cv_folds else ")"
    raise SpecRejected([Problem(loc, f"{what} exceed the limit max_experiment_children {cap}; "
                                     "lower the values or set trials")])


def check_stage_bytes(exp: Any, settings: Settings) -> None:
    """Refuse a stage whose child specs would hold too much JSON, from sizes alone."""
    cap = settings.limits.max_experiment_spec_bytes
    count, each = child_count(exp), child_bytes_bound(exp)
    if count * each > cap:
        loc = {"sweep": "parameters", "bias_variance": "values"}.get(exp.kind, "base")
        raise SpecRejected([Problem((loc,), f"{count:,} child specs of up to {each:,} bytes "
                                    f"each ({count * each:,} bytes) exceed the limit "
                                    f"max_experiment_spec_bytes {cap:,}")])


def plan_children(exp: Any, settings: Settings) -> list[ChildPlan]:
    """The first stage, refused with 422 if a child would not be a valid job."""
    check_child_count(exp, settings)
    check_stage_bytes(exp, settings)
    try:
        return first_stage(exp)
    except (ValidationError, ValueError) as exc:
        raise SpecRejected([Problem(("base",), f"a child spec would be invalid: {exc}")]) from exc


def later_stages(exp: Any, first: list[ChildPlan], info: DataInfo) -> list[ChildPlan]:
    """Children a later stage may start, as far as submission can know them: the final
    retrain of any trial (for as many epochs as the trial has), and a boosting round after
    the first (its weights or offsets: one per development row)."""
    if isinstance(exp, e.Sweep) and exp.retrain_best:
        trials = {p.role.trial: (p.role, p) for p in first if isinstance(p.role, TrialRole)}
        return [final_retrain(exp, {"params": role.params,
                                    "best_epochs": [p.spec.training.epochs]})
                for role, p in trials.values()]
    if isinstance(exp, e.Boosting) and exp.rounds > 1:
        split = exp.base.data.split
        dev = info.n_rows - math.ceil(info.n_rows * split.test)
        if info.task == "classification":
            return [boosting_round(exp, 1, [1.0 / dev] * dev, None)]
        return [boosting_round(exp, 1, None, [0.0] * dev)]
    return []


def check_later_stages(session: Session, tenant_id: str, exp: Any, first: list[ChildPlan],
                       info: DataInfo, settings: Settings) -> None:
    """A stage that would be refused later would end the experiment failed half-way."""
    try:
        plans = later_stages(exp, first, info)
    except (ValidationError, ValueError) as exc:
        raise SpecRejected([Problem(("base",), f"a later stage's child spec would be invalid: "
                                    f"{exc}")]) from exc
    child_jobs(session, tenant_id, "", plans, settings)


def child_jobs(session: Session, tenant_id: str, experiment_id: str, plans: list[ChildPlan],
               settings: Settings) -> list[Job]:
    jobs = []
    for plan in plans:
        try:
            info = job_service.validate(session, tenant_id, plan.spec, settings)
        except SpecRejected as exc:
            where = f"in child {plan.role.to_json()}"
            raise SpecRejected([Problem(("base", *p.loc), f"{where}: {p.msg}")
                                for p in exc.problems]) from exc
        job = job_service.new_job(tenant_id, plan.spec, info, settings,
                                  experiment_id=experiment_id)
        job.role = plan.role.to_json()
        jobs.append(job)
    return jobs


def check_objective(sweep: e.Sweep, task: Task) -> None:
    """The objective must be a validation metric these trials log, or nothing can be ranked."""
    has_val = bool(sweep.objective.cv_folds) or sweep.base.data.split.val > 0
    if not has_val:
        raise SpecRejected([Problem(("objective", "metric"), "the trials have no validation "
                                    "split (base.data.split.val is 0): set it above 0 or use "
                                    "objective.cv_folds")])
    logged = sorted(m for m in epoch_metric_names(task, True) if m.startswith("val_"))
    if sweep.objective.metric not in logged:
        raise SpecRejected([Problem(("objective", "metric"), f"'{sweep.objective.metric}' is "
                                    f"not logged for a {task} task; choose one of {logged}")])


# Kinds that score their members' predictions against the data's target (targets.py).
SCORES_PREDICTIONS = frozenset({"bagging", "boosting", "bias_variance"})


def check_task(exp: Any) -> None:
    """A reconstruction (pretext) job predicts its inputs: there is no target to score."""
    if exp.kind in SCORES_PREDICTIONS and exp.base.task == "reconstruction":
        raise SpecRejected([Problem(("base", "task"), f"a {exp.kind} experiment scores its "
                                    "members' predictions against the data's target; task "
                                    "reconstruction has none: use task supervised")])


def new_experiment(session: Session, tenant_id: str, exp: Any,
                   settings: Settings) -> tuple[Experiment, list[Job]]:
    """The experiment's row and its first stage's, every child validated (none added yet)."""
    check_task(exp)
    dataset_refs.resolve_experiment(session, tenant_id, exp)  # before anything reads data
    plans = plan_children(exp, settings)
    now = utcnow()
    experiment = Experiment(id=new_id("exp"), tenant_id=tenant_id, name=exp.name, kind=exp.kind,
                            request=exp.model_dump(mode="json", exclude=METADATA),
                            status=ExperimentStatus.RUNNING, stage=0, created_at=now,
                            updated_at=now)
    jobs = child_jobs(session, tenant_id, experiment.id, plans, settings)
    if isinstance(exp, e.Sweep):
        check_objective(exp, cast(Task, jobs[0].task))
    check_later_stages(session, tenant_id, exp, plans, job_service.validate(
        session, tenant_id, plans[0].spec, settings), settings)
    return experiment, jobs


def submit(session: Session, *, tenant_id: str, exp: Any, settings: Settings,
           idempotency_key: str | None) -> tuple[Experiment, bool]:
    """Plan and validate the first stage, INSERT the experiment and its children, COMMIT,
    enqueue. Returns (experiment, created)."""
    digest = request_hash(exp.model_dump(mode="json"))
    jobs: list[Job] = []

    def insert(key: str | None) -> Experiment:
        experiment, children = new_experiment(session, tenant_id, exp, settings)
        usage.check_storage(session, tenant_id, settings.limits)
        experiment.idempotency_key, experiment.request_hash = key, digest
        job_service.reserve_slots(session, tenant_id, len(children), settings)  # locks to COMMIT
        repo.add_experiment(session, experiment)
        tagging.annotate_experiment(session, experiment, exp.metadata)
        for job in children:
            repo.add_job(session, job)
        jobs.extend(children)
        return experiment

    def find(key: str) -> Experiment | None:
        return repo.experiment_by_idempotency_key(session, tenant_id, key)

    experiment, created = create_once(session, key=idempotency_key, digest=digest, find=find,
                                      insert=insert)
    if created:
        job_service.enqueue_committed(session, jobs)
    return experiment, created


def get(session: Session, tenant_id: str, experiment_id: str) -> Experiment:
    return found(repo.get_experiment(session, tenant_id, experiment_id), "experiment",
                 experiment_id)


def progress(session: Session, experiments: Sequence[Experiment]) -> dict[str, dict[str, int]]:
    return repo.child_counts(session, [x.id for x in experiments])


def list_page(session: Session, tenant_id: str, *, status: ExperimentStatus | None,
              kind: str | None, tags: Sequence[str], cursor: str | None,
              limit: int) -> tuple[Sequence[Experiment], str | None]:
    return cursors.page(lambda before, n: repo.list_experiments(
        session, tenant_id, status=status, kind=kind, tags=tags, before=before, limit=n),
        cursor, limit)


def jobs_of(session: Session, tenant_id: str, experiment_id: str, *, cursor: str | None,
            limit: int) -> tuple[Sequence[Job], str | None]:
    """The children oldest first (the design's order), a page at a time."""
    get(session, tenant_id, experiment_id)
    return cursors.page(lambda after, n: repo.children_page(
        session, experiment_id, after=after, limit=n), cursor, limit)


def cancel(session: Session, tenant_id: str, experiment_id: str) -> Experiment:
    exp = get(session, tenant_id, experiment_id)
    repo.cancel_experiment(session, exp, utcnow())
    session.commit()
    return exp
