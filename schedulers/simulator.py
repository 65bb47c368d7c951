"""Discrete-event simulation of an application mix on LLM engines and tool pools.

The simulator is the scheduling engine's second driver (`engine.py`; the Ray actor is the
first): it tells the engine what happens in simulated time and applies what the engine decides
to simulated backends (`sim_backends.py`) — it decides nothing itself. Each arriving application
brings a concrete `RunPlan` drawn from its class's PDGraph (the ground truth; only the SRPT
oracle may read it).

Events sit in a heap keyed by (time, kind priority, sequence), so equal-time events resolve in a
fixed order and a run is a pure function of its inputs and seed. After every event the engine's
`schedule()` is applied: dispatched requests start, warm-ups start (a `WARM_DONE` event after the
backend's warm-up time), released backends go cold. A `PLAN` event wakes the engine when its
planner timer is due.

`cold_start_share` = total cold-start time (the engine's accounting) / total application
completion time (ACT).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import LLM_BACKEND
from hermesflow.pdgraph.sampler import PlannedStage, RunPlan
from hermesflow.schedulers.engine import (
    BackendState,
    EngineConfig,
    EngineOutput,
    LossOutcome,
    SchedulingEngine,
)
from hermesflow.schedulers.interface import BackendPhase, Policy, RequestRecord
from hermesflow.schedulers.prewarm import PrewarmPlanner
from hermesflow.schedulers.sim_backends import SimBackend, SimEngine, SimPool
from hermesflow.schedulers.workload import Arrival, mean_work_by_backend

DEFAULT_WARMUP_S: Mapping[str, float] = {
    "llm": 30.0,  # load a 7-8B model onto a GPU
    "dnn": 10.0,  # load a vision/speech model
    "code": 3.0,  # start a sandbox container
    "search": 2.0,  # open a search index / client
    "tool": 1.0,
    "speech": 10.0,
    "sr": 5.0,
    "data": 2.0,
}


class SimulationConfig(BaseModel):
    """Backends and timing of a simulated deployment."""

    model_config = ConfigDict(extra="forbid")

    costs: CostModel = Field(default_factory=CostModel)
    warmup_s: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WARMUP_S))
    tool_utilization: float = Field(default=0.5, gt=0, le=1)
    pool_slots: dict[str, PositiveInt] = Field(default_factory=dict)
    """Slots of named pool backends; the others are sized to `tool_utilization` of their load."""
    warm_at_start: tuple[str, ...] = (LLM_BACKEND,)
    engine: EngineConfig = Field(default_factory=EngineConfig)


class _Event(IntEnum):
    """Event kinds; the value orders simultaneous events."""

    WARM_DONE = 0
    ENGINE_DONE = 1
    POOL_DONE = 2
    BACKEND_DIES = 3
    ARRIVAL = 4
    PLAN = 5


@dataclass(frozen=True, slots=True)
class BackendFailure:
    """Failure injection: backend `backend`'s process dies at `at_s` (if it is warm then). Its
    running requests are lost and tried again, up to `EngineConfig.max_attempts` times."""

    at_s: float
    backend: str


@dataclass(slots=True)
class AppOutcome:
    app_id: int
    app_class: str
    arrival_s: float
    finish_s: float
    cold_start_s: float
    work_s: float

    @property
    def act_s(self) -> float:
        return self.finish_s - self.arrival_s


@dataclass(slots=True)
class SimulationResult:
    """Per-application outcomes and what the run cost; `failed` lists the applications given up
    after injected backend failures (they have no outcome)."""

    policy: str
    planner: str
    outcomes: list[AppOutcome]
    warm_backend_s: dict[str, float]
    decisions: int
    decision_seconds: float
    max_live_apps: int
    makespan_s: float
    failed: list[int]

    @property
    def acts(self) -> np.ndarray:
        return np.array([o.act_s for o in self.outcomes])

    def summary(self) -> dict[str, float | int | str]:
        acts = self.acts
        total_act = float(acts.sum())
        return {
            "policy": self.policy,
            "planner": self.planner,
            "apps_completed": len(self.outcomes),
            "apps_failed": len(self.failed),
            "mean_act_s": float(acts.mean()),
            "p95_act_s": float(np.percentile(acts, 95)),
            "cold_start_share": sum(o.cold_start_s for o in self.outcomes) / total_act,
            "warm_backend_s": sum(self.warm_backend_s.values()),
            "decision_us": 1e6 * self.decision_seconds / max(self.decisions, 1),
            "max_live_apps": self.max_live_apps,
            "makespan_s": self.makespan_s,
        }


def begin_planned_stage(
    engine: SchedulingEngine,
    demand: DemandEstimator,
    app_id: int,
    planned: PlannedStage,
    request_ids: Iterator[int],
) -> None:
    """Begin one stage of a run plan in the engine: the stage's visit counted, one request per
    planned request, ready now, with the plan's work and tokens."""
    record = engine.apps[app_id].record
    visits = list(record.state.visits)
    visits[demand.compiled(record.app_class).index[planned.stage]] += 1
    now = engine.clock()
    requests = [
        RequestRecord(
            next(request_ids), record, planned.backend, now, r.work_s, r.input_tokens, r.output_tokens, r.attention
        )
        for r in planned.requests
    ]
    engine.begin_stage(app_id, planned.stage, tuple(visits), requests)


class Simulator:
    """One simulated run; build it, then call `run` once."""

    def __init__(
        self,
        demand: DemandEstimator,
        policy: Policy,
        planner: PrewarmPlanner,
        arrivals: Sequence[Arrival],
        seed: int,
        config: SimulationConfig | None = None,
        on_progress: Callable[[int], None] | None = None,
        plans: Sequence[RunPlan] | None = None,
        failures: Sequence[BackendFailure] = (),
        keep_log: bool = False,
    ) -> None:
        """`plans`, when given, are the runs to replay (one per arrival, e.g. observed in a real
        run); otherwise each arrival's run is drawn from its class's PDGraph. `failures` are
        backend deaths to inject; `keep_log` keeps the engine's decision log (`engine.log`)."""
        self.demand = demand
        if not arrivals:
            raise ValueError("no arrivals to simulate; give at least one application")
        self.config = config or SimulationConfig()
        self.on_progress = on_progress
        if plans is None:
            rng = np.random.default_rng(seed)
            plans = [demand.compiled(a.app_class).sample_run(rng) for a in arrivals]
        elif [p.app_class for p in plans] != [a.app_class for a in arrivals]:
            raise ValueError("plans must give one run per arrival, of the arrival's class, in order")
        self._arrivals = list(zip(arrivals, plans, strict=True))
        self._failures = tuple(failures)
        self.now = 0.0
        self.backends = self._build_backends(arrivals)
        self.engine = SchedulingEngine(
            policy,
            planner,
            [self._state_of(backend) for backend in self.backends.values()],
            clock=lambda: self.now,
            config=self.config.engine,
            keep_log=keep_log,
        )
        self._events: list[tuple[float, int, int, _Event, object]] = []
        self._seq = itertools.count()
        self._request_ids = itertools.count()
        self._plans: dict[int, RunPlan] = {}
        self._stage_index: dict[int, int] = {}
        self._outcomes: list[AppOutcome] = []
        self._given_up: list[int] = []

    # -- set-up ---------------------------------------------------------------------------------

    def _build_backends(self, arrivals: Sequence[Arrival]) -> dict[str, SimBackend]:
        config = self.config
        classes = sorted({a.app_class for a in arrivals})
        mix = {c: sum(a.app_class == c for a in arrivals) / len(arrivals) for c in classes}
        span = max(arrivals[-1].time_s - arrivals[0].time_s, 1e-9) if len(arrivals) > 1 else 1.0
        rate = len(arrivals) / span
        work = mean_work_by_backend(self.demand, mix)
        backends: dict[str, SimBackend] = {}
        for app_class in classes:
            graph = self.demand.compiled(app_class).graph
            for stage in graph.reachable:
                name = graph.backend_of(stage)
                if name in backends:
                    continue
                kind = graph.stages[stage].kind.value
                warmup = config.warmup_s.get(kind, config.warmup_s.get("tool", 1.0))
                if name in config.costs.llm:
                    engine = config.costs.engine(name)
                    backends[name] = SimEngine(name, warmup, engine.max_batch, cost=engine)
                elif name in config.pool_slots:
                    backends[name] = SimPool(name, warmup, config.pool_slots[name])
                else:
                    slots = max(1, int(np.ceil(rate * work.get(name, 0.0) / config.tool_utilization)))
                    backends[name] = SimPool(name, warmup, slots)
        return backends

    def _state_of(self, backend: SimBackend) -> BackendState:
        """The engine's view of a simulated backend; `warm_at_start` ones begin warm."""
        warm = backend.name in self.config.warm_at_start
        return BackendState(
            backend.name,
            backend.warmup_s,
            backend.capacity,
            phase=BackendPhase.WARM if warm else BackendPhase.COLD,
            warm_since_s=0.0 if warm else float("inf"),
            kv_tokens=backend.cost.kv_tokens if isinstance(backend, SimEngine) else None,
        )

    # -- the event loop -------------------------------------------------------------------------

    def _push(self, at: float, kind: _Event, payload: object = None) -> None:
        heapq.heappush(self._events, (at, kind.value, next(self._seq), kind, payload))

    def run(self) -> SimulationResult:
        for index, (arrival, _) in enumerate(self._arrivals):
            self._push(arrival.time_s, _Event.ARRIVAL, index)
        for failure in self._failures:
            self._push(failure.at_s, _Event.BACKEND_DIES, failure.backend)
        self._push(0.0, _Event.PLAN)
        handlers = {
            _Event.BACKEND_DIES: self._on_backend_dies,
            _Event.ARRIVAL: self._on_arrival,
            _Event.ENGINE_DONE: self._on_engine_done,
            _Event.POOL_DONE: self._on_pool_done,
            _Event.WARM_DONE: self._on_warm_done,
            _Event.PLAN: self._on_plan,
        }
        while self._events:
            at, _, _, kind, payload = heapq.heappop(self._events)
            self.now = at
            handlers[kind](payload)
            self._apply(self.engine.schedule())
        engine = self.engine
        return SimulationResult(
            policy=engine.policy.name,
            planner=engine.planner.name,
            outcomes=sorted(self._outcomes, key=lambda o: o.app_id),
            warm_backend_s=engine.warm_seconds(),
            decisions=engine.decisions,
            decision_seconds=engine.meter.wall_s,
            max_live_apps=engine.max_live_apps,
            makespan_s=self.now,
            failed=sorted(self._given_up),
        )

    def _apply(self, output: EngineOutput) -> None:
        """Start what the engine dispatched and the warm-ups it decided (a released backend has
        nothing running: the planner releases idle backends only)."""
        for name in output.warm:
            backend = self.backends[name]
            self._push(self.now + backend.warmup_s, _Event.WARM_DONE, (name, self.engine.backends[name].generation))
        for dispatch in output.dispatch:
            request = dispatch.request
            backend = self.backends[request.backend]
            backend.start(request, self.now)
            if isinstance(backend, SimPool):
                generation = self.engine.backends[backend.name].generation
                self._push(self.now + request.work_s, _Event.POOL_DONE, (backend, request, generation))
        for backend in self.backends.values():
            if isinstance(backend, SimEngine):
                self._schedule_engine(backend)

    # -- applications ---------------------------------------------------------------------------

    def _on_arrival(self, index: object) -> None:
        arrival, plan = self._arrivals[index]
        self.engine.admit(index, self.demand.initial_state(arrival.app_class), true_remaining_s=plan.work_s)
        self._plans[index] = plan
        self._stage_index[index] = -1
        self._start_next_stage(index)

    def _start_next_stage(self, app_id: int) -> None:
        plan = self._plans[app_id]
        stage_index = self._stage_index[app_id] = self._stage_index[app_id] + 1
        if stage_index == len(plan.stages):
            self._finish(app_id)
            return
        begin_planned_stage(self.engine, self.demand, app_id, plan.stages[stage_index], self._request_ids)

    def _finish_request(self, request: RequestRecord) -> None:
        completion = self.engine.complete(request.request_id, request.work_s)
        if completion is not None and completion.stage_done:
            self._start_next_stage(request.app.app_id)

    def _finish(self, app_id: int) -> None:
        ended = self.engine.finish(app_id)
        plan = self._plans.pop(app_id)
        del self._stage_index[app_id]
        app = ended.app
        self._outcomes.append(AppOutcome(app_id, app.app_class, app.arrival_s, self.now, ended.cold_s, plan.work_s))
        if self.on_progress is not None:
            self.on_progress(len(self._outcomes))

    # -- backends -------------------------------------------------------------------------------

    def _schedule_engine(self, engine: SimEngine) -> None:
        """Predict the next completion once per change of the batch."""
        if engine.scheduled_version == engine.version:
            return
        engine.scheduled_version = engine.version
        at = engine.next_completion_s()
        if at is not None:
            self._push(at, _Event.ENGINE_DONE, (engine, engine.version))

    def _on_engine_done(self, payload: object) -> None:
        engine, version = payload
        if version != engine.version:
            return  # the batch changed since this completion was predicted
        for request in engine.pop_finished(self.now):
            self._finish_request(request)

    def _on_pool_done(self, payload: object) -> None:
        pool, request, generation = payload
        if generation != self.engine.backends[pool.name].generation:
            return  # the pool died under this request since it started
        pool.finish(request)
        self._finish_request(request)

    def _on_backend_dies(self, name: object) -> None:
        state = self.engine.backends[name]
        if not self.engine.backend_lost(name, state.generation):
            return  # not warm: nothing to kill
        for request in self.backends[name].die():
            loss = self.engine.lose(request.request_id)
            if loss is not None and loss.outcome is LossOutcome.GAVE_UP:
                self._give_up(loss.app.app_id)

    def _give_up(self, app_id: int) -> None:
        """The application failed: a request of it was lost `max_attempts` times."""
        self.engine.finish(app_id)
        del self._plans[app_id], self._stage_index[app_id]
        self._given_up.append(app_id)

    def _on_warm_done(self, payload: object) -> None:
        name, generation = payload
        self.engine.backend_warmed(name, generation, self.backends[name].capacity)

    def _on_plan(self, _: object) -> None:
        """Wake the engine for its planner timer (it plans in `schedule()`), and set the next
        wake-up while anything is left to simulate."""
        if self.engine.apps or self._events:
            self._push(max(self.engine.next_plan_s, self.now + self.config.engine.planner_interval_s), _Event.PLAN)
