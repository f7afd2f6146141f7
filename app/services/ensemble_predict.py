"""POST /v1/experiments/{id}/predict: the model an experiment produced, served like a job's.

Bagging serves its soft vote, boosting its SAMME vote or gradient sum, a sweep its retrained
best. Members are the children the experiment's result names, each run through its own ONNX
graph (onnxruntime, in the API; never torch), and combined by the very functions the
aggregator scored the reported ensemble with (``app/training/experiments/ensemble.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app import export_repository as exports
from app.config import Limits
from app.models import Experiment
from app.prediction_schemas import ClassRow, EnsemblePredictions, PredictBody, ValueRow
from app.services import experiments, models, predict
from app.services.inference import Loaded
from app.services.rows import found
from app.statuses import ExperimentStatus, ModelStatus
from app.training.experiments import ensemble
from app.training.manifest import PROBABILITIES, VALUE

MODEL_KINDS = ("bagging", "boosting", "sweep")
# partial: some children failed; the result's ensemble is over the members that succeeded
SERVED = (ExperimentStatus.SUCCEEDED, ExperimentStatus.PARTIAL)


@dataclass(frozen=True)
class Members:
    """Which children the result combines, with their weights, and by which rule."""

    combine: str  # soft_vote | samme | gradient_boosting | retrained_best
    job_ids: list[str]
    weights: list[float]


def predict_experiment(session: Session, *, tenant_id: str, experiment_id: str,
                       body: PredictBody, limits: Limits) -> EnsemblePredictions:
    predict.check_count(body, limits)
    exp = experiments.get(session, tenant_id, experiment_id)
    members = members_of(exp)
    refuse_unless_all_ready(session, tenant_id, members.job_ids)
    loaded = [predict.model(session, tenant_id, job_id) for job_id in members.job_ids]
    x = predict.matrix(body, loaded[0])  # every member reads the same raw rows
    outputs = [dict(zip(m.manifest.outputs, predict.run(m, x), strict=True)) for m in loaded]
    return EnsemblePredictions(
        experiment_id=exp.id, kind=exp.kind, combine=members.combine,
        task=loaded[0].manifest.task, classes=loaded[0].manifest.classes,
        predictions=combined(members, loaded, outputs),
        members=[{"job_id": j, "weight": w, "model_sha256": m.sha256}
                 for j, w, m in zip(members.job_ids, members.weights, loaded, strict=True)])


def members_of(exp: Experiment) -> Members:
    if exp.kind not in MODEL_KINDS:
        raise models.NoModel(f"a {exp.kind} experiment produces no model to predict with; "
                         "bagging, boosting and sweep (its retrained best) do")
    if exp.status not in SERVED or exp.result is None:
        raise models.NoModel(f"experiment '{exp.id}' is {exp.status}; only a succeeded "
                         "experiment has a model")
    found_members = _from_result(exp.kind, exp.result)
    if not found_members.job_ids:
        raise models.NoModel(f"experiment '{exp.id}' ({exp.kind}) has no member to combine: "
                         + _why_empty(exp.kind))
    return found_members


def _from_result(kind: str, result: dict[str, Any]) -> Members:
    if kind == "bagging":
        ids = [m["job_id"] for m in result.get("members", [])]
        return Members("soft_vote", ids, [1 / len(ids)] * len(ids) if ids else [])
    if kind == "boosting":
        rounds = result.get("rounds", [])
        rule = "samme" if result.get("algorithm") == "samme" else "gradient_boosting"
        return Members(rule, [r["job_id"] for r in rounds],
                       [float(r["learner_weight"]) for r in rounds])
    final = result.get("final")
    return Members("retrained_best", [final["job_id"]] if final else [], [1.0] if final else [])


def _why_empty(kind: str) -> str:
    return {"bagging": "every member failed",
            "boosting": "a round failed, or the first was no better than chance",
            "sweep": "it retrained no best (retrain_best was false, or no trial completed)",
            }[kind]


def refuse_unless_all_ready(session: Session, tenant_id: str, job_ids: list[str]) -> None:
    """409 if any member's model cannot be served: a failed or missing export first (waiting
    will not help), then a pending one (Retry-After)."""
    states = [(j, found(exports.serving(session, tenant_id, j), "job", j)) for j in job_ids]
    for job_id, state in sorted(states, key=lambda s: s[1].model_status == ModelStatus.PENDING):
        models.refuse_unless_ready(job_id, state)


def combined(members: Members, loaded: list[Loaded],
             outputs: list[dict[str, np.ndarray]]) -> list[ClassRow] | list[ValueRow]:
    card = loaded[0].manifest
    if members.combine == "retrained_best":  # one model: exactly the job's own predictions
        return predict.answer(members.job_ids[0], loaded[0],
                              [outputs[0][name] for name in card.outputs]).predictions
    if card.task == "regression":
        values = [ensemble.as_recorded(o[VALUE].astype(np.float64)) for o in outputs]
        combined_values = (ensemble.soft_vote(values) if members.combine == "soft_vote" else
                           ensemble.gradient_sum(list(zip(members.weights, values, strict=True))))
        return predict.values(combined_values)
    probabilities = [ensemble.as_recorded(o[PROBABILITIES]) for o in outputs]
    if members.combine == "soft_vote":
        shares = ensemble.soft_vote(probabilities)
        winners = ensemble.labels(shares)
    else:
        votes = [(w, ensemble.labels(p)) for w, p in zip(members.weights, probabilities,
                                                          strict=True)]
        k = len(card.classes or [])
        winners = ensemble.labels(ensemble.samme_scores(votes, k))
        shares = ensemble.samme_shares(votes, k)
    return predict.classes(card.classes or [], winners, shares)
