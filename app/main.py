"""The app factory: routers, one error shape, auth and size caps before any body byte is
read, 503 when SQL is down."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import spec
from app.config import Limits, get_settings
from app.db import get_sessionmaker
from app.errors import ApiError
from app.http_metrics import HttpMetrics
from app.logs import RequestId
from app.routes import catalog, compare, datasets, experiments, health, jobs, ui, usage
from app.routes import events as event_routes
from app.routes import metrics as metrics_route
from app.routes import models as model_routes
from app.routes import plots as plot_routes
from app.schemas import V1_ERRORS
from app.services import keys
from app.services.workers import watch_queues
from app.spec_unions import EXPERIMENT_KINDS, UNION_FIELDS, UNION_LIST_FIELDS
from app.validation import SpecRejected

log = logging.getLogger("trainyard.api")


def error_body(code: str, message: str,
               fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or []}}


def _model_names(cls: type[BaseModel]) -> set[str]:
    return {cls.__name__}.union(*(_model_names(sub) for sub in cls.__subclasses__()))


# A smart (untagged) union names the member it tried in the loc: a class name, which no
# spec field is (they are snake_case).
SPEC_MODEL_NAMES = _model_names(spec.Strict)


def json_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the JSON path a user wrote (union tags removed)."""
    out: list[str] = []
    prev: Any = None
    for seg in loc:
        if ((seg == "body" and not out) or (isinstance(seg, str) and "[" in seg)
                or seg in SPEC_MODEL_NAMES):
            continue
        if isinstance(prev, int) and len(out) > 1 and out[-2] in UNION_LIST_FIELDS:
            prev = "#item"  # an item of a list of tagged unions (optimizer_comparison's)
        if not out and prev is None and seg in EXPERIMENT_KINDS:
            prev = "#kind"  # the experiment's own union tag
            continue
        if isinstance(seg, str) and (prev in UNION_FIELDS or prev in ("#item", "synthetic")):
            prev = "synthetic" if seg == "synthetic" and prev == "source" else "#tag"
            continue
        out.append(str(seg))
        prev = seg
    return ".".join(out) or "body"


def _field_path(err: Any) -> str:
    path = json_path(tuple(err["loc"]))
    tag = (err.get("ctx") or {}).get("discriminator")
    if err["type"].startswith("union_tag") and isinstance(tag, str):
        name = tag.strip("'")
        if name.endswith("()"):  # spec._kind_or: a non-object has no tag; else its kind is bad
            return path if err["type"] == "union_tag_not_found" else f"{path}.kind"
        return name if path == "body" else f"{path}.{name}"
    return path


def _validation_fields(exc: RequestValidationError) -> list[dict[str, str]]:
    return [{"loc": _field_path(err), "message": err["msg"]} for err in exc.errors()]


UPLOAD_ROUTES = {("POST", "/v1/datasets")}  # multipart: the dataset cap, not the JSON one
PREDICT_PATH = re.compile(r"/v1/(?:jobs|experiments)/[^/]+/predict")  # rows: own cap
TENANT_SCOPE_KEY = "trainyard.tenant"  # set by Gate, read by deps.current_tenant


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTPExceptions met while reading a body
    (any other error there becomes a 400), so a chunked body over the cap gets 413 too."""

    def __init__(self, limit: str, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds the limit {limit} {max_bytes:,}")


def body_cap(scope: Scope, limits: Limits) -> tuple[str, int]:
    """The cap that applies to this request, and its setting's name."""
    if (scope["method"], scope["path"].rstrip("/")) in UPLOAD_ROUTES:
        # the file, the form fields and their multipart headers
        form = limits.max_form_fields * limits.max_form_field_bytes + 64 * 1024
        name = f"max_dataset_bytes {limits.max_dataset_bytes:,} (plus {form:,} for the form):"
        cap = (name, limits.max_dataset_bytes + form)
    elif scope["method"] == "POST" and PREDICT_PATH.fullmatch(scope["path"].rstrip("/")):
        cap = ("max_predict_bytes", limits.max_predict_bytes)
    else:
        cap = ("max_json_bytes", limits.max_json_bytes)
    return cap if cap[1] <= limits.max_request_bytes else ("max_request_bytes",
                                                             limits.max_request_bytes)


def _header(scope: Scope, name: bytes) -> str | None:
    raw = dict(scope["headers"]).get(name)
    return raw.decode("latin-1") if raw is not None else None


def authenticate(scope: Scope) -> JSONResponse | None:
    """Check the bearer key (runs in a worker thread: it queries SQL). None when valid."""
    session = get_sessionmaker()()
    try:
        scope[TENANT_SCOPE_KEY] = keys.authenticate(session, _header(scope, b"authorization"))
        return None
    except ApiError as exc:
        return JSONResponse(error_body(exc.code, exc.message), exc.status)
    except DBAPIError as exc:
        return _db_down(exc)
    finally:
        session.close()


class Gate:
    """Before the app reads a single body byte: the API key on every /v1 route (so an
    unauthenticated body is never parsed), then the body cap for the route, with or
    without Content-Length (chunked): 413 either way."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/v1" or path.startswith("/v1/"):
            # a key accepted within TRAINYARD_KEY_CACHE_SECONDS: no SQL, no thread hop
            tenant = keys.cached_tenant(_header(scope, b"authorization"))
            if tenant is not None:
                scope[TENANT_SCOPE_KEY] = tenant
            elif (refusal := await run_in_threadpool(authenticate, scope)) is not None:
                await refusal(scope, _empty_receive, send)
                return
        limit, max_bytes = body_cap(scope, self.limits)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await _refuse(send, BodyTooLarge(limit, max_bytes))
            return
        await self.app(scope, _counting(receive, limit, max_bytes), send)


def _counting(receive: Receive, limit: str, max_bytes: int) -> Receive:
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > max_bytes:
            raise BodyTooLarge(limit, max_bytes)
        return message

    return counting


async def _refuse(send: Send, exc: BodyTooLarge) -> None:
    response = JSONResponse(error_body("too_large", str(exc.detail)), 413)
    await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def _db_down(exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse(error_body("unavailable", "the database is unavailable; retry "
                                   "shortly"), 503, headers={"Retry-After": "5"})


def allowed_methods(request: Request, fallback: str) -> str:
    """Every method the API serves at this path (Starlette's 405 names one route's only)."""
    path, methods = request.scope["path"], set()
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)) or fallback


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.fields), exc.status,
                            headers=exc.headers)

    @app.exception_handler(SpecRejected)
    async def spec_rejected(_r: Request, exc: SpecRejected) -> JSONResponse:
        fields = [{"loc": ".".join(map(str, p.loc)), "message": p.msg} for p in exc.problems]
        return JSONResponse(error_body("validation_error", str(exc), fields), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _validation_fields(exc)
        message = "; ".join(f"{f['loc']}: {f['message']}" for f in fields[:5])
        return JSONResponse(error_body("validation_error", message, fields), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request, headers.get("Allow", ""))
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(DataError)
    async def unstorable(_r: Request, exc: DataError) -> JSONResponse:
        log.info("refused a value the database cannot store: %s", exc.orig)
        return JSONResponse(error_body("validation_error", "a value cannot be stored (for "
                                       "example it contains a NUL character)"), 422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def db_down(_r: Request, exc: Exception) -> JSONResponse:
        return _db_down(exc)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # A bug still answers in the one error shape; the traceback goes to the log.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal error; it has been "
                                       "logged"), 500)


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="Trainyard",
        version="1.0.0",
        description="Training as a service: POST a job spec (data, model, loss, optimization "
        "algorithm); workers train it with PyTorch; metrics and checkpoints are queryable.",
        form_limits={"max_files": settings.limits.max_form_files,
                     "max_fields": settings.limits.max_form_fields,
                     "max_part_size": settings.limits.max_form_field_bytes},
        lifespan=watch_queues,  # the no_worker rule, even with no worker (and reaper) at all
    )
    for module in (jobs, experiments, datasets, catalog, compare, usage):  # each needs a key
        app.include_router(module.router, responses=V1_ERRORS)
    app.include_router(event_routes.router, responses=V1_ERRORS)  # SSE; needs a key too
    app.include_router(plot_routes.router, responses=V1_ERRORS)  # images; a key too
    app.include_router(model_routes.router, responses=V1_ERRORS)  # predict, downloads
    ui.mount(app)  # the dashboard's static files at /ui (it sends the key per request)
    app.include_router(health.router)
    install_error_handlers(app)
    app.add_middleware(Gate, limits=settings.limits)
    if settings.metrics_token is not None:  # Prometheus, for operators; otherwise a 404
        app.include_router(metrics_route.router)
    app.add_middleware(HttpMetrics)  # outside the gate: its refusals are counted too
    app.add_middleware(RequestId)  # outermost: every response carries X-Request-ID
    return app
