"""The monitoring routes of the control API: `GET /v1/apps`, `/v1/classes` and `/v1/act`.

What a dashboard (the Airflow page, `hermesflow top`-like tools) polls: the live applications in
the order the policy serves them, with the policy's rank and the remaining demand their class's
PDGraph predicts from where each one is; the application classes and where their graphs came
from; and the completion-time history of finished runs per policy. Each route is one awaited
call of the scheduler actor (`schedulers/runtime_monitor.py`); the query parameters are bounded
(`monitor_params.py`), so a bad value is a 422 that names the parameter before the scheduler is asked.

The routes are declared once (`add_monitor_routes`) over a `MonitorSource`: the control API binds
them to the scheduler (`monitor_router`), the Airflow plugin to Hermesflow's HTTP API read through
its Airflow connection (`hermesflow.plugins.monitor_api`), so both serve the same paths,
parameters and models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter

from hermesflow.api.models.monitor import ActHistory, ClassSummary, LiveAppView
from hermesflow.api.monitor_params import (
    DEFAULT_ACT_BUCKETS,
    DEFAULT_ACT_WINDOW_S,
    DEFAULT_LIVE_APPS,
    ActBuckets,
    ActWindow,
    ClassFilter,
    LiveAppsLimit,
)

if TYPE_CHECKING:  # the plugin imports this module without Ray, which the proxy needs
    from hermesflow.api.scheduler_proxy import SchedulerProxy


class MonitorSource(Protocol):
    """Where the monitoring routes read their answers."""

    async def live_apps(self, app_class: str | None, limit: int) -> list[LiveAppView]: ...

    async def class_summaries(self) -> list[ClassSummary]: ...

    async def act_history(self, window_s: float, buckets: int, app_class: str | None) -> ActHistory: ...


def monitor_router(proxy: SchedulerProxy) -> APIRouter:
    """The monitoring routes, bound to one scheduler."""
    router = APIRouter(prefix="/v1", tags=["monitoring"])
    add_monitor_routes(router, proxy)
    return router


def add_monitor_routes(router: APIRouter, source: MonitorSource) -> None:
    """Declare `GET apps`, `classes` and `act` on `router`, answered by `source`."""

    @router.get(
        "/apps",
        summary="Live applications, most urgent first",
        response_model=list[LiveAppView],
    )
    async def live_apps(
        app_class: ClassFilter = None,
        limit: LiveAppsLimit = DEFAULT_LIVE_APPS,
    ) -> Any:
        """The admitted and running applications in the order the policy would serve them:
        `position` 1 is served next, `rank` is the policy's key (smaller first; the Gittins
        index for the Hermes policies), `remaining_s` the remaining backend-seconds their
        class's PDGraph predicts from their current stage (mean and 10th-90th percentiles)."""
        return await source.live_apps(app_class, limit)

    @router.get(
        "/classes",
        summary="Application classes and their PDGraphs' provenance",
        response_model=list[ClassSummary],
    )
    async def classes() -> Any:
        """Every class the scheduler ranks: a program class or an open one, the version and
        source of its current graph (`GET /v1/classes/{name}/graph` has the graph), and how
        many of its runs are live and have finished."""
        return await source.class_summaries()

    @router.get(
        "/act",
        summary="Completion times of finished runs, per policy",
        response_model=ActHistory,
    )
    async def act_history(
        window_s: ActWindow = DEFAULT_ACT_WINDOW_S,
        buckets: ActBuckets = DEFAULT_ACT_BUCKETS,
        app_class: ClassFilter = None,
    ) -> Any:
        """The application completion time (admission to finish) of the runs that finished in
        the window, from the store: per policy, the runs, mean and 95th percentile of each
        time bucket (oldest first) and of the whole window. Failed runs are not counted."""
        return await source.act_history(window_s, buckets, app_class)
