"""How the HTTP API talks to the scheduler actor: typed, awaited calls and streams, and their
errors.

Every route goes through `SchedulerProxy`, whose methods mirror the scheduler's public surface
(`hermesflow.schedulers.scheduler_api.SchedulerApi`) with the same names and parameters, take
the API's models where the actor takes JSON, and validate the actor's answers into them. It is
the one place that turns the scheduler's answers into HTTP: a `SubmissionError` (the scheduler
refusing a submission; Ray delivers it wrapped in a `RayTaskError`, the original is its
`cause`) becomes 422 — or 404 when the call names an application or step that does not exist,
or 409 when it sends a step to an application that has ended; any other Ray error (a dead or
restarting scheduler actor) becomes 503; a run that failed (`RunFailed`, whose message the
scheduler writes for clients) becomes 502, and so does any other error, told as its type and
an incident id: its text (a remote traceback with paths, pids and actor ids) goes to the API's
log only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray.exceptions import RayError, RayTaskError

from hermesflow.api.errors import ApiError
from hermesflow.api.models.control import (
    AppEvent,
    AppView,
    BackendView,
    ClassDeclaration,
    SchedulerStats,
    StepDelta,
    StepEnd,
    StepEvent,
    StepView,
)
from hermesflow.api.models.monitor import ActHistory, ClassSummary, LiveAppView
from hermesflow.backends.calls import Call, CallResult
from hermesflow.client_records import AppViewPhase, TaskOutcome
from hermesflow.incidents import original, report
from hermesflow.pdgraph.model import PDGraph
from hermesflow.schedulers.errors import ApplicationFinished, RunFailed, SubmissionError

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


def _step_event(item: JSON) -> StepEvent:
    return StepDelta.model_validate(item) if "delta" in item else StepEnd.model_validate(item)


class SchedulerProxy:
    """The scheduler actor's public methods (`SchedulerApi`), awaited, answered as the API's
    models, with errors mapped by `to_api_error` (module docstring). A parameter the routes
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
        answer = await self._call(self.handle.submit, app_class, inputs, key, labels)
        return AppView.model_validate(answer)

    async def app(self, key: str) -> AppView:
        return AppView.model_validate(await self._call(self.handle.app, key, missing_app=True))

    async def wait(self, key: str, timeout_s: float | None) -> AppView:
        answer = await self._call(self.handle.wait, key, timeout_s, missing_app=True)
        return AppView.model_validate(answer)

    async def events(self, key: str, after: int) -> list[AppEvent]:
        answer = await self._call(self.handle.events, key, after, missing_app=True)
        return [AppEvent.model_validate(event) for event in answer]

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
        answer = await self._call(
            self.handle.submit_step, key, app_class, stage, _json(call), backend, labels, reopen
        )
        return CallResult.model_validate(answer)

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
            return _step_event(await ref)
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
        view, created = await self._call(
            self.handle.put_step, key, step_id, app_class, stage, _json(call), backend, labels
        )
        return StepView.model_validate(view), created

    async def step(self, key: str, step_id: str, wait_s: float) -> StepView:
        return StepView.model_validate(await self._call(self.handle.step, key, step_id, wait_s))

    async def record_task(self, key: str, outcome: TaskOutcome) -> bool:
        """Whether the outcome was new (False: it had been recorded before)."""
        document = outcome.model_dump(mode="json", exclude={"recorded"})
        return await self._call(self.handle.record_task, key, document)

    async def finish_app(
        self, key: str, state: AppViewPhase = AppViewPhase.FINISHED, error: str | None = None
    ) -> AppView:
        return AppView.model_validate(await self._call(self.handle.finish_app, key, state, error))

    # -- classes --------------------------------------------------------------------------------

    async def graph(self, app_class: str) -> PDGraph:
        return PDGraph.model_validate(await self._call(self.handle.graph, app_class))

    async def declare_graph(self, name: str, graph: PDGraph) -> tuple[ClassDeclaration, bool]:
        declaration, first = await self._call(
            self.handle.declare_graph, name, graph.model_dump(mode="json")
        )
        return ClassDeclaration.model_validate(declaration), first

    # -- backends and monitoring ----------------------------------------------------------------

    async def backends(self) -> list[BackendView]:
        return [BackendView.model_validate(b) for b in await self._call(self.handle.backends)]

    async def stats(self) -> SchedulerStats:
        return SchedulerStats.model_validate(await self._call(self.handle.stats))

    async def live_apps(self, app_class: str | None, limit: int) -> list[LiveAppView]:
        answer = await self._call(self.handle.live_apps, app_class, limit)
        return [LiveAppView.model_validate(app) for app in answer]

    async def class_summaries(self) -> list[ClassSummary]:
        answer = await self._call(self.handle.class_summaries)
        return [ClassSummary.model_validate(summary) for summary in answer]

    async def act_history(self, window_s: float, buckets: int, app_class: str | None) -> ActHistory:
        answer = await self._call(self.handle.act_history, window_s, buckets, app_class)
        return ActHistory.model_validate(answer)
