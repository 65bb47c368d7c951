"""The plugin's JSON API: Hermesflow's monitoring routes, read for a logged-in Airflow user.

Each route sends one request of `hermesflow.client` through `HermesHook.arun`
(the Airflow connection holds Hermesflow's address and token, so neither reaches the browser)
and answers the server's own models from `hermesflow.api.models`. The live applications, classes
and completion-time history are the control API's own route declarations
(`hermesflow.api.monitor.add_monitor_routes`), so their query parameters are checked here with
the same bounds, and a bad value is this API's 422, not a request Hermesflow refuses.

When Hermesflow cannot be asked, the answer is a JSON `{"detail": ...}` that names the Airflow
connection and the fix — never a 500, because the page shows it to the user as it is:

* 503 — the connection is missing or invalid, or Hermesflow did not answer (not started,
  restarting, wrong host or port) or answered 502/503/504: asking again later may succeed;
* 502 — Hermesflow answered, but not usefully: it refused the token, failed, or sent something
  this provider cannot read (a different Hermesflow version);
* 404 — Hermesflow has no such class (the graph route only): passed on as is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel

from hermesflow import client
from hermesflow.api.models.control import BackendView, SchedulerStats
from hermesflow.api.models.monitor import ActHistory, ClassSummary, LiveAppView
from hermesflow.api.monitor import add_monitor_routes
from hermesflow.client import HermesApiError, Route
from hermesflow.operators.hook import HermesConnectionError, HermesHook
from hermesflow.pdgraph.model import PDGraph

M = TypeVar("M", bound=BaseModel)

MONITOR_TIMEOUT_S = 10.0
"""Connect and read timeout of one proxied request: the page polls every 2 s, so an answer
later than this is stale anyway and the user is better served by the error."""


class ProxyError(BaseModel):
    """Why Hermesflow could not be asked: names the Airflow connection and what to fix."""

    detail: str


PROXY_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_502_BAD_GATEWAY: {
        "model": ProxyError,
        "description": "Hermesflow refused the connection's token, failed, or answered "
        "something unreadable",
    },
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": ProxyError,
        "description": "the Airflow connection is missing or invalid, or Hermesflow did not "
        "answer; try again later",
    },
}


def monitor_router(conn_id: str) -> APIRouter:
    """The JSON routes (under `/api`), reading Hermesflow through Airflow connection `conn_id`."""
    router = APIRouter(prefix="/api", tags=["monitor"], responses=PROXY_RESPONSES)

    async def ask(route: Route[M], *, not_found: bool = False) -> M:
        """Send `route` through a fresh hook (a connection edited in Airflow applies at once).
        `not_found`: Hermesflow's 404 means the thing asked for does not exist, and is passed
        on; elsewhere a 404 means a Hermesflow without the route, a 502."""
        try:
            return await HermesHook(conn_id, timeout_s=MONITOR_TIMEOUT_S).arun(route)
        except HermesConnectionError as error:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from error
        except HermesApiError as error:
            if not_found and error.status == status.HTTP_404_NOT_FOUND:
                raise HTTPException(status.HTTP_404_NOT_FOUND, error.detail) from error
            raise _proxy_error(conn_id, error) from error

    add_monitor_routes(router, _ThroughConnection(ask))

    @router.get(
        "/backends", summary="Backends: phase, load and warm-ups", response_model=list[BackendView]
    )
    async def backends() -> Any:
        return (await ask(client.backends())).root

    @router.get(
        "/classes/{name}/graph",
        summary="The current PDGraph of a class",
        response_model=PDGraph,
        responses={
            status.HTTP_404_NOT_FOUND: {"model": ProxyError, "description": "unknown class"}
        },
    )
    async def class_graph(
        name: Annotated[str, Path(min_length=1, description="the application class")],
    ) -> Any:
        return await ask(client.class_graph(name), not_found=True)

    @router.get("/stats", summary="The scheduler's counters", response_model=SchedulerStats)
    async def stats() -> Any:
        return await ask(client.stats())

    return router


class _ThroughConnection:
    """The monitoring routes' `MonitorSource`: Hermesflow's own routes, asked through `ask`."""

    def __init__(self, ask: Callable[[Route[Any]], Awaitable[Any]]) -> None:
        self.ask = ask

    async def live_apps(self, app_class: str | None, limit: int) -> list[LiveAppView]:
        return (await self.ask(client.live_apps(app_class, limit))).root

    async def class_summaries(self) -> list[ClassSummary]:
        return (await self.ask(client.classes())).root

    async def act_history(self, window_s: float, buckets: int, app_class: str | None) -> ActHistory:
        return await self.ask(client.act_history(window_s, buckets, app_class))


def _proxy_error(conn_id: str, error: HermesApiError) -> HTTPException:
    """This API's answer to a request Hermesflow did not serve (module docstring)."""
    code = status.HTTP_503_SERVICE_UNAVAILABLE if error.transient else status.HTTP_502_BAD_GATEWAY
    return HTTPException(code, f"through Airflow connection {conn_id!r}: {error}")
