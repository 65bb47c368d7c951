"""The Hermesflow HTTP API: one FastAPI app in front of the scheduler actor.

`build_app(scheduler, token)` assembles the app from its route groups — the control API
(`hermesflow.api.control`), its monitoring views (`hermesflow.api.monitor`) and the
OpenAI-compatible API (`hermesflow.api.openai`) — plus the probes `/healthz` (liveness) and
`/readyz` (readiness: the pinned backends are warm, `hermesflow.api.lifecycle`) and the OpenAPI
documents. Every route awaits one method of the scheduler actor through `SchedulerProxy`; the
app holds no state of its own, so any number of API servers may front one scheduler. It is
served on Ray by `hermesflow.api.deployment`.

Auth: with a `token`, every route but the probes needs `Authorization: Bearer <token>` (401
with `WWW-Authenticate: Bearer` without it or with another, the answer OpenAI clients read as
an authentication error; compared in constant time), `/docs` and `/openapi.json` included.

Limits and errors: a body over `ApiLimits.max_body_bytes` is refused with 413, a JSON body that
is not Unicode with 400, before any route works on it (`hermesflow.api.limits`). Every
error is rendered in its route family's format; an unexpected one is a 500 whose message names
an incident id, its traceback goes to the log only.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from hermesflow.api.control import control_router
from hermesflow.api.errors import ApiError
from hermesflow.api.lifecycle import Drain, readiness_router
from hermesflow.api.limits import BodyLimit, require_unicode
from hermesflow.api.models.lifecycle import Health
from hermesflow.api.monitor import monitor_router
from hermesflow.api.openai import OpenAIRoute, error_document, openai_router
from hermesflow.api.scheduler_proxy import SchedulerProxy
from hermesflow.config import ApiLimits
from hermesflow.incidents import report

log = logging.getLogger(__name__)

_TAGS = [
    {"name": "health", "description": "Liveness and readiness of the server (no auth)."},
    {"name": "applications", "description": "Submit program runs, read their state and events."},
    {
        "name": "steps",
        "description": "Single steps of open applications (Airflow tasks, custom clients), "
        "their task outcomes, and finishing them.",
    },
    {"name": "backends", "description": "Backends' lifecycle phases and the scheduler's counters."},
    {"name": "classes", "description": "Application classes and their PDGraphs."},
    {
        "name": "monitoring",
        "description": "Live applications in the policy's order, classes, and completion-time "
        "history, for dashboards.",
    },
    {
        "name": "openai",
        "description": "OpenAI-compatible endpoints; each request is a step of an application.",
    },
]


# -- auth ----------------------------------------------------------------------------------------


def _token_guard(token: str) -> Any:
    """A dependency that admits only `Authorization: Bearer <token>`."""
    bearer = HTTPBearer(
        auto_error=False, description="the token `hermesflow serve` was started with"
    )
    expected = token.encode()

    async def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> None:
        # (a default, not `Annotated`: the annotation is a string that cannot see `bearer`)
        if credentials is None:
            raise HTTPException(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>' (the token the server was started with)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(
                401,
                "invalid bearer token: send the token the server was started with",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    return require_token


# -- errors: one format per route family ---------------------------------------------------------


def _is_openai_route(request: Request) -> bool:
    return isinstance(request.scope.get("route"), OpenAIRoute)


def _openai_error(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_document(error), status_code=error.status, headers=headers)


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    if _is_openai_route(request):
        return _openai_error(error)
    return JSONResponse({"detail": error.message}, status_code=error.status)


async def _http_error(request: Request, error: StarletteHTTPException) -> Any:
    if _is_openai_route(request):
        if error.status_code == 401:
            problem = ApiError(
                401, str(error.detail), type="authentication_error", code="invalid_api_key"
            )
        else:
            problem = ApiError(error.status_code, str(error.detail))
        return _openai_error(problem, error.headers)
    return await http_exception_handler(request, error)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    """A bug: 500 naming an incident id; the traceback goes to the log, never to the client."""
    message = report(log, f"{request.method} {request.url.path} failed", error)
    problem = ApiError(500, message, type="server_error")
    if _is_openai_route(request):
        return _openai_error(problem)
    return JSONResponse({"detail": message}, status_code=500)


async def _validation_error(request: Request, error: RequestValidationError) -> Any:
    """FastAPI's 422 on the control API; OpenAI's 400 `invalid_request_error` on its routes."""
    if not _is_openai_route(request):
        return await request_validation_exception_handler(request, error)
    problems = error.errors()
    first = problems[0] if problems else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in problems
    )
    return _openai_error(ApiError(400, message or "invalid request", param=param))


# -- the app -------------------------------------------------------------------------------------


def build_app(
    scheduler: Any,
    token: str | None = None,
    *,
    limits: ApiLimits | None = None,
    event_poll_s: float | None = None,
) -> FastAPI:
    """The HTTP API in front of `scheduler` (the scheduler actor's handle); `limits` default to
    the `HERMES_API_*` settings."""
    limits = limits or ApiLimits()
    auth = [Depends(_token_guard(token))] if token else []
    drain = Drain()
    guard = [*auth, Depends(require_unicode), Depends(drain.admit)]
    app = FastAPI(
        title="Hermesflow",
        summary="Serve multi-step LLM applications sooner: Gittins scheduling on demand graphs, with prewarming.",
        version="1",
        openapi_tags=_TAGS,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(drain.middleware)
    app.state.drain = drain

    @app.get("/healthz", tags=["health"], summary="Liveness", response_model=Health)
    async def healthz() -> Health:
        return Health()

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Hermesflow API")

    proxy = SchedulerProxy(scheduler)
    app.include_router(readiness_router(proxy, drain))
    options = {} if event_poll_s is None else {"poll_s": event_poll_s}
    app.include_router(control_router(proxy, limits=limits, **options), dependencies=guard)
    app.include_router(monitor_router(proxy), dependencies=guard)
    app.include_router(openai_router(proxy), dependencies=guard)
    return app
