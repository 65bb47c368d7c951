"""`SchedulerMonitor` on its own: live applications in the policy's order with its own keys,
backends, classes and counters, read from real parts (`support.runtime_parts`) — calls queue on a
backend that is never warmed here, so the order is the policy's alone."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")

from support.runtime_parts import Parts, build_parts

from hermesflow.client_records import AppViewPhase
from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind
from hermesflow.pdgraph.workload_file import hermes_mix
from hermesflow.schedulers.errors import SubmissionError
from hermesflow.schedulers.runtime_monitor import SchedulerMonitor
from hermesflow.schedulers.runtime_open import OpenRuns
from hermesflow.views import BackendViewPhase, ClassKind

NAP = {"kind": "tool", "tool": "sleep", "args": {"seconds": 0.01}}
COMPLETED_CALLS = 4
"""What the monitor is told the driver completed: the divisor of the overhead per step."""


def _declare(parts: Parts, runs: OpenRuns, name: str, exec_s: float) -> None:
    work = Stage(
        kind=StageKind.TOOL, backend="tools", next={END: 1.0}, exec_s=Empirical(samples=(exec_s,))
    )
    runs.declare_graph(
        name, PDGraph(name=name, entry={"work": 1.0}, stages={"work": work}).model_dump(mode="json")
    )


def _monitor(parts: Parts) -> SchedulerMonitor:
    return SchedulerMonitor(
        parts.live,
        parts.engine,
        parts.slots,
        parts.policy,
        parts.planner,
        parts.demand,
        set(hermes_mix()),
        (),
        parts.store,
        parts.journal,
        parts.metrics,
        parts.loop,
        lambda: COMPLETED_CALLS,
    )


def _queued(parts: Parts) -> OpenRuns:
    """Two open applications waiting on the cold pool: `long` admitted first, `short` second."""
    runs = parts.open_runs()
    _declare(parts, runs, "long", 50.0)
    _declare(parts, runs, "short", 0.2)
    for key in ("long", "short"):
        runs.open_step(f"{key}-app", key, "work", NAP, "tools", None, False, False)
    return runs


def test_live_apps_come_in_the_policy_order_with_its_keys(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        _queued(parts)
        monitor = _monitor(parts)
        views = monitor.live_apps()
        assert [(v.app_id, v.position) for v in views] == [("short-app", 1), ("long-app", 2)]
        assert views[0].rank < views[1].rank
        assert views[0].remaining_s.mean < views[1].remaining_s.mean
        assert all((v.queued_calls, v.running_calls, v.stage) == (1, 0, "work") for v in views)
        assert all(v.phase is AppViewPhase.RUNNING for v in views)  # a step of each started
        [only_long] = monitor.live_apps(app_class="long")
        assert only_long.position == 2
        assert [v.app_id for v in monitor.live_apps(limit=1)] == ["short-app"]
        with pytest.raises(SubmissionError, match="at least 1"):
            monitor.live_apps(limit=0)

    asyncio.run(scenario())


def test_backends_classes_and_counters(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        _queued(parts)
        monitor = _monitor(parts)
        [tools] = monitor.backends()
        assert (tools.name, tools.phase, tools.queued, tools.in_flight, tools.pinned) == (
            "tools",
            BackendViewPhase.COLD,
            2,
            0,
            False,
        )
        summaries = {s.name: s for s in await monitor.class_summaries()}
        short = summaries["short"]
        assert (short.kind, short.live_apps, short.source) == (ClassKind.OPEN, 1, "declared")
        assert summaries["react_alfw"].kind is ClassKind.PROGRAM
        stats = monitor.stats()
        assert (stats.live_apps, stats.completed_calls, stats.task_failures) == (
            2,
            COMPLETED_CALLS,
            0,
        )
        assert parts.loop.work.cpu_s > 0  # the admissions above were timed
        assert stats.overhead_ms_per_step == pytest.approx(
            1e3 * parts.loop.work.cpu_s / COMPLETED_CALLS
        )
        assert stats.journal_ms_per_step == pytest.approx(
            1e3 * parts.journal.busy_s / COMPLETED_CALLS
        )

    asyncio.run(scenario())
