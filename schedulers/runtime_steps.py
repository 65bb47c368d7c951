"""Named steps of open applications, and the task outcomes their client reports.

`submit_step` holds its caller until the step's result is in. An Airflow task cannot: its trigger
may be restarted, the task retried, the scheduler restarted in between. So it names each step
(`put_step`, `PUT /v1/apps/{app}/steps/{step_id}`) and reads it back later (`step`, `GET` with
`?wait=S`). The name is stored with the step (the `client_steps` table), which makes a
submission idempotent — the same name again answers the existing step and runs nothing, unless
that step failed: then it runs again as the next attempt — and lets a read find the step and
its result in the store after a scheduler restart or after its application ended.

A named step is admitted by `OpenRuns.admit` like any open step; a long poll awaits the
step's waiter future (`runtime_open.py`) and then reads the store, which is what answers.

`record_task` stores how each Airflow task ended, native Python tasks too (`task_outcomes`).

`NamedSteps` is a collaborator of the scheduler actor: it gets the journal, the store, the live
runs and the `OpenRuns` that admit its steps, and counts its work on the `ActorLoop`. No Ray here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from pydantic import ValidationError

from hermesflow.backends.calls import Call
from hermesflow.client_records import StepState, TaskOutcome
from hermesflow.journal import ClientStepRow, RunJournal
from hermesflow.schedulers.errors import SubmissionError, UnknownApplication, UnknownStep
from hermesflow.schedulers.runtime_loop import ActorLoop
from hermesflow.schedulers.runtime_open import OpenRuns
from hermesflow.schedulers.runtime_state import LiveRuns, view_step
from hermesflow.store import RunRow, Store, TaskOutcomeRow
from hermesflow.views import StepView


class NamedSteps:
    """Named steps and task outcomes (module docstring)."""

    def __init__(
        self,
        journal: RunJournal,
        store: Store,
        live: LiveRuns,
        open_runs: OpenRuns,
        loop: ActorLoop,
    ) -> None:
        self.journal = journal
        self.store = store
        self.live = live
        self.open_runs = open_runs
        self.loop = loop

    def put_step(
        self,
        key: str,
        step_id: str,
        app_class: str,
        stage: str,
        call: dict[str, Any],
        backend: str | None = None,
        labels: dict[str, Any] | None = None,
    ) -> tuple[StepView, bool]:
        """Submit step `step_id` of open application `key` without waiting for it. Returns the
        step's view and whether it was queued now (False: the step existed, nothing new runs)."""
        parsed, backend = self.open_runs.parse_step(stage, call, backend)
        return self.loop.timed(
            self._put_step, key, step_id, app_class, stage, parsed, backend, labels
        )

    def _put_step(
        self,
        key: str,
        step_id: str,
        app_class: str,
        stage: str,
        call: Call,
        backend: str,
        labels: dict[str, Any] | None,
    ) -> tuple[StepView, bool]:
        # one synchronous piece: a concurrent submission of the same name cannot interleave
        attempt = 1
        found = self.journal.client_step(key, step_id)
        if found is not None and found[1] is not None:
            view = view_step(key, *found)
            if view.state is not StepState.FAILED:
                return view, False
            attempt = found[1].attempt + 1
        self.open_runs.admit(key, app_class, stage, call, backend, labels, False, step_id, attempt)
        return view_step(key, *self.journal.client_step(key, step_id)), True

    async def step(self, key: str, step_id: str, wait_s: float = 0.0) -> StepView:
        """Step `step_id` of application `key` as stored; with `wait_s`, once it is done or
        failed, or after `wait_s` seconds."""
        run, found = await self._find_step(key, step_id)
        view = view_step(key, run, found)
        if wait_s <= 0 or view.ended:
            return view
        live = self.live.by_key(key)
        waiter = None if live is None else live.waiters.get(found.call.id)
        if waiter is not None:  # else the step ended while the store was read: read it again
            with contextlib.suppress(TimeoutError, RuntimeError):  # RuntimeError: the run failed
                await asyncio.wait_for(asyncio.shield(waiter), wait_s)
        return view_step(key, *await self._find_step(key, step_id))

    async def _find_step(self, key: str, step_id: str) -> tuple[RunRow, ClientStepRow]:
        self.loop.timed(self.journal.flush)  # dispatch marks are deferred; "running" is stored now
        found = await asyncio.to_thread(self.journal.client_step, key, step_id)
        if found is None:
            raise UnknownApplication(f"no application {key!r}; its first step opens it")
        if found[1] is None:
            raise UnknownStep(
                f"application {key!r} has no step {step_id!r}; submit it first "
                "(PUT /v1/apps/{app_id}/steps/{step_id})"
            )
        return found

    async def record_task(self, key: str, outcome: dict[str, Any]) -> bool:
        """Store how one try of one task of application `key` ended; False when the same
        outcome was recorded before. The report also counts as activity of the live
        application, so a native task between two steps does not get it closed as idle."""
        try:
            parsed = TaskOutcome.model_validate(outcome)
        except ValidationError as error:
            raise SubmissionError(f"invalid outcome of a task of {key!r}: {error}") from None
        now = time.time()
        if (live := self.live.by_key(key)) is not None:
            live.last_activity_s = now
        fields = parsed.model_dump(exclude={"recorded"})
        row = TaskOutcomeRow(app_key=key, recorded_s=now, **fields)
        return await asyncio.to_thread(self.store.record_task_outcome, row)
