"""The one HTTP client of Hermesflow's API: its requests as values, their answers as the API's
models, one error type, and blocking and async senders on httpx.

Every process that talks to a `hermesflow serve` it did not start in-process uses this module:
the CLI (`hermesflow submit`, and `serve` waiting for its own gateway's readiness),
Semantic-Variable programs submitted by URL, and — through `HermesHook`, which only turns an
Airflow connection into an `ApiEndpoint` — the operators, triggers, listener and the plugin's
JSON API. So every path, body, query, timeout and error message is written here once, and the
models are the server's own (`hermesflow.api.models`): a field renamed on the server is a type
error here, not a silent `None` in a client.

Each route is a function returning a `Route` (method, path, body, query, model of the answer);
`ApiClient.send` sends one and blocks, `ApiClient.asend` awaits it on an event loop (Airflow's
triggerer, the plugin). Both read the answer the same way, into the route's model or a
`HermesApiError` whose message says what the user changes — in the caller's terms, which the
`ApiEndpoint` carries (an Airflow connection's password, `--token`, an environment variable).

Below Airflow and Ray: this module imports neither, nor anything from `operators/` or
`plugins/`, so a plain Python program can use it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from http import HTTPMethod, HTTPStatus
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, RootModel

from hermesflow.api.models.control import (
    AppSubmission,
    AppView,
    BackendView,
    ClassDeclaration,
    FinishRequest,
    SchedulerStats,
    StepSubmission,
    StepView,
)
from hermesflow.api.models.lifecycle import READY_PATH, Health, Readiness
from hermesflow.api.models.monitor import ActHistory, ClassSummary, LiveAppView
from hermesflow.client_records import TaskOutcome
from hermesflow.config import TOKEN_ENV
from hermesflow.pdgraph.model import PDGraph

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT_S = 30.0
"""Read timeout of a request; a long poll's read timeout adds the time it asks the server to
wait (`Route.wait_s`)."""
CONNECT_TIMEOUT_S = 5.0
"""A server that has not accepted the connection by then is not there (or not yet)."""
MAX_POLL_S = 60.0
"""The longest wait one request asks for: the server holds a step's long poll at most this
long, so a client that waits longer asks again."""
NO_ANSWER = 0
"""`HermesApiError.status` when no HTTP answer came (refused, reset, timed out)."""
TRANSIENT_STATUS = frozenset(
    {HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.GATEWAY_TIMEOUT}
)
"""Answers of a proxy or a restarting server: the same request may succeed a moment later."""


class InvalidAddress(ValueError):
    """The address given for the API is not an http(s) URL; no request was sent. A caller that
    knows where the user set the address (an Airflow connection) words its own fix from
    `base_url` and `reason`."""

    def __init__(self, base_url: str, reason: str) -> None:
        self.base_url, self.reason = base_url, reason
        super().__init__(
            f"{base_url!r} is not an http(s) URL ({reason}); give the address "
            "`hermesflow serve` prints, e.g. http://127.0.0.1:8000"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.base_url, self.reason)


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API is and its bearer token; and, for the error messages, what the user calls
    the setting of each, so an error names what to change where the user sets it."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    """Kept out of `repr`: clients and errors end up in logs."""
    address_setting: str | None = None
    """How the user's configuration names the address (default: the URL itself)."""
    token_setting: str = TOKEN_ENV
    """Where the user puts the token, e.g. "the connection's password"."""

    def __post_init__(self) -> None:
        try:
            scheme = httpx.URL(self.base_url).scheme
        except httpx.InvalidURL as error:
            raise InvalidAddress(self.base_url, str(error)) from None
        if scheme not in ("http", "https"):
            raise InvalidAddress(self.base_url, "it does not start with http:// or https://")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def explain(self, status: int, detail: str) -> str:
        """What went wrong with a request to this endpoint, and what the user does about it."""
        if status == NO_ANSWER:
            where = self.address_setting or self.base_url
            return f"no answer ({detail}); check that `hermesflow serve` runs at {where}"
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            return (
                f"HTTP {status}: {detail}; set {self.token_setting} to the token the server was "
                "started with (`hermesflow serve --token`)"
            )
        return f"HTTP {status}: {detail}"


class HermesApiError(RuntimeError):
    """The API refused a request, did not answer, or answered something unreadable. `status` is
    the HTTP status (`NO_ANSWER` when none came), `detail` the server's own message, and
    `explanation` both with the fix, without the route (what a command-line user reads). A
    RuntimeError, as a failed run's `RunFailed` is: both are what a remote call met at run
    time."""

    def __init__(self, route: Route[Any], status: int, detail: str, endpoint: ApiEndpoint) -> None:
        self.route, self.status, self.detail = route, status, detail
        self.explanation = endpoint.explain(status, detail)
        self.endpoint = endpoint
        super().__init__(f"Hermesflow API {route}: {self.explanation}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from its parts: an error raised in a Ray task reaches its caller pickled."""
        return type(self), (self.route, self.status, self.detail, self.endpoint)

    @property
    def transient(self) -> bool:
        """Whether retrying the same request later may succeed (no answer, or a 502/503/504)."""
        return self.status == NO_ANSWER or self.status in TRANSIENT_STATUS


@dataclass(frozen=True)
class Route(Generic[M]):
    """One request and the model of its answer. `wait_s` is how long the server may hold a
    long poll: the client's read timeout grows by it. `readable_errors` are the error statuses
    whose body is still an answer of the model (`/readyz` says why it is not ready in a 503)."""

    method: HTTPMethod
    path: str
    model: type[M]
    body: BaseModel | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    wait_s: float = 0.0
    readable_errors: frozenset[HTTPStatus] = frozenset()

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def request_kwargs(self) -> dict[str, Any]:
        """The arguments of `httpx.Client.request` / `AsyncClient.request` for this route."""
        kwargs: dict[str, Any] = {
            "method": str(self.method),
            "url": self.path,
            "params": dict(self.params),
        }
        if self.body is not None:
            kwargs["json"] = self.body.model_dump(mode="json", exclude_none=True)
        return kwargs


@dataclass(frozen=True)
class ApiClient:
    """Sends routes to one endpoint, blocking (`send`) or awaited (`asend`).

    It holds no open connection — each request opens its own — so it is a plain value: it
    pickles (a run handle may travel into a Ray task), needs no closing, and a hook may build
    one per request from a connection that was just edited. `trust_env=False` ignores the
    environment's proxies, for a gateway this process started on its own machine."""

    endpoint: ApiEndpoint
    timeout_s: float = DEFAULT_TIMEOUT_S
    trust_env: bool = True

    def send(self, route: Route[M]) -> M:
        """Send `route` and return its answer; raises `HermesApiError`."""
        with httpx.Client(**self._client_kwargs()) as http:
            try:
                response = http.request(timeout=self._timeout(route), **route.request_kwargs())
            except httpx.TransportError as error:
                raise self._no_answer(route, error) from error
        return self._read(route, response)

    async def asend(self, route: Route[M]) -> M:
        """`send` with `httpx.AsyncClient`: it awaits the network and never blocks the loop."""
        async with httpx.AsyncClient(**self._client_kwargs()) as http:
            try:
                response = await http.request(
                    timeout=self._timeout(route), **route.request_kwargs()
                )
            except httpx.TransportError as error:
                raise self._no_answer(route, error) from error
        return self._read(route, response)

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.endpoint.base_url,
            "headers": self.endpoint.headers,
            "trust_env": self.trust_env,
            "verify": _tls_context(self.trust_env),
        }

    def _timeout(self, route: Route[Any]) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s + route.wait_s, connect=CONNECT_TIMEOUT_S)

    def _no_answer(self, route: Route[Any], error: httpx.TransportError) -> HermesApiError:
        return HermesApiError(route, NO_ANSWER, f"{type(error).__name__}: {error}", self.endpoint)

    def _read(self, route: Route[M], response: httpx.Response) -> M:
        """The answer as the route's model; `HermesApiError` for an error status the route
        cannot read, or for a body that is not its model."""
        if not response.is_success and response.status_code not in route.readable_errors:
            raise HermesApiError(route, response.status_code, _detail(response), self.endpoint)
        try:
            return route.model.model_validate(response.json())
        except ValueError as error:  # not JSON, or pydantic's ValidationError
            raise HermesApiError(
                route,
                response.status_code,
                f"unreadable answer ({error}); is the server a Hermesflow of the same version "
                "as this client?",
                self.endpoint,
            ) from None


@cache
def _tls_context(trust_env: bool) -> ssl.SSLContext:
    """httpx's default TLS context, built once per process: loading the CA bundle costs far
    more than a request to a local server (~10x), and each request opens its own httpx client."""
    return httpx.create_ssl_context(trust_env=trust_env)


def _detail(response: httpx.Response) -> str:
    """FastAPI's `{"detail": ...}` message, else the body's start."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else (response.text[:500] or response.reason_phrase)


# -- the routes ------------------------------------------------------------------------------------


def _segment(value: str) -> str:
    """One path segment: application ids hold ':' and the run id's '+'."""
    return quote(value, safe="")


def _present(**params: Any) -> dict[str, Any]:
    """The query parameters that are set: an unset one takes the server's default."""
    return {name: value for name, value in params.items() if value is not None}


def health() -> Route[Health]:
    """Liveness: the HTTP server answers (no token needed)."""
    return Route(HTTPMethod.GET, "/healthz", Health)


def readiness() -> Route[Readiness]:
    """Whether the gateway is worth sending work to; a 503 says why not (`lifecycle`)."""
    return Route(
        HTTPMethod.GET,
        READY_PATH,
        Readiness,
        readable_errors=frozenset({HTTPStatus.SERVICE_UNAVAILABLE}),
    )


def stats() -> Route[SchedulerStats]:
    """The scheduler's counters: a cheap authenticated request (connection tests)."""
    return Route(HTTPMethod.GET, "/v1/stats", SchedulerStats)


def declare_class(graph: PDGraph) -> Route[ClassDeclaration]:
    """Declare `graph` as its class's prior (a no-op while the structure is unchanged)."""
    path = f"/v1/classes/{_segment(graph.name)}/graph"
    return Route(HTTPMethod.PUT, path, ClassDeclaration, graph)


def put_step(app_id: str, step_id: str, submission: StepSubmission) -> Route[StepView]:
    """Submit a named step; the same ids again return the existing step (idempotent)."""
    path = f"/v1/apps/{_segment(app_id)}/steps/{_segment(step_id)}"
    return Route(HTTPMethod.PUT, path, StepView, submission)


def get_step(app_id: str, step_id: str, wait_s: float = 0.0) -> Route[StepView]:
    """A named step, once it has ended or after `wait_s` (a long poll)."""
    path = f"/v1/apps/{_segment(app_id)}/steps/{_segment(step_id)}"
    return Route(HTTPMethod.GET, path, StepView, params={"wait": wait_s}, wait_s=wait_s)


def submit_app(submission: AppSubmission) -> Route[AppView]:
    """Start a program run; the same `app_id` again returns the same run."""
    return Route(HTTPMethod.POST, "/v1/apps", AppView, submission)


def get_app(app_id: str, wait_s: float | None = None) -> Route[AppView]:
    """A run's view: at once, or once it has ended or after `wait_s` (a long poll)."""
    return Route(
        HTTPMethod.GET,
        f"/v1/apps/{_segment(app_id)}",
        AppView,
        params=_present(wait=wait_s),
        wait_s=wait_s or 0.0,
    )


def record_task_outcome(app_id: str, outcome: TaskOutcome) -> Route[TaskOutcome]:
    """How an Airflow task of the application ended (stored once per task, try and state)."""
    return Route(HTTPMethod.POST, f"/v1/apps/{_segment(app_id)}/tasks", TaskOutcome, outcome)


def finish_app(app_id: str, request: FinishRequest) -> Route[AppView]:
    """End an application whose steps the client submitted (an Airflow DAG run)."""
    return Route(HTTPMethod.POST, f"/v1/apps/{_segment(app_id)}/finish", AppView, request)


# -- monitoring (read-only; the Airflow plugin's JSON API proxies these) ---------------------------


class LiveApps(RootModel[list[LiveAppView]]):
    """The answer of `GET /v1/apps`: a JSON list, as a model a `Route` can read."""


class Backends(RootModel[list[BackendView]]):
    """The answer of `GET /v1/backends`."""


class ClassSummaries(RootModel[list[ClassSummary]]):
    """The answer of `GET /v1/classes`."""


def live_apps(app_class: str | None = None, limit: int | None = None) -> Route[LiveApps]:
    """The live applications, most urgent first (the order the policy serves them)."""
    params = _present(app_class=app_class, limit=limit)
    return Route(HTTPMethod.GET, "/v1/apps", LiveApps, params=params)


def backends() -> Route[Backends]:
    """Each backend's phase, load, warm-ups and last error."""
    return Route(HTTPMethod.GET, "/v1/backends", Backends)


def classes() -> Route[ClassSummaries]:
    """The application classes and where their current PDGraphs came from."""
    return Route(HTTPMethod.GET, "/v1/classes", ClassSummaries)


def class_graph(name: str) -> Route[PDGraph]:
    """The current PDGraph of class `name` (404: no such class)."""
    return Route(HTTPMethod.GET, f"/v1/classes/{_segment(name)}/graph", PDGraph)


def act_history(
    window_s: float | None = None, buckets: int | None = None, app_class: str | None = None
) -> Route[ActHistory]:
    """Completion times of the runs that ended in the last `window_s`, by policy."""
    params = _present(window_s=window_s, buckets=buckets, app_class=app_class)
    return Route(HTTPMethod.GET, "/v1/act", ActHistory, params=params)
