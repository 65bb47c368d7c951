"""The scheduler actor's public surface: the methods its clients call, and what they answer.

`HermesScheduler` (`runtime.py`, a Ray actor) implements it; the HTTP API's `SchedulerProxy`
(`hermesflow.api.scheduler_proxy`) mirrors it method for method, with the same names,
parameters and answers. `tests/schedulers/test_scheduler_api.py` holds both to this declaration,
so the actor, its client and this contract cannot drift apart.

Answers are the models the HTTP API answers with (`hermesflow.views`, below the scheduler, so
it can build them; `PDGraph`; `CallResult`): the actor builds them once, Ray pickles them to the
caller's process, and the HTTP API returns them as they come. The arguments that carry a model
(a call, a task outcome, a graph) are its JSON document, which the scheduler validates itself,
as it must for any caller. A refusal raises one of `hermesflow.schedulers.errors`. Lifecycle
methods the serving driver calls (`ready`, `shutdown`) and the probes of the crash tests
(`pid`, `backend_pid`) are not part of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from hermesflow.backends.calls import CallResult
from hermesflow.client_records import AppViewPhase
from hermesflow.pdgraph.model import PDGraph
from hermesflow.views import (
    ActHistory,
    ActorStats,
    AppEvent,
    AppView,
    BackendView,
    ClassDeclaration,
    ClassSummary,
    LiveAppView,
    StepEvent,
    StepView,
)

JSON = dict[str, Any]
"""An argument that carries a JSON document: a call, a graph, inputs, labels."""


class SchedulerApi(Protocol):
    """What clients ask the scheduler (module docstring). Every method first waits until the
    scheduler has reloaded its unfinished runs after a start."""

    # -- program runs ---------------------------------------------------------------------------

    async def submit(
        self,
        app_class: str,
        inputs: JSON,
        key: str | None = None,
        labels: JSON | None = None,
    ) -> AppView:
        """Admit a run of program class `app_class` with its inputs; the same `key` again
        answers the existing run instead of starting a second (`AppView`)."""

    async def app(self, key: str) -> AppView:
        """Application `key` as it is now: live, or as the store recorded it."""

    async def wait(self, key: str, timeout_s: float | None = None) -> AppView:
        """Application `key` once it has ended, or after `timeout_s` (a long poll)."""

    async def events(self, key: str, after: int = 0) -> list[AppEvent]:
        """The scheduling decisions about application `key` with an id above `after`, oldest
        first; a client follows a run by asking again with the last id."""

    # -- open applications ----------------------------------------------------------------------

    async def submit_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: JSON,
        backend: str | None = None,
        labels: JSON | None = None,
        reopen: bool = False,
    ) -> CallResult:
        """Run one step of open application `key` (the first step opens it) and answer its
        result once it is in. With `reopen`, `key` names a client session whose
        next application starts once the last one has ended."""

    def stream_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: JSON,
        backend: str | None = None,
        labels: JSON | None = None,
        reopen: bool = False,
    ) -> AsyncIterator[StepEvent]:
        """Like `submit_step`, as a stream: a `StepDelta` per piece of text, then a `StepEnd`
        with the result."""

    async def put_step(
        self,
        key: str,
        step_id: str,
        app_class: str,
        stage: str,
        call: JSON,
        backend: str | None = None,
        labels: JSON | None = None,
    ) -> tuple[StepView, bool]:
        """Queue step `step_id` of open application `key` without waiting for it (what an
        Airflow task does, since its trigger may restart). Answers the step and
        whether it was queued now: the same id again answers the existing step, unless it
        failed, when it runs again as the next attempt."""

    async def step(self, key: str, step_id: str, wait_s: float = 0.0) -> StepView:
        """Named step `step_id` as stored; with `wait_s`, once it has ended or
        after `wait_s` seconds."""

    async def record_task(self, key: str, outcome: JSON) -> bool:
        """Store how one try of one task of application `key` ended (`TaskOutcome`); False
        when the same outcome was recorded before."""

    async def finish_app(
        self, key: str, state: AppViewPhase = AppViewPhase.FINISHED, error: str | None = None
    ) -> AppView:
        """End open application `key`: `finished` once its client has no more steps, `failed`
        at once, with `error`, failing its steps in flight."""

    # -- classes --------------------------------------------------------------------------------

    async def graph(self, app_class: str) -> PDGraph:
        """The PDGraph the scheduler ranks class `app_class` with."""

    async def declare_graph(self, name: str, graph: JSON) -> tuple[ClassDeclaration, bool]:
        """Declare the PDGraph of open class `name`. Answers the declaration in force and
        whether it is the class's first."""

    # -- backends and monitoring ----------------------------------------------------------------

    async def backends(self) -> list[BackendView]:
        """Every backend's lifecycle phase, capacity and load."""

    async def stats(self) -> ActorStats:
        """The scheduler's counters: those the HTTP API publishes (`SchedulerStats`) and those
        only benchmarks read."""

    async def live_apps(self, app_class: str | None = None, limit: int = 200) -> list[LiveAppView]:
        """The live applications in the order the policy serves them."""

    async def class_summaries(self) -> list[ClassSummary]:
        """Every class the scheduler ranks and where its graph came from."""

    async def act_history(
        self, window_s: float = 86400.0, buckets: int = 24, app_class: str | None = None
    ) -> ActHistory:
        """Completion times of the runs that finished in the last `window_s` seconds, per
        policy, in `buckets` time buckets."""
