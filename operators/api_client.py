"""The requests the provider sends to Hermesflow's HTTP API, as values.

Each route of the control API the provider uses is a function returning a `Route`: method,
path, body, query and the model of the answer. The hook sends a route with a blocking client
(operators, the listener) or an async one (triggers), and `read` turns either answer into the
model or a `HermesApiError` — so the two transports share every path, body and error message,
and the models are the server's own (`hermesflow.api_models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, RootModel, ValidationError

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
from hermesflow.api.models.lifecycle import Health
from hermesflow.api.models.monitor import ActHistory, ClassSummary, LiveAppView
from hermesflow.client_records import TaskOutcome
from hermesflow.pdgraph.model import PDGraph

M = TypeVar("M", bound=BaseModel)

TRANSIENT_STATUS = frozenset({502, 503, 504})
"""Answers of a proxy or a restarting server: the same request may succeed a moment later."""


class HermesApiError(Exception):
    """The API refused a request or answered something unreadable; `status` is the HTTP status
    (0 when no answer came)."""

    def __init__(self, route: Route[Any], status: int, detail: str) -> None:
        self.route, self.status, self.detail = route, status, detail
        super().__init__(f"Hermesflow API {route}: {_explain(status, detail)}")

    @property
    def transient(self) -> bool:
        """Whether retrying the same request later may succeed (no answer, or a 502/503/504)."""
        return self.status == 0 or self.status in TRANSIENT_STATUS


def _explain(status: int, detail: str) -> str:
    if status == 0:
        return f"no answer ({detail}); check that `hermesflow serve` runs at the connection's host"
    if status in (401, 403):
        return (
            f"{status} {detail}; set the connection's password to the token the server was "
            "started with (`hermesflow serve --token`)"
        )
    return f"{status} {detail}"


@dataclass(frozen=True)
class Route(Generic[M]):
    """One request and the model of its answer. `wait_s` is how long the server may hold a
    long poll: the client's read timeout grows by it."""

    method: str
    path: str
    model: type[M]
    body: BaseModel | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    wait_s: float = 0.0

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def request_kwargs(self) -> dict[str, Any]:
        """The arguments of `httpx.Client.request` / `AsyncClient.request` for this route."""
        kwargs: dict[str, Any] = {"params": dict(self.params)}
        if self.body is not None:
            kwargs["json"] = self.body.model_dump(mode="json", exclude_none=True)
        return kwargs

    def read(self, response: httpx.Response) -> M:
        """The answer as the route's model; raises `HermesApiError` for any non-2xx answer."""
        if not response.is_success:
            raise HermesApiError(self, response.status_code, _detail(response))
        try:
            return self.model.model_validate(response.json())
        except (ValueError, ValidationError) as error:
            raise HermesApiError(
                self,
                response.status_code,
                f"unreadable answer ({error}); is the server a "
                "Hermesflow of the same version as this provider?",
            ) from None


def _detail(response: httpx.Response) -> str:
    """FastAPI's `{"detail": ...}` message, else the body's start."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else (response.text[:500] or response.reason_phrase)


def _segment(value: str) -> str:
    """One path segment: application ids hold ':' and the run id's '+'."""
    return quote(value, safe="")


def health() -> Route[Health]:
    return Route("GET", "/healthz", Health)


def stats() -> Route[SchedulerStats]:
    """The scheduler's counters: a cheap authenticated request (connection tests)."""
    return Route("GET", "/v1/stats", SchedulerStats)


def declare_class(graph: PDGraph) -> Route[ClassDeclaration]:
    return Route("PUT", f"/v1/classes/{_segment(graph.name)}/graph", ClassDeclaration, graph)


def put_step(app_id: str, step_id: str, submission: StepSubmission) -> Route[StepView]:
    path = f"/v1/apps/{_segment(app_id)}/steps/{_segment(step_id)}"
    return Route("PUT", path, StepView, submission)


def get_step(app_id: str, step_id: str, wait_s: float = 0.0) -> Route[StepView]:
    path = f"/v1/apps/{_segment(app_id)}/steps/{_segment(step_id)}"
    return Route("GET", path, StepView, params={"wait": wait_s}, wait_s=wait_s)


def submit_app(submission: AppSubmission) -> Route[AppView]:
    return Route("POST", "/v1/apps", AppView, submission)


def get_app(app_id: str, wait_s: float | None = None) -> Route[AppView]:
    params = {} if wait_s is None else {"wait": wait_s}
    return Route(
        "GET", f"/v1/apps/{_segment(app_id)}", AppView, params=params, wait_s=wait_s or 0.0
    )


def record_task_outcome(app_id: str, outcome: TaskOutcome) -> Route[TaskOutcome]:
    return Route("POST", f"/v1/apps/{_segment(app_id)}/tasks", TaskOutcome, outcome)


def finish_app(app_id: str, request: FinishRequest) -> Route[AppView]:
    return Route("POST", f"/v1/apps/{_segment(app_id)}/finish", AppView, request)


# -- monitoring (read-only; the Airflow plugin's JSON API proxies these) ---------------------------


class LiveApps(RootModel[list[LiveAppView]]):
    """The answer of `GET /v1/apps`: a JSON list, as a model a `Route` can read."""


class Backends(RootModel[list[BackendView]]):
    """The answer of `GET /v1/backends`."""


class ClassSummaries(RootModel[list[ClassSummary]]):
    """The answer of `GET /v1/classes`."""


def _present(**params: Any) -> dict[str, Any]:
    """The query parameters that are set: an unset one takes the server's default."""
    return {name: value for name, value in params.items() if value is not None}


def live_apps(app_class: str | None = None, limit: int | None = None) -> Route[LiveApps]:
    """The live applications, most urgent first (the order the policy serves them)."""
    return Route("GET", "/v1/apps", LiveApps, params=_present(app_class=app_class, limit=limit))


def backends() -> Route[Backends]:
    return Route("GET", "/v1/backends", Backends)


def classes() -> Route[ClassSummaries]:
    return Route("GET", "/v1/classes", ClassSummaries)


def class_graph(name: str) -> Route[PDGraph]:
    return Route("GET", f"/v1/classes/{_segment(name)}/graph", PDGraph)


def act_history(
    window_s: float | None = None, buckets: int | None = None, app_class: str | None = None
) -> Route[ActHistory]:
    """Completion times of the runs that ended in the last `window_s`, by policy."""
    params = _present(window_s=window_s, buckets=buckets, app_class=app_class)
    return Route("GET", "/v1/act", ActHistory, params=params)
