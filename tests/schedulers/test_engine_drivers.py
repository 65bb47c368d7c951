"""One scripted trace through both drivers of the scheduling engine: the simulator and the Ray
scheduler actor must make the same decisions in the same order.

The trace: three `sleep_chain` applications of two 0.4 s steps each arrive 0.1 s apart at a
cold, one-slot tool backend (policy app-fifo, planner on-demand). The backend is warmed for the
first arrival; while the second call runs, the backend's process is killed (a failure): the
call is retried and the backend warmed again; everything finishes and the idle backend is
released. The simulator replays it in simulated time with the failure injected at the same
point; the actor runs it for real (a killed Ray actor, real sleeps) and journals its decisions.
Both sequences, with applications numbered by first appearance, must be equal.

The trace is built so that the order does not hang on timing: every application is queued
before the first warm-up can finish (a Ray worker takes longer than 0.2 s to start), and then
one slot serves one call at a time in the policy's order.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterable

import pytest

pytest.importorskip("ray")

import ray  # noqa: E402
from support.runtime_programs import SleepChain  # noqa: E402

from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.client_records import AppViewPhase  # noqa: E402
from hermesflow.pdgraph.costs import CostModel  # noqa: E402
from hermesflow.pdgraph.demand import DemandEstimator  # noqa: E402
from hermesflow.pdgraph.sampler import PlannedRequest, PlannedStage, RunPlan  # noqa: E402
from hermesflow.schedulers.engine import DecisionKind, EngineConfig, LoggedDecision  # noqa: E402
from hermesflow.schedulers.policies import make_policy  # noqa: E402
from hermesflow.schedulers.prewarm import make_planner  # noqa: E402
from hermesflow.schedulers.runtime import start_scheduler  # noqa: E402
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402
from hermesflow.schedulers.simulator import BackendFailure, SimulationConfig, Simulator  # noqa: E402
from hermesflow.schedulers.workload import Arrival  # noqa: E402
from hermesflow.store import DecisionRow, Store  # noqa: E402

APPS, STEPS, CALL_S, GAP_S, WARMUP_S = 3, 2, 0.4, 0.1, 1.0
KILLED_DISPATCH = 2
"""The backend dies halfway through the second dispatched call."""
POLICY, PLANNER, BACKEND = "app-fifo", "on-demand", "tools"
ENGINE = EngineConfig(planner_interval_s=0.25)
COMPARED = {
    DecisionKind.ADMIT,
    DecisionKind.WARM,
    DecisionKind.DISPATCH,
    DecisionKind.COMPLETE,
    DecisionKind.RETRY,
    DecisionKind.RELEASE,
    DecisionKind.FINISH,
}
"""The decisions both drivers record (the actor's journal has no row for the engine's
bookkeeping-only kinds: queue, warmed, lost)."""

Step = tuple[str, int | None, str | None]


def _numbered(rows: Iterable[tuple[str, int | None, str | None]]) -> list[Step]:
    """(kind, application by order of first appearance, backend); admission and finish name no
    backend, warm and release no application."""
    numbers: dict[int, int] = {}
    steps = []
    for kind, app_id, backend in rows:
        number = None if app_id is None else numbers.setdefault(app_id, len(numbers))
        if kind in (DecisionKind.ADMIT, DecisionKind.FINISH):
            backend = None
        steps.append((kind, number, backend))
    return steps


def _simulated() -> list[Step]:
    program = SleepChain()
    demand = DemandEstimator({program.app_class: program.prior()}, CostModel())
    nap = PlannedStage("nap", BACKEND, (PlannedRequest(CALL_S),))
    config = SimulationConfig(
        warmup_s={"tool": WARMUP_S}, warm_at_start=(), pool_slots={BACKEND: 1}, engine=ENGINE
    )
    kill_at = WARMUP_S + (KILLED_DISPATCH - 1) * CALL_S + CALL_S / 2
    sim = Simulator(
        demand,
        make_policy(POLICY, demand),
        make_planner(PLANNER, demand),
        [Arrival(i * GAP_S, program.app_class) for i in range(APPS)],
        seed=0,
        config=config,
        plans=[RunPlan(program.app_class, (nap,) * STEPS)] * APPS,
        failures=[BackendFailure(kill_at, BACKEND)],
        keep_log=True,
    )
    result = sim.run()
    assert len(result.outcomes) == APPS and not result.failed
    log: list[LoggedDecision] = sim.engine.log
    return _numbered(
        (d.kind, None if d.app_id < 0 else d.app_id, d.backend or None) for d in log if d.kind in COMPARED
    )


def _journaled(rows: list[DecisionRow]) -> list[Step]:
    kinds = {kind.value: kind for kind in COMPARED}
    return _numbered((kinds[r.kind], r.run_id, r.backend) for r in rows if r.kind in kinds)


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_simulator_and_the_ray_actor_decide_the_same_trace_alike(ray_cluster, tmp_path) -> None:
    expected = _simulated()
    assert expected.count((DecisionKind.RETRY, 0, BACKEND)) == 1  # the trace has its failure
    assert [k for k, _, _ in expected].count(DecisionKind.WARM) == 2  # and its two warm-ups

    db_url = f"sqlite:///{tmp_path / 'hermes.db'}"
    store = Store(db_url)
    config = RuntimeConfig(
        policy=POLICY,
        planner=PLANNER,
        db_url=db_url,
        backends=[BackendSpec(name=BACKEND, type="python-tools", options={"workers": 1}, expected_warmup_s=WARMUP_S)],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        engine=ENGINE,
    )
    handle = start_scheduler(config, name=f"drivers-{uuid.uuid4().hex[:8]}")
    try:
        keys = []
        for _ in range(APPS):
            inputs = {"steps": STEPS, "seconds": CALL_S}
            keys.append(ray.get(handle.submit.remote("sleep_chain", inputs)).app_id)
            time.sleep(GAP_S)

        # the first call's completion is stored at once, and the second call starts with it
        _wait(lambda: any(r.kind == "complete" for r in store.decisions()), 60, "the first call")
        time.sleep(CALL_S / 2)
        os.kill(ray.get(handle.backend_pid.remote(BACKEND)), signal.SIGKILL)
        views = [ray.get(handle.wait.remote(key, 60)) for key in keys]
        assert [v.phase for v in views] == [AppViewPhase.FINISHED] * APPS
        _wait(lambda: any(r.kind == "release" for r in store.decisions()), 30, "the release")
        assert _journaled(store.decisions()) == expected
    finally:
        ray.get(handle.shutdown.remote())
        ray.kill(handle, no_restart=True)
