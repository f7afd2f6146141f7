"""Response shapes shared by the routes that create resources."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel


def created(body: BaseModel, was_created: bool, location: str) -> JSONResponse:
    """201 for a new resource, 200 for an idempotent replay of it; Location either way."""
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if was_created else 200,
                        headers={"Location": location})
