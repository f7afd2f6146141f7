"""Warm starts (``model.init_from``): the source job is the tenant's own and succeeded, its
checkpoint fits the new model tensor by tensor, and its sha256 is pinned into the spec.

Read from the checkpoint's safetensors header (names and shapes), never loaded: no torch.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import repository as repo
from app import spec as s
from app.errors import NotFound
from app.models import Checkpoint, Job
from app.services import jobs as job_service
from app.statuses import JobStatus
from app.training import shapes
from app.training.blobs import WEIGHTS, CorruptBlob, read_header, verify
from app.training.errors import DataError
from app.validation import Problem, SpecRejected

LOC = ("model", "init_from")
SHOWN = 5  # mismatching tensors named in one message


def pin(session: Session, tenant_id: str, spec: s.JobSpec, info: shapes.DataInfo) -> None:
    """Check ``spec.model.init_from`` and set its sha256 (422 naming the field otherwise)."""
    init = spec.model.init_from
    if init is None:
        return
    row = _source_checkpoint(session, tenant_id, init)
    problems = _fit_problems(spec, info, init, _header_shapes(row))
    if init.sha256 is not None and init.sha256 != row.sha256:
        problems.append(Problem((*LOC, "sha256"), f"is {init.sha256} but job '{init.job}''s "
                                f"'{init.checkpoint}' checkpoint is {row.sha256}"))
    if problems:
        raise SpecRejected(problems)
    init.sha256 = row.sha256  # stored with the spec: the worker loads exactly these weights


def source_blob(session: Session, job: Job) -> bytes | None:
    """For the worker: the pinned checkpoint of a job's warm start (DataError if it changed)."""
    init = s.JobSpec.model_validate(job.spec).model.init_from
    if init is None:
        return None
    try:
        row = job_service.checkpoint(session, job.tenant_id, init.job, init.checkpoint)
    except NotFound as exc:
        raise DataError(f"model.init_from: job '{init.job}' no longer has its "
                        f"'{init.checkpoint}' checkpoint") from exc
    return row.blob


def _source_checkpoint(session: Session, tenant_id: str, init: s.InitFrom) -> Checkpoint:
    source = repo.get_job(session, tenant_id, init.job)  # another tenant's job: not found
    if source is None:
        raise SpecRejected([Problem((*LOC, "job"), f"no job '{init.job}'")])
    if source.status != JobStatus.SUCCEEDED:
        raise SpecRejected([Problem((*LOC, "job"), f"job '{init.job}' is {source.status}; a "
                                    "warm start needs a succeeded job's weights")])
    try:
        row = job_service.checkpoint(session, tenant_id, init.job, init.checkpoint)
        verify(row.blob, row.sha256)
    except (NotFound, CorruptBlob) as exc:
        raise SpecRejected([Problem((*LOC, "checkpoint"), f"job '{init.job}' has no usable "
                                    f"'{init.checkpoint}' checkpoint")]) from exc
    return row


def _header_shapes(row: Checkpoint) -> shapes.Shapes:
    start = len(WEIGHTS) + 1
    return {name[start:]: tuple(entry["shape"]) for name, entry in read_header(row.blob).items()
            if name.startswith(WEIGHTS + ".")}


def _fit_problems(spec: s.JobSpec, info: shapes.DataInfo, init: s.InitFrom,
                  source: shapes.Shapes) -> list[Problem]:
    info = shapes.job_info(spec.task, info)
    wanted = shapes.state_shapes(spec.model, shapes.effective_input_shape(spec.data, info),
                                 shapes.output_dim(info, spec.loss))
    reinit = init.head == "reinit"
    wrong = [f"{name} (this model {list(shape)}, checkpoint "
             f"{list(source[name]) if name in source else 'none'})"
             for name, shape in wanted.items()
             if not (reinit and name.startswith("head.")) and source.get(name) != shape]
    problems = []
    if wrong:
        problems.append(Problem((*LOC, "job"), f"job '{init.job}''s checkpoint does not fit "
                                f"this model at {len(wrong)} tensors: {'; '.join(wrong[:SHOWN])}"
                                + ("" if reinit else "; head: reinit gives a fresh output layer")))
    for i, prefix in enumerate(init.freeze):
        if not any(name.startswith(prefix) for name in wanted):
            problems.append(Problem((*LOC, "freeze", i), f"'{prefix}' names no tensor of this "
                                    f"model; its tensors start with {_roots(wanted)}"))
    return problems


def _roots(names: shapes.Shapes) -> list[str]:
    return sorted({name.split(".")[0] + "." for name in names if "." in name})
