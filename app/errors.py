"""Typed errors the services raise; ``app.main`` maps each to one JSON shape:
``{"error": {"code", "message", "fields": [{"loc", "message"}]}}``."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, fields: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.fields, self.headers = message, fields or [], headers or {}


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unprocessable(ApiError):
    status, code = 422, "validation_error"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class QuotaExceeded(ApiError):
    status, code = 403, "quota_exceeded"


class TooMany(ApiError):
    status, code = 429, "too_many_jobs"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"
