"""The Hermesflow HTTP API: one FastAPI app in front of the scheduler actor, served by uvicorn
inside a detached Ray actor.

`build_app(scheduler, token)` assembles the app from its route groups — the control API
(`hermesflow.gateway_control`), its monitoring views (`hermesflow.gateway_monitor`) and the
OpenAI-compatible API (`hermesflow.gateway_openai`) — plus the probes `/healthz` (liveness) and
`/readyz` (readiness: the pinned backends are warm) and the OpenAPI documents.
Every route awaits one method of the scheduler actor; the app holds no state of its own, so any
number of gateways may front one scheduler.

Auth: with a `token`, every route but the probes needs `Authorization: Bearer <token>` (401
with `WWW-Authenticate: Bearer` without it or with another, the answer OpenAI clients read as
an authentication error; compared in constant time), `/docs` and `/openapi.json` included.

Limits and errors: a body over `ApiLimits.max_body_bytes` is refused with 413, a JSON body that
is not Unicode with 400, before any route works on it (`hermesflow.gateway_limits`). Every
error is rendered in its route family's format; an unexpected one is a 500 whose message names
an incident id, its traceback goes to the log only.

Serving: `GatewayActor` is a plain detached Ray actor that binds the listening socket itself
(a taken port fails its creation with a clear error rather than uvicorn's `sys.exit`) and runs
`uvicorn.Server` as a task on its own event loop; 127.0.0.1 by default. On one machine this is
cheaper and faster than Ray Serve, whose replicas also open a gRPC port on every interface
(docs/STACK §10). `start_gateway` creates it (or finds it) and waits until `/healthz` answers.
`stop_gateway` drains it first (`hermesflow.gateway_lifecycle`): new requests get 503, open ones
may finish within the grace period, and what is still open then is ended with an error, never
cut off.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from typing import Any

import httpx
import ray
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from starlette.exceptions import HTTPException as StarletteHTTPException

from hermesflow.api_models import Health
from hermesflow.config import ApiLimits
from hermesflow.gateway_control import control_router
from hermesflow.gateway_lifecycle import Drain, readiness_router
from hermesflow.gateway_limits import BodyLimit, require_unicode
from hermesflow.gateway_monitor import monitor_router
from hermesflow.gateway_openai import OpenAIRoute, error_document, openai_router
from hermesflow.gateway_scheduler import ApiError, SchedulerProxy
from hermesflow.incidents import report
from hermesflow.lifecycle import DEFAULT_GRACE_S, DrainReport
from hermesflow.schedulers.runtime import get_scheduler
from hermesflow.schedulers.runtime_config import NAMESPACE, SCHEDULER_NAME

log = logging.getLogger(__name__)

GATEWAY_NAME = "gateway"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TOKEN_ENV = "HERMES_API_TOKEN"
"""Environment variable the CLI reads the API token from."""
GRACEFUL_SHUTDOWN_S = 5.0
"""After the drain, how long uvicorn waits for connections to close (none should be open)."""

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
            problem = ApiError(401, str(error.detail), type="authentication_error", code="invalid_api_key")
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


# -- serving on Ray ------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), family=_family(host))
    except OSError as error:
        raise RuntimeError(
            f"the gateway cannot listen on {host}:{port} ({error.strerror}); choose another --port "
            "or stop what is using it"
        ) from None


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        return socket.AF_INET


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = ray.util.get_node_ip_address()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@ray.remote
class GatewayActor:
    """uvicorn serving `build_app` on this actor's event loop (module docstring). It starts
    serving in its constructor, so a restarted actor serves again by itself."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None,
        scheduler_name: str,
        namespace: str,
        log_level: str = "warning",
        limits: dict[str, Any] | None = None,
    ) -> None:
        api_limits = ApiLimits(**limits) if limits is not None else ApiLimits()
        app = build_app(get_scheduler(scheduler_name, namespace), token, limits=api_limits)
        self._socket = _listen(host, port)
        bound_port = self._socket.getsockname()[1]
        self._settings = _settings(host, bound_port, token, scheduler_name, api_limits)
        self._url = _url(host, bound_port)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        self._drain: Drain = app.state.drain
        self._server = uvicorn.Server(config)
        self._serving = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._socket])
        )

    async def url(self) -> str:
        """The base URL, once uvicorn accepts connections."""
        while not self._server.started:
            if self._serving.done():
                raise RuntimeError(
                    f"the gateway stopped while starting: {self._serving.exception()!r}"
                )
            await asyncio.sleep(0.01)
        return self._url

    async def settings(self) -> dict[str, Any]:
        """What it was started with (the token as a digest), to tell a caller that asks for
        other settings under the same name."""
        return self._settings

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
        """Drain (refuse new requests, let open ones finish for up to `grace_s`, end the rest
        with an error), stop the server, and say how the drain went."""
        drained = await self._drain.drain(grace_s)
        self._server.should_exit = True
        await self._serving
        return drained.model_dump()


def start_gateway(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    scheduler_name: str = SCHEDULER_NAME,
    namespace: str = NAMESPACE,
    *,
    name: str = GATEWAY_NAME,
    log_level: str = "warning",
    timeout_s: float = 60.0,
    limits: ApiLimits | None = None,
) -> str:
    """Start the gateway actor (or find the running one of that name) in front of the named
    scheduler and return its base URL once `/healthz` answers. Ray must be initialised and
    the scheduler running. `port=0` picks a free port. The actor is pinned to this driver's
    node, so the address it binds is this machine's (or container's): Ray's soft affinity
    spilled it to another node of a compose deployment when this node had no idle worker.
    `limits` default to the `HERMES_API_*` settings of this process (the one the operator
    starts)."""
    limits = limits or ApiLimits()
    get_scheduler(scheduler_name, namespace)  # a clear error here rather than a dead actor
    handle = GatewayActor.options(
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote(host, port, token, scheduler_name, namespace, log_level, limits.model_dump())
    url = ray.get(handle.url.remote(), timeout=timeout_s)
    running = ray.get(handle.settings.remote())
    wanted = _settings(host, port or running["port"], token, scheduler_name, limits)
    if running != wanted:
        differ = sorted(k for k in wanted if wanted[k] != running[k])
        raise RuntimeError(
            f"a gateway named {name!r} already runs at {url} with other settings ({', '.join(differ)}); "
            "stop it first (`hermesflow stop`) or give this one another name"
        )
    _wait_healthy(url, timeout_s)
    return url


def _settings(
    host: str, port: int, token: str | None, scheduler_name: str, limits: ApiLimits
) -> dict[str, Any]:
    digest = hashlib.sha256(token.encode()).hexdigest() if token else None
    return {
        "host": host,
        "port": port,
        "token_sha256": digest,
        "scheduler": scheduler_name,
        "limits": limits.model_dump(),
    }


def _wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if (
                httpx.get(f"{url}/healthz", timeout=5.0, trust_env=False).status_code == 200
            ):  # no proxies
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the gateway at {url} did not answer /healthz within {timeout_s:.0f} s"
            )
        time.sleep(0.1)


def stop_gateway(
    name: str = GATEWAY_NAME, namespace: str = NAMESPACE, grace_s: float = DEFAULT_GRACE_S
) -> DrainReport | None:
    """Drain the named gateway actor for up to `grace_s` seconds, stop and kill it, and say how
    the drain went; None if there was no such gateway."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None
    started = time.monotonic()
    try:
        drained = ray.get(handle.stop.remote(grace_s), timeout=grace_s + GRACEFUL_SHUTDOWN_S + 10)
        outcome = DrainReport.model_validate(drained)
    except (ray.exceptions.RayError, TimeoutError) as error:  # it is killed below either way
        outcome = DrainReport.failed(f"{type(error).__name__}", time.monotonic() - started)
    ray.kill(handle)
    return outcome
