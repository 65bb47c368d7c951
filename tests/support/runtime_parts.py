"""The real parts of a scheduler actor, built outside it, for the tests of its collaborators.

Each collaborator test builds the one collaborator it tests from these: a SQLite store in the
test's folder, the journal over it, a `DemandEstimator` over the shipped Hermes classes (stored
as their priors, as the actor stores its classes), a `SchedulingEngine` with the runtime's
policy, backend slots (real Ray actors once warmed), the live runs, the actor's loop and the
`RunDriver`. `dispatch_until` stands in for the actor's dispatcher: the same pass (storing the
results that landed, then `HermesScheduler._schedule`) until a condition holds. Build them
inside a running event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermesflow.backends.base import BackendSpec
from hermesflow.journal import RunJournal
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.workload_file import hermes_mix
from hermesflow.schedulers.engine import BackendState, SchedulingEngine
from hermesflow.schedulers.interface import Policy
from hermesflow.schedulers.metrics import SchedulerMetrics
from hermesflow.schedulers.policies import make_policy
from hermesflow.schedulers.prewarm import PrewarmPlanner, make_planner
from hermesflow.schedulers.runtime_backends import BackendSlot
from hermesflow.schedulers.runtime_config import RuntimeConfig
from hermesflow.schedulers.runtime_driver import RunDriver
from hermesflow.schedulers.runtime_loop import ActorLoop
from hermesflow.schedulers.runtime_open import OpenRuns
from hermesflow.schedulers.runtime_prewarm import PrewarmApplier
from hermesflow.schedulers.runtime_state import LiveRuns
from hermesflow.store import Store

TOOLS = BackendSpec(
    name="tools", type="python-tools", options={"workers": 2}, expected_warmup_s=2.0
)
PLANNER = "on-demand"
"""Warms a backend when calls wait for it and nothing else: the tests decide what is queued."""


@dataclass
class Parts:
    config: RuntimeConfig
    store: Store
    journal: RunJournal
    demand: DemandEstimator
    policy: Policy
    planner: PrewarmPlanner
    engine: SchedulingEngine
    slots: dict[str, BackendSlot]
    live: LiveRuns
    loop: ActorLoop
    metrics: SchedulerMetrics
    driver: RunDriver

    def prewarm(self) -> PrewarmApplier:
        return PrewarmApplier(
            self.engine, self.slots, self.journal, self.live, self.driver, self.loop
        )

    def open_runs(self) -> OpenRuns:
        return OpenRuns(
            self.config, self.journal, self.store, self.live, self.slots, self.demand,
            self.policy.name, self.driver, self.loop,
        )

    async def dispatch_until(self, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
        """Apply the engine's decisions as the actor's dispatcher does until `done()`."""
        prewarm = self.prewarm()
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not done after {timeout_s} s of dispatching")
            self.driver.complete_landed()
            output = self.engine.schedule()
            prewarm.apply(output)
            for dispatch in output.dispatch:
                self.driver.start_call(dispatch)
            await asyncio.sleep(0.02)

    def release_all(self) -> None:
        for slot in self.slots.values():
            slot.release()


def build_parts(tmp_path: Path, backends: list[BackendSpec] | None = None, **config: Any) -> Parts:
    settings = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path / 'hermes.db'}",
        backends=[TOOLS] if backends is None else backends,
        planner=PLANNER,
        **config,
    )
    store = Store(settings.db_url)
    graphs = hermes_mix()
    for graph in graphs.values():
        store.save_pdgraph(graph, source="prior")
    demand = DemandEstimator(graphs, settings.costs)
    policy = make_policy(settings.policy, demand)
    planner = make_planner(settings.planner, demand, pinned=settings.warm_at_start)
    engine = SchedulingEngine(
        policy,
        planner,
        [BackendState(spec.name, spec.expected_warmup_s) for spec in settings.backends],
        clock=time.time,
        config=settings.engine,
    )
    metrics = SchedulerMetrics()
    slots = {spec.name: BackendSlot(spec, metrics) for spec in settings.backends}
    journal, live, loop = RunJournal(store), LiveRuns(), ActorLoop()
    driver = RunDriver(
        journal, engine, demand, slots, live, loop, metrics, policy.name, settings.costs
    )
    return Parts(
        settings,
        store,
        journal,
        demand,
        policy,
        planner,
        engine,
        slots,
        live,
        loop,
        metrics,
        driver,
    )
