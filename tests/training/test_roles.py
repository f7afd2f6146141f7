"""Every role a design plans is stored as JSON and read back as the type it was built as."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from app import experiment_spec as e
from app.training.experiments.plan import boosting_round, final_retrain, first_stage
from app.training.experiments.roles import (
    FinalRole,
    FoldRole,
    RoundRole,
    TrialRole,
    parse_role,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "experiments").glob("*"))
EXPERIMENT: TypeAdapter[e.Experiment] = TypeAdapter(e.Experiment)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_planned_roles_read_back_as_their_kind(path: Path) -> None:
    exp = EXPERIMENT.validate_python(json.loads(path.read_text()))
    plans = first_stage(exp)
    stored = [p.role.to_json() for p in plans]  # what jobs.role holds
    roles = [parse_role(json.loads(json.dumps(raw))) for raw in stored]  # through JSON
    assert roles == [p.role for p in plans] and [r.to_json() for r in roles] == stored
    assert len({type(r) for r in roles}) == 1, "one design, one kind of role"
    if isinstance(exp, e.CrossValidation):
        assert {type(r) for r in roles} == {FoldRole}
    if isinstance(exp, e.Sweep):
        first = roles[0]
        assert isinstance(first, TrialRole)
        best = {"params": first.params, "best_epochs": [3]}
        final = final_retrain(exp, best).role
        assert isinstance(final, FinalRole) and parse_role(final.to_json()) == final
    if isinstance(exp, e.Boosting):
        role = boosting_round(exp, 2, None, [0.0]).role
        assert role == RoundRole(round=2) and parse_role(role.to_json()) == role


def test_a_role_of_no_known_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        parse_role({"trial": 1})  # no params
    with pytest.raises(ValidationError):
        parse_role({"member": 1, "round": 2})
