"""`NamedSteps` on its own: a named step runs once however often it is submitted, is read back
from the store, and task outcomes are recorded once — real parts (`support.runtime_parts`) and a
real tool pool on the shared Ray cluster."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")

from support.runtime_parts import Parts, build_parts

from hermesflow.client_records import StepState
from hermesflow.schedulers.errors import UnknownApplication, UnknownStep
from hermesflow.schedulers.runtime_steps import NamedSteps

NAP = {"kind": "tool", "tool": "sleep", "args": {"seconds": 0.01}}


def _named_steps(parts: Parts) -> NamedSteps:
    runs = parts.open_runs()
    return NamedSteps(parts.journal, parts.store, parts.live, runs, parts.loop)


def test_a_named_step_runs_once_however_often_it_is_put(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        steps = _named_steps(parts)
        first, queued = steps.put_step("dag-run", "task-a", "dag", "a", NAP, "tools")
        again, queued_again = steps.put_step("dag-run", "task-a", "dag", "a", NAP, "tools")
        assert (first.state, queued) == (StepState.QUEUED, True)
        assert (again, queued_again) == (first, False)
        live = parts.live.by_key("dag-run")
        try:
            await parts.dispatch_until(lambda: not live.waiters)
        finally:
            parts.release_all()
        done = await steps.step("dag-run", "task-a", wait_s=1.0)
        assert (done.state, done.attempt, done.error) == (StepState.DONE, 1, None)
        run = parts.journal.run("dag-run")
        assert len(parts.journal.calls(run.id)) == 1
        assert steps.put_step("dag-run", "task-a", "dag", "a", NAP, "tools") == (done, False)

    asyncio.run(scenario())


def test_reading_a_step_that_was_never_put_says_what_to_do(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        steps = _named_steps(parts)
        with pytest.raises(UnknownApplication, match="its first step opens it"):
            await steps.step("nobody", "task-a")
        steps.put_step("dag-run", "task-a", "dag", "a", NAP, "tools")
        with pytest.raises(UnknownStep, match="submit it first"):
            await steps.step("dag-run", "task-b")

    asyncio.run(scenario())


def test_a_task_outcome_is_recorded_once_and_counts_as_activity(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        steps = _named_steps(parts)
        steps.put_step("dag-run", "task-a", "dag", "a", NAP, "tools")
        live = parts.live.by_key("dag-run")
        live.last_activity_s = 0.0
        outcome = {"app_class": "dag", "task_id": "native", "try_number": 1, "state": "success"}
        assert await steps.record_task("dag-run", outcome)
        assert not await steps.record_task("dag-run", outcome)
        assert live.last_activity_s > 0.0
        [row] = parts.store.task_outcomes("dag-run")
        assert (row.task_id, row.try_number) == ("native", 1)

    asyncio.run(scenario())
