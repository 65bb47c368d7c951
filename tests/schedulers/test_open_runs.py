"""`OpenRuns` on its own: steps admitted one by one, each observed once the next names its
successor (through the journal), declarations, refusals and the idle close — built from real
parts (`support.runtime_parts`), with a real tool pool on the shared Ray cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event

pytest.importorskip("ray")

from support.runtime_parts import Parts, build_parts

from hermesflow.client_records import AppViewPhase
from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind
from hermesflow.schedulers.errors import ApplicationFinished, SubmissionError
from hermesflow.schedulers.runtime_open import OpenRuns
from hermesflow.store import CallPhase, DecisionKind, RunPhase
from hermesflow.views import ClassDeclaration

NAP = {"kind": "tool", "tool": "sleep", "args": {"seconds": 0.01}}


def _open_runs(parts: Parts) -> OpenRuns:
    return parts.open_runs()


async def _step(parts: Parts, runs: OpenRuns, key: str, stage: str) -> dict[str, Any]:
    future, _ = runs.open_step(key, "chat", stage, NAP, "tools", None, False, False)
    await parts.dispatch_until(future.done)
    return future.result().model_dump(mode="json")


def test_each_step_is_observed_with_the_stage_the_next_one_names(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        runs = _open_runs(parts)
        try:
            first = await _step(parts, runs, "app-1", "ask")
            assert first["finish_reason"] != "error"
            assert parts.store.observations("chat", 10) == []  # its successor is not known yet
            await _step(parts, runs, "app-1", "answer")
            observed = parts.store.observations("chat", 10)
            assert [(o.stage, o.next_stage) for o in observed] == [("ask", "answer")]
            view = runs.finish_app("app-1")
        finally:
            parts.release_all()
        assert view.phase is AppViewPhase.FINISHED
        observed = parts.store.observations("chat", 10)
        assert [(o.stage, o.next_stage, o.step) for o in observed] == [
            ("ask", "answer", 0),
            ("answer", END, 1),
        ]
        run = parts.journal.run("app-1")
        kinds = [e.kind for e in parts.journal.events(run.id)]
        assert kinds[0] is DecisionKind.ADMIT and kinds[-1] is DecisionKind.FINISH
        assert "app-1" not in parts.live
        with pytest.raises(ApplicationFinished, match="new application id"):
            runs.open_step("app-1", "chat", "again", NAP, "tools", None, False, False)
        # a session reopens as its next application instead
        future, _ = runs.open_step("app-1", "chat", "again", NAP, "tools", None, True, False)
        assert parts.live.by_key("app-1#2") is not None
        future.cancel()

    asyncio.run(scenario())


def test_steps_a_scheduler_cannot_run_are_refused_before_anything_is_stored(
    ray_cluster, tmp_path
) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path, programs={"sleep_chain": "runtime_programs:SleepChain"})
        runs = _open_runs(parts)
        with pytest.raises(SubmissionError, match="configured backends: \\['tools'\\]"):
            runs.open_step("app-1", "chat", "ask", NAP, "gpu", None, False, False)
        with pytest.raises(SubmissionError, match="program class"):
            runs.open_step("app-2", "sleep_chain", "ask", NAP, "tools", None, False, False)
        with pytest.raises(SubmissionError, match="invalid call"):
            runs.open_step(
                "app-3", "chat", "ask", {"kind": "nonsense"}, "tools", None, False, False
            )
        assert [parts.journal.run(k) for k in ("app-1", "app-2", "app-3")] == [None, None, None]
        assert len(parts.live) == 0

    asyncio.run(scenario())


def test_the_same_declaration_again_keeps_the_graph_and_a_changed_one_replaces_it(
    ray_cluster, tmp_path
) -> None:
    def graph(stages: tuple[str, ...]) -> dict[str, Any]:
        built = {
            name: Stage(
                kind=StageKind.TOOL,
                backend="tools",
                next={after: 1.0},
                exec_s=Empirical(samples=(0.1,)),
            )
            for name, after in zip(stages, (*stages[1:], END), strict=True)
        }
        return PDGraph(name="dag", entry={stages[0]: 1.0}, stages=built).model_dump(mode="json")

    async def scenario() -> None:
        parts = build_parts(tmp_path)
        runs = _open_runs(parts)
        first, is_first = runs.declare_graph("dag", graph(("a", "b")))
        again, is_first_again = runs.declare_graph("dag", graph(("a", "b")))
        changed, _ = runs.declare_graph("dag", graph(("a", "b", "c")))
        assert (first.changed, is_first) == (True, True)
        assert (again, is_first_again) == (
            ClassDeclaration(name="dag", version=first.version, changed=False),
            False,
        )
        assert changed.changed and changed.version > first.version
        assert set(parts.demand.compiled("dag").graph.stages) == {"a", "b", "c"}
        with pytest.raises(SubmissionError, match="names must match"):
            runs.declare_graph("other", graph(("a",)))

    asyncio.run(scenario())


def test_an_open_run_is_closed_once_idle_but_never_under_a_running_step(
    ray_cluster, tmp_path
) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path, open_app_idle_s=0.05)
        runs = _open_runs(parts)
        future, _ = runs.open_step("idle", "chat", "ask", NAP, "tools", None, False, False)
        await asyncio.sleep(0.1)
        runs.close_idle()
        assert parts.live.by_key("idle") is not None  # its step is still queued
        try:
            await parts.dispatch_until(future.done)
        finally:
            parts.release_all()
        await asyncio.sleep(0.1)
        runs.close_idle()
        assert parts.journal.run("idle").phase is RunPhase.FINISHED
        assert [(o.stage, o.next_stage) for o in parts.store.observations("chat", 10)] == [
            ("ask", END)
        ]

    asyncio.run(scenario())


def test_results_that_land_together_are_stored_in_one_transaction(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        runs = _open_runs(parts)
        try:
            await _step(parts, runs, "warm-up", "ask")  # the tool pool is warm from here on
            futures = [
                runs.open_step(key, "chat", "ask", NAP, "tools", None, False, False)[0]
                for key in ("app-1", "app-2")
            ]
            for dispatch in parts.engine.schedule().dispatch:
                parts.driver.start_call(dispatch)
            async with asyncio.timeout(30):
                while parts.driver.results_waiting < 2:
                    await asyncio.sleep(0.01)
            assert not any(future.done() for future in futures)  # answered after the commit
            commits = []
            event.listen(parts.store.engine, "commit", commits.append)
            parts.driver.complete_landed()
            assert len(commits) == 1 and parts.driver.results_waiting == 0
            await asyncio.sleep(0)
            assert all(future.done() for future in futures)
        finally:
            parts.release_all()
        for key in ("app-1", "app-2"):
            [call] = parts.journal.calls(parts.journal.run(key).id)
            assert call.phase is CallPhase.DONE and call.result is not None

    asyncio.run(scenario())
