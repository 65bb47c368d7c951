"""The scheduler actor's public surface: the methods its clients call, and what they answer.

`HermesScheduler` (`runtime.py`, a Ray actor) implements it; the HTTP API's `SchedulerProxy`
(`hermesflow.api.scheduler_proxy`) mirrors it method for method, with the same names and
parameters, and validates each answer into the API's model. `tests/schedulers/
test_scheduler_api.py` holds both to this declaration, so the actor, its client and this
contract cannot drift apart.

Answers are JSON documents (what crosses Ray to a client in another process), and so are the
arguments that carry a model (a call, a task outcome, a graph). A refusal raises one of
`hermesflow.schedulers.errors`. Lifecycle methods the serving driver calls (`ready`,
`shutdown`) and the probes of the crash tests (`pid`, `backend_pid`) are not part of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from hermesflow.client_records import AppViewPhase

JSON = dict[str, Any]


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
    ) -> JSON:
        """Admit a run of program class `app_class` with its inputs; the same `key` again
        answers the existing run instead of starting a second (`AppView`)."""

    async def app(self, key: str) -> JSON:
        """Application `key` as it is now: live, or as the store recorded it (`AppView`)."""

    async def wait(self, key: str, timeout_s: float | None = None) -> JSON:
        """Application `key` once it has ended, or after `timeout_s` (a long poll)."""

    async def events(self, key: str, after: int = 0) -> list[JSON]:
        """The scheduling decisions about application `key` with an id above `after`, oldest
        first (`AppEvent`); a client follows a run by asking again with the last id."""

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
    ) -> JSON:
        """Run one step of open application `key` (the first step opens it) and answer its
        result once it is in (`CallResult`). With `reopen`, `key` names a client session whose
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
    ) -> AsyncIterator[JSON]:
        """Like `submit_step`, as a stream: `{"delta": text}` items, then `{"result": ...}`."""

    async def put_step(
        self,
        key: str,
        step_id: str,
        app_class: str,
        stage: str,
        call: JSON,
        backend: str | None = None,
        labels: JSON | None = None,
    ) -> tuple[JSON, bool]:
        """Queue step `step_id` of open application `key` without waiting for it (what an
        Airflow task does, since its trigger may restart). Answers the step (`StepView`) and
        whether it was queued now: the same id again answers the existing step, unless it
        failed, when it runs again as the next attempt."""

    async def step(self, key: str, step_id: str, wait_s: float = 0.0) -> JSON:
        """Named step `step_id` as stored (`StepView`); with `wait_s`, once it has ended or
        after `wait_s` seconds."""

    async def record_task(self, key: str, outcome: JSON) -> bool:
        """Store how one try of one task of application `key` ended (`TaskOutcome`); False
        when the same outcome was recorded before."""

    async def finish_app(
        self, key: str, state: AppViewPhase = AppViewPhase.FINISHED, error: str | None = None
    ) -> JSON:
        """End open application `key`: `finished` once its client has no more steps, `failed`
        at once, with `error`, failing its steps in flight (`AppView`)."""

    # -- classes --------------------------------------------------------------------------------

    async def graph(self, app_class: str) -> JSON:
        """The PDGraph the scheduler ranks class `app_class` with."""

    async def declare_graph(self, name: str, graph: JSON) -> tuple[JSON, bool]:
        """Declare the PDGraph of open class `name`. Answers the declaration in force
        (`ClassDeclaration`) and whether it is the class's first."""

    # -- backends and monitoring ----------------------------------------------------------------

    async def backends(self) -> list[JSON]:
        """Every backend's lifecycle phase, capacity and load (`BackendView`)."""

    async def stats(self) -> JSON:
        """The scheduler's counters (`SchedulerStats`)."""

    async def live_apps(self, app_class: str | None = None, limit: int = 200) -> list[JSON]:
        """The live applications in the order the policy serves them (`LiveAppView`)."""

    async def class_summaries(self) -> list[JSON]:
        """Every class the scheduler ranks and where its graph came from (`ClassSummary`)."""

    async def act_history(
        self, window_s: float = 86400.0, buckets: int = 24, app_class: str | None = None
    ) -> JSON:
        """Completion times of the runs that finished in the last `window_s` seconds, per
        policy, in `buckets` time buckets (`ActHistory`)."""
