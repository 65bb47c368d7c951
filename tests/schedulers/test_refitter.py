"""`Refitter` on its own: a class is refitted once per new observation window and ranked by the
refit from then on; an open class grows the stages its runs named, and its live runs are
restated in the grown graph — real store, engine and Hermes demand (`support.runtime_parts`)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")

from support.runtime_parts import Parts, build_parts

from hermesflow.pdgraph.model import END, StageKind
from hermesflow.pdgraph.refit import StageObservation
from hermesflow.schedulers.open_apps import open_class_prior
from hermesflow.schedulers.runtime_refit import Refitter
from hermesflow.schedulers.runtime_state import LiveRun, RunState
from hermesflow.store import DecisionKind, DecisionRow

MIN_SAMPLES = 5


def _refitter(parts: Parts, program_classes: set[str]) -> Refitter:
    return Refitter(
        parts.config,
        parts.store,
        parts.demand,
        program_classes,
        lambda _: StageKind.TOOL,
        parts.driver,
    )


def _live(parts: Parts, key: str, app_class: str, visits: dict[str, int]) -> LiveRun:
    state = RunState(step=0, visits=visits, open=True)
    admit = DecisionRow(0.0, DecisionKind.ADMIT, detail={"class": app_class, "key": key})
    run, _ = parts.journal.admit(key, app_class, "gittins", 0.0, None, None, state.stored(), admit)
    return parts.driver.new_live(run, None, None, state)


def _observe(parts: Parts, live: LiveRun, path: list[tuple[str, str, str]]) -> None:
    """Record one observation per (stage, backend, next stage) of `path`, in step order."""
    observations = [
        StageObservation(
            app_class=live.record.app_class,
            run_id=live.run_id,
            stage=stage,
            step=step,
            visit=1,
            next_stage=after,
            fanout=1,
            input_tokens=(100,),
            output_tokens=(20,),
            exec_s=(0.5,),
            backend=backend,
            work_s=0.5,
            started_s=float(step),
            finished_s=step + 0.5,
        )
        for step, (stage, backend, after) in enumerate(path)
    ]
    parts.journal.record_observations(live.run_id, observations)


def test_a_class_is_refitted_once_per_new_window(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path, refit_min_samples=MIN_SAMPLES)
        refitter = _refitter(parts, {"react_alfw"})
        assert not await refitter.refit("react_alfw")  # no observations yet
        for index in range(MIN_SAMPLES):
            run = _live(parts, f"run-{index}", "react_alfw", {})
            _observe(parts, run, [("thought", "llm", "thought"), ("thought", "llm", END)])
        assert await refitter.refit("react_alfw")
        assert parts.store.latest_snapshot("react_alfw", "refit") is not None
        misses = parts.demand.ranks.misses
        parts.demand.gittins(parts.demand.initial_state("react_alfw"))
        assert parts.demand.ranks.misses == misses  # the refitted graph came prepared
        assert not await refitter.refit("react_alfw")  # nothing new in the window
        _observe(parts, run, [("thought", "llm", END)])
        assert await refitter.refit("react_alfw")

    asyncio.run(scenario())


def test_an_open_class_grows_the_stages_it_named_and_its_live_runs_are_restated(
    ray_cluster, tmp_path
) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path, refit_min_samples=MIN_SAMPLES)
        prior = open_class_prior("chat", "ask", "tools", StageKind.TOOL)
        parts.store.save_pdgraph(prior, source="open-prior")
        parts.driver.use_graph(parts.demand.prepare(prior))
        waiting = _live(parts, "waiting", "chat", {"ask": 1})
        before = len(waiting.record.state.visits)
        for index in range(MIN_SAMPLES):
            run = _live(parts, f"done-{index}", "chat", {})
            _observe(parts, run, [("ask", "tools", "answer"), ("answer", "tools", END)])
        await _refitter(parts, set()).refit_all()
        grown = parts.demand.compiled("chat")
        assert {"ask", "answer"} <= set(grown.graph.stages)
        assert parts.store.latest_snapshot("chat", "refit")[1] == grown.graph
        state = waiting.record.state  # restated from the run's visits, in the grown graph
        assert len(state.visits) == grown.end > before
        assert state.visits[grown.index["ask"]] == 1

    asyncio.run(scenario())
