"""How the HTTP API talks to the scheduler actor: typed, awaited calls and streams, and their
errors.

Every route goes through `SchedulerProxy`, whose methods mirror the scheduler's public surface
(`hermesflow.schedulers.scheduler_api.SchedulerApi`) with the same names, parameters and
answers, and take the API's models where the actor takes JSON. The actor answers with the API's
models already (`hermesflow.views`), built and validated in the scheduler, so they are returned
as they arrive, not validated a second time. It is the one place that turns the scheduler's
errors into HTTP: a `SubmissionError` (the scheduler refusing a submission; Ray delivers it
wrapped in a `RayTaskError`, the original is its `cause`) becomes 422 — or 404 when the call
names an application or step that does not exist, or 409 when it sends a step to an
application that has ended; any other Ray error (a dead or restarting scheduler actor) becomes
503; a run that failed (`RunFailed`, whose message the scheduler writes for clients) becomes
502, and so does any other error, told as its type and an incident id: its text (a remote
traceback with paths, pids and actor ids) goes to the API's log only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray.exceptions import RayError, RayTaskError

from hermesflow.api.errors import ApiError
from hermesflow.backends.calls import Call, CallResult
from hermesflow.client_records import AppViewPhase, TaskOutcome
from hermesflow.incidents import original, report
from hermesflow.pdgraph.model import PDGraph
from hermesflow.schedulers.errors import ApplicationFinished, RunFailed, SubmissionError
from hermesflow.views import (
    ActHistory,
    ActorStats,
    AppEvent,
    AppView,
    BackendView,
    ClassDeclaration,
    ClassSummary,
    LiveAppView,
    StepEnd,
    StepEvent,
    StepView,
)

log = logging.getLogger(__name__)

JSON = dict[str, Any]


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # str(KeyError) quotes its message
    return str(error)


def to_api_error(error: Exception, *, missing_app: bool = False) -> ApiError:
    """The HTTP face of an error raised by a scheduler call. `missing_app`: the call names an
    existing application, and the scheduler's only refusal for it is that it does not exist."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RayError) and not isinstance(error, RayTaskError):
        log.warning("the scheduler is not reachable", exc_info=error)
        return ApiError(
            503,
            f"the Hermesflow scheduler is not reachable ({type(error).__name__}); check that "
            "`hermesflow serve` is running on this Ray cluster",
            type="server_error",
            code="scheduler_unavailable",
        )
    cause = original(error)
    if isinstance(cause, SubmissionError):
        if missing_app or isinstance(cause, LookupError):
            return ApiError(404, _message(cause), code="not_found")
        if isinstance(cause, ApplicationFinished):
            return ApiError(409, _message(cause), code="application_finished")
        return ApiError(422, _message(cause), code="submission_refused")
    if isinstance(cause, KeyError):
        return ApiError(404, _message(cause), code="not_found")
    if isinstance(cause, RunFailed):
        message = f"the application failed: {cause}"
    else:
        message = report(log, "the request failed in the scheduler", error)
    return ApiError(502, message, type="server_error", code="scheduler_error")


def _json(call: Call) -> JSON:
    return call.model_dump(mode="json")


class SchedulerProxy:
    """The scheduler actor's public methods (`SchedulerApi`), awaited, with errors mapped by
    `to_api_error` (module docstring). A parameter the routes
    always pass has no default here: the scheduler's own default is its business."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def _call(self, method: Any, *args: Any, missing_app: bool = False) -> Any:
        """Await one remote call of `method` (an actor method of `handle`)."""
        try:
            return await method.remote(*args)
        except RayError as error:
            raise to_api_error(error, missing_app=missing_app) from None

    # -- program runs ---------------------------------------------------------------------------

    async def submit(
        self,
        app_class: str,
        inputs: JSON,
        key: str | None = None,
        labels: JSON | None = None,
    ) -> AppView:
        return await self._call(self.handle.submit, app_class, inputs, key, labels)

    async def app(self, key: str) -> AppView:
        return await self._call(self.handle.app, key, missing_app=True)

    async def wait(self, key: str, timeout_s: float | None) -> AppView:
        return await self._call(self.handle.wait, key, timeout_s, missing_app=True)

    async def events(self, key: str, after: int) -> list[AppEvent]:
        return await self._call(self.handle.events, key, after, missing_app=True)

    # -- open applications ----------------------------------------------------------------------

    async def submit_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: Call,
        backend: str | None = None,
        labels: JSON | None = None,
        reopen: bool = False,
    ) -> CallResult:
        return await self._call(
            self.handle.submit_step, key, app_class, stage, _json(call), backend, labels, reopen
        )

    async def stream_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: Call,
        backend: str | None = None,
        labels: JSON | None = None,
        reopen: bool = False,
        *,
        check: Callable[[CallResult], object],
    ) -> AsyncIterator[StepEvent]:
        """The step's events (`StepDelta`..., then `StepEnd`). The first is awaited here,
        before the caller starts an HTTP response, so a refused step is still an HTTP error —
        also one its backend refused, whose result comes first and is given to `check` (which
        raises `ApiError` for it); a failure later in the stream raises `ApiError` from the
        iterator."""
        generator = self.handle.stream_step.options(num_returns="streaming").remote(
            key, app_class, stage, _json(call), backend, labels, reopen
        )
        first = await self._next(generator)
        if isinstance(first, StepEnd):
            check(first.result)

        async def events() -> AsyncIterator[StepEvent]:
            event = first
            while event is not None:
                yield event
                event = await self._next(generator)

        return events()

    @staticmethod
    async def _next(generator: Any) -> StepEvent | None:
        try:
            ref = await generator.__anext__()
            return await ref
        except StopAsyncIteration:
            return None
        except RayError as error:
            raise to_api_error(error) from None

    async def put_step(
        self,
        key: str,
        step_id: str,
        app_class: str,
        stage: str,
        call: Call,
        backend: str | None = None,
        labels: JSON | None = None,
    ) -> tuple[StepView, bool]:
        return await self._call(
            self.handle.put_step, key, step_id, app_class, stage, _json(call), backend, labels
        )

    async def step(self, key: str, step_id: str, wait_s: float) -> StepView:
        return await self._call(self.handle.step, key, step_id, wait_s)

    async def record_task(self, key: str, outcome: TaskOutcome) -> bool:
        """Whether the outcome was new (False: it had been recorded before)."""
        document = outcome.model_dump(mode="json", exclude={"recorded"})
        return await self._call(self.handle.record_task, key, document)

    async def finish_app(
        self, key: str, state: AppViewPhase = AppViewPhase.FINISHED, error: str | None = None
    ) -> AppView:
        return await self._call(self.handle.finish_app, key, state, error)

    # -- classes --------------------------------------------------------------------------------

    async def graph(self, app_class: str) -> PDGraph:
        return await self._call(self.handle.graph, app_class)

    async def declare_graph(self, name: str, graph: PDGraph) -> tuple[ClassDeclaration, bool]:
        return await self._call(self.handle.declare_graph, name, graph.model_dump(mode="json"))

    # -- backends and monitoring ----------------------------------------------------------------

    async def backends(self) -> list[BackendView]:
        return await self._call(self.handle.backends)

    async def stats(self) -> ActorStats:
        """The scheduler's counters; the route's response model (`SchedulerStats`) publishes
        those it declares (`ActorStats`)."""
        return await self._call(self.handle.stats)

    async def live_apps(self, app_class: str | None, limit: int) -> list[LiveAppView]:
        return await self._call(self.handle.live_apps, app_class, limit)

    async def class_summaries(self) -> list[ClassSummary]:
        return await self._call(self.handle.class_summaries)

    async def act_history(self, window_s: float, buckets: int, app_class: str | None) -> ActHistory:
        return await self._call(self.handle.act_history, window_s, buckets, app_class)
