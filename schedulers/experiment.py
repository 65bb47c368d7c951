"""One simulated experiment from plain parameters: what the CLI, the demo and the benchmark run.

Arrivals and run plans depend only on (workload, load, number of applications, seed), never on
the policy, so every policy of a comparison faces the same applications at the same times.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import PDGraph
from hermesflow.schedulers.policies import make_policy
from hermesflow.schedulers.prewarm import make_planner
from hermesflow.schedulers.simulator import SimulationConfig, SimulationResult, Simulator
from hermesflow.schedulers.workload import (
    arrival_rate_for_load,
    bursty_arrivals,
    normalise_mix,
    poisson_arrivals,
)

MAX_REAL_APPS = 500
"""Most applications a real experiment (`hermesflow demo`, `bench/runtime.py`) serves per
scheduler. Real runs take wall time — 2-4 s per application and scheduler at load 1.2 on 2 cores,
more on a busier machine — so the cap bounds one demo to under an hour on a quiet machine; the
simulator has no such limit."""


class ArrivalProcess(StrEnum):
    POISSON = "poisson"
    BURSTY = "bursty"


def simulate(
    graphs: Mapping[str, PDGraph],
    *,
    policy: str,
    planner: str = "pdgraph",
    load: float,
    apps: int,
    seed: int,
    arrivals: ArrivalProcess = ArrivalProcess.POISSON,
    mix: Mapping[str, float] | None = None,
    max_warm: int | None = None,
    config: SimulationConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Simulate `apps` applications of the mix at `load` with one policy and one planner."""
    if apps < 1:
        raise ValueError(f"apps is {apps}; simulate at least one application")
    config = config or SimulationConfig()
    demand = DemandEstimator(graphs, config.costs, seed=seed)
    weights = normalise_mix(list(graphs), mix)
    rate = arrival_rate_for_load(load, demand, weights)
    make_arrivals = bursty_arrivals if arrivals is ArrivalProcess.BURSTY else poisson_arrivals
    schedule = make_arrivals(rate, apps, weights, seed)
    return Simulator(
        demand,
        make_policy(policy, demand),
        make_planner(planner, demand, max_warm=max_warm, pinned=config.warm_at_start),
        schedule,
        seed,
        config,
        on_progress,
    ).run()
