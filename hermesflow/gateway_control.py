"""The control API of the gateway (`/v1/apps`, `/v1/backends`, `/v1/stats`, `/v1/classes`).

Submit program runs and single steps of open applications, read a run's state (optionally
long-polling until it ends) and its event stream, and inspect backends, counters and the learned
PDGraphs. Every route is one awaited call of the scheduler actor through `SchedulerProxy`; the
event stream polls the scheduler's journal, so it needs no push channel out of the actor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, status
from fastapi.sse import EventSourceResponse

from hermesflow.api_models import (
    AppEvent,
    AppSubmission,
    AppView,
    BackendView,
    CallResult,
    SchedulerStats,
    StepSubmission,
)
from hermesflow.gateway_scheduler import SSE_HEADERS, SSE_KEEPALIVE, ApiError, SchedulerProxy, sse
from hermesflow.pdgraph.model import PDGraph

TERMINAL_EVENTS = frozenset({"finish", "fail"})
"""Event kinds after which a run has no more events: the event stream closes."""
EVENT_POLL_S = 0.2
"""How often a followed event stream asks the scheduler for new events."""
KEEPALIVE_S = 15.0
"""Idle seconds after which an event stream sends a keep-alive comment."""
MAX_WAIT_S = 600.0
"""Longest long poll a client may ask for; it polls again after that."""

AppId = Annotated[str, Path(min_length=1, max_length=200, description="the application id")]

_SSE_RESPONSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}


def _stream_response(chunks: AsyncIterator[bytes]) -> EventSourceResponse:
    return EventSourceResponse(chunks, headers=SSE_HEADERS)


def control_router(proxy: SchedulerProxy, *, poll_s: float = EVENT_POLL_S) -> APIRouter:
    """The control routes, bound to one scheduler."""
    router = APIRouter(prefix="/v1")

    @router.post(
        "/apps",
        tags=["applications"],
        summary="Submit a program run",
        status_code=status.HTTP_201_CREATED,
        response_model=AppView,
        responses={422: {"description": "unknown class or invalid inputs"}},
    )
    async def submit_app(body: AppSubmission) -> Any:
        """Admit a run of a program class with its inputs. Sending the same `app_id` again
        returns the existing run instead of starting a second one."""
        return await proxy.call(
            "submit", body.app_class, body.inputs, key=body.app_id, labels=body.labels
        )

    @router.get(
        "/apps/{app_id}",
        tags=["applications"],
        summary="Read a run (optionally wait for it to end)",
        response_model=AppView,
        responses={404: {"description": "no such application"}},
    )
    async def read_app(
        app_id: AppId,
        wait: Annotated[
            float | None,
            Query(
                ge=0,
                le=MAX_WAIT_S,
                description="long poll: answer when the run ends or after this many seconds",
            ),
        ] = None,
    ) -> Any:
        if wait is None:
            return await proxy.call("app", app_id, missing_app=True)
        return await proxy.call("wait", app_id, wait, missing_app=True)

    @router.get(
        "/apps/{app_id}/events",
        tags=["applications"],
        summary="A run's scheduling events (Server-Sent Events or a JSON list)",
        response_model=list[AppEvent],
        responses={200: _SSE_RESPONSE, 404: {"description": "no such application"}},
    )
    async def app_events(
        app_id: AppId,
        follow: Annotated[
            bool,
            Query(
                description="stream events as they happen until the run ends (SSE); false: a JSON list"
            ),
        ] = True,
        after: Annotated[int, Query(ge=0, description="only events with a larger id")] = 0,
        last_event_id: Annotated[
            int | None, Header(ge=0, description="SSE reconnection: resume after this id")
        ] = None,
    ) -> Any:
        """Each event is one scheduling decision about the run — admit, step, dispatch,
        complete, retry, finish or fail — with its time, backend and details. Followed, the
        stream sends one `data:` JSON document per event and closes after finish or fail."""
        after = max(after, last_event_id or 0)
        first = await proxy.call("events", app_id, after, missing_app=True)
        if not follow:
            return first
        return _stream_response(_follow(proxy, app_id, first, after, poll_s))

    @router.post(
        "/apps/{app_id}/steps",
        tags=["steps"],
        summary="Run one step of an open application",
        response_model=CallResult,
        responses={
            200: _SSE_RESPONSE,
            422: {"description": "invalid call, unknown backend, or a closed application"},
        },
    )
    async def submit_step(app_id: AppId, body: StepSubmission) -> Any:
        """The step's call waits in its backend's queue ranked by the application's Gittins
        index, runs, and its result is the answer. The first step opens the application;
        finish it with `POST /v1/apps/{app_id}/finish`. With `stream: true` the answer is
        Server-Sent Events: `{"delta": text}` documents, then `{"result": CallResult}`."""
        kwargs = {
            "key": app_id,
            "app_class": body.app_class,
            "stage": body.stage,
            "call": body.call.model_dump(mode="json"),
            "backend": body.backend,
            "labels": body.labels,
        }
        if not body.stream:
            return await proxy.call("submit_step", **kwargs)
        items = await proxy.stream_step(**kwargs)
        return _stream_response(_step_events(items))

    @router.post(
        "/apps/{app_id}/finish",
        tags=["steps"],
        summary="Finish an open application",
        response_model=AppView,
        responses={
            404: {"description": "no such application"},
            422: {"description": "a program run, or steps still running"},
        },
    )
    async def finish_app(app_id: AppId) -> Any:
        """The client has no more steps for this application: it ends now (instead of after the
        scheduler's idle timeout), and its last step's observation is recorded as final."""
        await proxy.call("app", app_id, missing_app=True)
        return await proxy.call("finish_app", app_id)

    @router.get(
        "/backends",
        tags=["backends"],
        summary="Backends and their phases",
        response_model=list[BackendView],
    )
    async def backends() -> Any:
        return await proxy.call("backends")

    @router.get(
        "/stats", tags=["backends"], summary="Scheduler counters", response_model=SchedulerStats
    )
    async def stats() -> Any:
        return await proxy.call("stats")

    @router.get(
        "/classes/{name}/graph",
        tags=["classes"],
        summary="The current PDGraph of an application class",
        response_model=PDGraph,
        responses={404: {"description": "unknown class"}},
    )
    async def class_graph(name: Annotated[str, Path(min_length=1)]) -> Any:
        """The demand graph the scheduler ranks this class with: its declared prior, or the
        graph refitted from the class's recent runs."""
        return await proxy.call("graph", name)

    return router


async def _follow(
    proxy: SchedulerProxy, app_id: str, first: list[dict[str, Any]], after: int, poll_s: float
) -> AsyncIterator[bytes]:
    events, quiet_since = first, time.monotonic()
    while True:
        for event in events:
            yield sse(event, event_id=event["id"])
            after = event["id"]
            if event["kind"] in TERMINAL_EVENTS:
                return
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            yield SSE_KEEPALIVE
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_s)
        try:
            events = await proxy.call("events", app_id, after, missing_app=True)
        except ApiError as error:
            yield sse({"error": error.message})
            return


async def _step_events(items: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for item in items:
            yield sse(item)
    except ApiError as error:
        yield sse({"error": error.message})
