"""/v1/compare: jobs side by side."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import SessionDep, TenantDep
from app.schemas import error_responses
from app.services import compare as service
from app.services.compare import Comparison

router = APIRouter(prefix="/v1/compare", tags=["jobs"])


@router.get("", response_model=Comparison, responses=error_responses(404))
def compare_jobs(
    session: SessionDep, tenant: TenantDep,
    jobs: Annotated[str, Query(max_length=service.MAX_JOBS * 41,
                               description="2 to 10 job ids, comma-separated.",
                               examples=["job_a,job_b"])],
    metrics: Annotated[str | None, Query(
        max_length=service.MAX_METRICS * 30,
        description="Per-epoch metrics as `split_name`, comma-separated "
                    "(default train_loss,val_loss).", examples=["val_loss,val_accuracy"])] = None,
) -> Comparison:
    """Curves aligned by epoch, summaries side by side, and only the spec paths that
    differ. Another tenant's job id answers 404, as a missing one does."""
    return service.compare(session, tenant, jobs, metrics)
