"""What a child job is in its experiment's design, typed. Stored as JSON in ``jobs.role``
(the same keys as before these types), validated when the aggregation reads it back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter


class _Role(BaseModel):
    # Forbidding extra keys is what tells the kinds apart when a stored role is read.
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class FoldRole(_Role):
    """One fold of a (repeated) cross-validation."""

    repeat: int
    fold: int


class TrialRole(_Role):
    """One sweep trial; with a cross-validated objective, one fold of it."""

    trial: int
    params: dict[str, Any]
    repeat: int | None = None
    fold: int | None = None


class FinalRole(_Role):
    """The sweep's best configuration retrained on train + val."""

    final: Literal[True]
    params: dict[str, Any]


class MemberRole(_Role):
    member: int  # a bagging member, bootstrap seed = experiment seed + member


class RoundRole(_Role):
    round: int  # a boosting round


class SettingRole(_Role):
    """One bootstrap replicate at one value of the bias-variance parameter."""

    setting: int
    value: Any
    replicate: int


class BatchSizeRole(_Role):
    batch_size: int | Literal["full"]


class OptimizerRole(_Role):
    optimizer: str
    index: int


class DepthRole(_Role):
    """The network at one depth, plain or residual."""

    depth: int
    residual: bool


Role = (FoldRole | TrialRole | FinalRole | MemberRole | RoundRole | SettingRole | BatchSizeRole
        | OptimizerRole | DepthRole)

_ROLE: TypeAdapter[Role] = TypeAdapter(Role)


def parse_role(raw: dict[str, Any]) -> Role:
    """A stored role (``jobs.role``) as its type; ValueError when it is none of them."""
    return _ROLE.validate_python(raw)
