"""The control API of the gateway (`/v1/apps`, `/v1/backends`, `/v1/stats`, `/v1/classes`).

Submit program runs and single steps of open applications — held until the result is in, or
named and asynchronous (`PUT`/`GET /v1/apps/{app_id}/steps/{step_id}`, what Airflow uses) — read
a run's state (optionally long-polling until it ends) and its event stream, record the outcomes
of an application's tasks, declare an open class's PDGraph, and inspect backends, counters and
the learned PDGraphs. Every route is one awaited call of the scheduler actor through `SchedulerProxy`; the
event stream polls the scheduler's journal, so it needs no push channel out of the actor.

A step whose call does not fit its backend is refused with 422: by the scheduler at submission,
or, where only the backend can tell (a prompt longer than the model takes), by the backend,
whose refusal comes back as the call's result. A backend that fails a call is a 502; a tool
that fails is a result (200) with its `error`, which the client reads as an observation. Labels
are held to `ApiLimits`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Response, status
from fastapi.sse import EventSourceResponse

from hermesflow.api.errors import ApiError, check_result
from hermesflow.api.limits import check_labels
from hermesflow.api.models.control import (
    AppEvent,
    AppSubmission,
    AppView,
    BackendView,
    ClassDeclaration,
    FinishRequest,
    SchedulerStats,
    StepEvent,
    StepSubmission,
    StepView,
)
from hermesflow.api.scheduler_proxy import SchedulerProxy
from hermesflow.api.sse import SSE_HEADERS, SSE_KEEPALIVE, sse
from hermesflow.backends.calls import CallResult
from hermesflow.client_records import (
    MAX_APP_ID_CHARS,
    MAX_CLASS_CHARS,
    MAX_STEP_ID_CHARS,
    TaskOutcome,
)
from hermesflow.config import ApiLimits
from hermesflow.pdgraph.model import PDGraph
from hermesflow.store_schema import TERMINAL_DECISIONS

EVENT_POLL_S = 0.2
"""How often a followed event stream asks the scheduler for new events."""
KEEPALIVE_S = 15.0
"""Idle seconds after which an event stream sends a keep-alive comment."""
MAX_WAIT_S = 600.0
"""Longest long poll a client may ask for; it polls again after that."""
MAX_STEP_WAIT_S = 60.0
"""Longest long poll on one step: short enough for an Airflow trigger to poll again safely."""

AppId = Annotated[
    str, Path(min_length=1, max_length=MAX_APP_ID_CHARS, description="the application id")
]
StepId = Annotated[
    str,
    Path(min_length=1, max_length=MAX_STEP_ID_CHARS, description="the client's id of the step"),
]
ClassName = Annotated[
    str, Path(min_length=1, max_length=MAX_CLASS_CHARS, description="the application class")
]
REFUSED_STATUS = status.HTTP_422_UNPROCESSABLE_CONTENT
"""A call its backend refused is an invalid call, like one the scheduler refuses."""

_SSE_RESPONSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}


def _stream_response(chunks: AsyncIterator[bytes]) -> EventSourceResponse:
    return EventSourceResponse(chunks, headers=SSE_HEADERS)


def _checked_step(result: CallResult) -> CallResult:
    return check_result(result, refused_status=REFUSED_STATUS)


def control_router(
    proxy: SchedulerProxy, *, limits: ApiLimits | None = None, poll_s: float = EVENT_POLL_S
) -> APIRouter:
    """The control routes, bound to one scheduler; `limits` default to the `HERMES_API_*`
    settings."""
    limits = limits or ApiLimits()
    router = APIRouter(prefix="/v1")

    @router.post(
        "/apps",
        tags=["applications"],
        summary="Submit a program run",
        status_code=status.HTTP_201_CREATED,
        response_model=AppView,
        responses={
            422: {"description": "unknown class, invalid inputs, or labels over the limits"}
        },
    )
    async def submit_app(body: AppSubmission) -> Any:
        """Admit a run of a program class with its inputs. Sending the same `app_id` again
        returns the existing run instead of starting a second one."""
        check_labels(body.labels, limits)
        return await proxy.submit(body.app_class, body.inputs, body.app_id, body.labels)

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
            return await proxy.app(app_id)
        return await proxy.wait(app_id, wait)

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
        first = await proxy.events(app_id, after)
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
            409: {"description": "the application has ended"},
            422: {
                "description": "invalid call (for its backend too), unknown backend, a program "
                "class, or labels over the limits"
            },
            502: {"description": "the backend failed the call"},
        },
    )
    async def submit_step(app_id: AppId, body: StepSubmission) -> Any:
        """The step's call waits in its backend's queue ranked by the application's Gittins
        index, runs, and its result is the answer. The first step opens the application;
        finish it with `POST /v1/apps/{app_id}/finish`. With `stream: true` the answer is
        Server-Sent Events: `{"delta": text}` documents, then `{"result": CallResult}`."""
        check_labels(body.labels, limits)
        step = (app_id, body.app_class, body.stage, body.call, body.backend, body.labels)
        if not body.stream:
            return _checked_step(await proxy.submit_step(*step))
        events = await proxy.stream_step(*step, check=_checked_step)
        return _stream_response(_step_events(events))

    @router.put(
        "/apps/{app_id}/steps/{step_id}",
        tags=["steps"],
        summary="Submit a named step of an open application (asynchronous, idempotent)",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=StepView,
        responses={
            200: {"model": StepView, "description": "the step existed: nothing new runs"},
            409: {"description": "the application has ended; use a new application id"},
            422: {"description": "invalid call, unknown backend, a program class, or stream=true"},
        },
    )
    async def put_step(
        app_id: AppId, step_id: StepId, body: StepSubmission, response: Response
    ) -> Any:
        """Queue the step and answer at once (202); read it with `GET` on the same URL. The
        step id makes this safe to repeat: while that step is queued, running or done, the
        same PUT answers it (200) and runs nothing; after it failed, the PUT runs it again as
        the next `attempt` (202). The step is stored, so it survives a scheduler restart."""
        if body.stream:
            raise ApiError(422, "a named step is read with GET, not streamed; send stream=false")
        check_labels(body.labels, limits)
        view, created = await proxy.put_step(
            app_id, step_id, body.app_class, body.stage, body.call, body.backend, body.labels
        )
        response.status_code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return view

    @router.get(
        "/apps/{app_id}/steps/{step_id}",
        tags=["steps"],
        summary="Read a named step (optionally wait for it to end)",
        response_model=StepView,
        responses={404: {"description": "no such application or step"}},
    )
    async def read_step(
        app_id: AppId,
        step_id: StepId,
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=MAX_STEP_WAIT_S,
                description="long poll: answer when the step is done or failed, or after this many seconds",
            ),
        ] = 0.0,
    ) -> Any:
        """The step's state, attempt, and its result once done, read from the store: also
        after a scheduler restart and after the application ended."""
        return await proxy.step(app_id, step_id, wait)

    @router.post(
        "/apps/{app_id}/tasks",
        tags=["steps"],
        summary="Record how a task of an application ended (idempotent)",
        response_model=TaskOutcome,
    )
    async def record_task(app_id: AppId, body: TaskOutcome) -> Any:
        """Airflow reports each task try's end, native Python tasks included; the application
        need not have a step yet. Reporting the same outcome again records nothing and answers
        `recorded: false`."""
        recorded = await proxy.record_task(app_id, body)
        return body.model_copy(update={"recorded": recorded})

    @router.post(
        "/apps/{app_id}/finish",
        tags=["steps"],
        summary="Finish an open application (or fail it)",
        response_model=AppView,
        responses={
            404: {"description": "no such application"},
            422: {"description": "a program run, or steps still running"},
        },
    )
    async def finish_app(
        app_id: AppId, body: Annotated[FinishRequest | None, Body()] = None
    ) -> Any:
        """The client has no more steps for this application: it ends now (instead of after the
        scheduler's idle timeout), and its last step's observation is recorded as final. With
        `{"state": "failed", "error": ...}` it ends as failed, even with steps still running
        (they fail too). An application that has already ended is answered as it is."""
        body = body or FinishRequest()
        await proxy.app(app_id)
        return await proxy.finish_app(app_id, body.state, body.error)

    @router.get(
        "/backends",
        tags=["backends"],
        summary="Backends and their phases",
        response_model=list[BackendView],
    )
    async def backends() -> Any:
        return await proxy.backends()

    @router.get(
        "/stats", tags=["backends"], summary="Scheduler counters", response_model=SchedulerStats
    )
    async def stats() -> Any:
        return await proxy.stats()

    @router.get(
        "/classes/{name}/graph",
        tags=["classes"],
        summary="The current PDGraph of an application class",
        response_model=PDGraph,
        responses={404: {"description": "unknown class"}},
    )
    async def class_graph(name: ClassName) -> Any:
        """The demand graph the scheduler ranks this class with: its declared prior, or the
        graph refitted from the class's recent runs."""
        return await proxy.graph(name)

    @router.put(
        "/classes/{name}/graph",
        tags=["classes"],
        summary="Declare the PDGraph of an open class",
        status_code=status.HTTP_201_CREATED,
        response_model=ClassDeclaration,
        responses={
            200: {"model": ClassDeclaration, "description": "the class had a declaration before"},
            422: {"description": "invalid graph, a program class, or an unknown backend"},
        },
    )
    async def declare_graph(name: ClassName, graph: PDGraph, response: Response) -> Any:
        """Declare the demand graph of an open class (e.g. an Airflow DAG's compiled graph):
        its runs are ranked by Gittins over it from now on, and the refit goes on learning it
        from their steps. The class's first declaration answers 201. Declaring the same
        structure again (stages, kinds, backends, entry and successors) changes nothing and
        keeps what was learned (`changed: false`); a changed structure replaces the graph."""
        declaration, first = await proxy.declare_graph(name, graph)
        response.status_code = status.HTTP_201_CREATED if first else status.HTTP_200_OK
        return declaration

    return router


async def _follow(
    proxy: SchedulerProxy, app_id: str, first: list[AppEvent], after: int, poll_s: float
) -> AsyncIterator[bytes]:
    events, quiet_since = first, time.monotonic()
    while True:
        for event in events:
            yield sse(event, event_id=event.id)
            after = event.id
            if event.kind in TERMINAL_DECISIONS:  # the run has no more events
                return
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            yield SSE_KEEPALIVE
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_s)
        try:
            events = await proxy.events(app_id, after)
        except ApiError as error:
            yield sse({"error": error.message})
            return


async def _step_events(events: AsyncIterator[StepEvent]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield sse(event)
    except ApiError as error:
        yield sse({"error": error.message})
