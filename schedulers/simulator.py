"""Discrete-event simulation of an application mix on LLM engines and tool pools.

The simulator plays the part of the Ray runtime: it owns applications and backends and calls
the very same decision objects — a `Policy` through `RequestQueue`s and a `PrewarmPlanner` —
with simulated time. Each arriving application brings a concrete `RunPlan` drawn from its
class's PDGraph (the ground truth; only the SRPT oracle may read it).

Events sit in a heap keyed by (time, kind priority, sequence), so equal-time events resolve in a
fixed order and a run is a pure function of its inputs and seed. After every event, each warm
backend with free capacity takes requests from its queue until it is full or the queue is empty
(work conservation); the planner runs on a timer and whenever a request waits for a cold backend.

Cold-start time of an application: per stage, the longest time one of its requests waited while
its backend was not warm; summed over stages. `cold_start_share` = total cold-start time / total
application completion time (ACT).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.demand import DemandEstimator, GraphState
from hermesflow.pdgraph.model import LLM_BACKEND
from hermesflow.pdgraph.sampler import RunPlan
from hermesflow.schedulers.interface import AppPhase, AppRecord, BackendPhase, Policy, RequestRecord
from hermesflow.schedulers.prewarm import PrewarmPlanner
from hermesflow.schedulers.queues import RequestQueue
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
    warm_at_start: tuple[str, ...] = (LLM_BACKEND,)
    planner_interval_s: PositiveFloat = 0.5
    arrival_rate_window_s: PositiveFloat = 60.0


class _Event(IntEnum):
    """Event kinds; the value orders simultaneous events."""

    WARM_DONE = 0
    ENGINE_DONE = 1
    POOL_DONE = 2
    ARRIVAL = 3
    PLAN = 4


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
    """Per-application outcomes and what the run cost."""

    policy: str
    planner: str
    outcomes: list[AppOutcome]
    warm_backend_s: dict[str, float]
    decisions: int
    decision_seconds: float
    max_live_apps: int
    makespan_s: float

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
            "mean_act_s": float(acts.mean()),
            "p95_act_s": float(np.percentile(acts, 95)),
            "cold_start_share": sum(o.cold_start_s for o in self.outcomes) / total_act,
            "warm_backend_s": sum(self.warm_backend_s.values()),
            "decision_us": 1e6 * self.decision_seconds / max(self.decisions, 1),
            "max_live_apps": self.max_live_apps,
            "makespan_s": self.makespan_s,
        }


@dataclass(slots=True, eq=False)
class _LiveApp:
    record: AppRecord
    plan: RunPlan
    stage_index: int = -1
    stage_cold_s: float = 0.0
    cold_s: float = 0.0


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
    ) -> None:
        """`plans`, when given, are the runs to replay (one per arrival, e.g. observed in a real
        run); otherwise each arrival's run is drawn from its class's PDGraph."""
        self.demand, self.policy, self.planner = demand, policy, planner
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
        self.backends = self._build_backends(arrivals)
        self.queues = {name: RequestQueue(policy) for name in self.backends}
        self._events: list[tuple[float, int, int, _Event, object]] = []
        self._seq = itertools.count()
        self._request_ids = itertools.count()
        self._live: dict[int, _LiveApp] = {}
        self._recent_arrivals: deque[Arrival] = deque()
        self._outcomes: list[AppOutcome] = []
        self._decisions = 0
        self._decision_seconds = 0.0
        self._max_live = 0
        self.now = 0.0

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
                else:
                    slots = max(1, int(np.ceil(rate * work.get(name, 0.0) / config.tool_utilization)))
                    backends[name] = SimPool(name, warmup, slots)
        for name in config.warm_at_start:
            if name in backends:
                backends[name].set_phase(BackendPhase.WARM, 0.0)
        return backends

    # -- the event loop -------------------------------------------------------------------------

    def _push(self, at: float, kind: _Event, payload: object = None) -> None:
        heapq.heappush(self._events, (at, kind.value, next(self._seq), kind, payload))

    def run(self) -> SimulationResult:
        for index, (arrival, _) in enumerate(self._arrivals):
            self._push(arrival.time_s, _Event.ARRIVAL, index)
        self._push(0.0, _Event.PLAN)
        handlers = {
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
            self._dispatch()
        for backend in self.backends.values():
            backend.close(self.now)
        return SimulationResult(
            policy=self.policy.name,
            planner=self.planner.name,
            outcomes=sorted(self._outcomes, key=lambda o: o.app_id),
            warm_backend_s={n: b.warm_seconds for n, b in self.backends.items()},
            decisions=self._decisions,
            decision_seconds=self._decision_seconds,
            max_live_apps=self._max_live,
            makespan_s=self.now,
        )

    # -- applications ---------------------------------------------------------------------------

    def _on_arrival(self, index: object) -> None:
        arrival, plan = self._arrivals[index]
        record = AppRecord(
            app_id=index,
            app_class=arrival.app_class,
            arrival_s=self.now,
            state=self.demand.initial_state(arrival.app_class),
            true_remaining_s=plan.work_s,
        )
        self._live[index] = _LiveApp(record, plan)
        self._max_live = max(self._max_live, len(self._live))
        self._recent_arrivals.append(arrival)
        self.policy.on_admit(record, self.now)
        self._start_next_stage(self._live[index])

    def _start_next_stage(self, live: _LiveApp) -> None:
        app = live.record
        live.cold_s += live.stage_cold_s
        live.stage_index += 1
        if live.stage_index == len(live.plan.stages):
            self._finish(live)
            return
        planned = live.plan.stages[live.stage_index]
        compiled = self.demand.compiled(app.app_class)
        visits = list(app.state.visits)
        visits[compiled.index[planned.stage]] += 1
        app.state = GraphState(app.app_class, planned.stage, tuple(visits), len(planned.requests))
        app.phase, app.stage_running_since_s, app.version = AppPhase.RUNNING, None, app.version + 1
        live.stage_cold_s = 0.0
        backend = self.backends[planned.backend]
        for request in planned.requests:
            record = RequestRecord(
                next(self._request_ids),
                app,
                planned.backend,
                self.now,
                request.work_s,
                request.input_tokens,
                request.output_tokens,
            )
            self._timed(self.queues[planned.backend].push, record)
            backend.queued += 1
        if backend.phase is BackendPhase.COLD:
            self._plan()

    def _finish_request(self, request: RequestRecord, backend: SimBackend) -> None:
        backend.last_used_s = self.now
        live = self._live[request.app.app_id]
        app = live.record
        app.attained_s += request.work_s
        app.true_remaining_s = live.plan.work_s - app.attained_s
        app.state = GraphState(app.app_class, app.state.stage, app.state.visits, app.state.pending - 1)
        app.version += 1
        self.policy.on_service(app, request.work_s, self.now)
        if app.state.pending == 0:
            self._start_next_stage(live)
        else:
            self._timed(self.queues[request.backend].rekey, app)

    def _finish(self, live: _LiveApp) -> None:
        app = live.record
        app.phase = AppPhase.FINISHED
        del self._live[app.app_id]
        self.policy.on_finish(app, self.now)
        self._outcomes.append(
            AppOutcome(app.app_id, app.app_class, app.arrival_s, self.now, live.cold_s, live.plan.work_s)
        )
        if self.on_progress is not None:
            self.on_progress(len(self._outcomes))

    # -- backends -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for name, backend in self.backends.items():
            queue = self.queues[name]
            while backend.free_slots > 0:
                head = self._timed(queue.peek)
                if head is None or not backend.fits(head):
                    break
                request = self._timed(queue.pop)
                self._decisions += 1
                backend.queued -= 1
                self._start_request(request, backend)
            if isinstance(backend, SimEngine):
                self._schedule_engine(backend)

    def _start_request(self, request: RequestRecord, backend: SimBackend) -> None:
        live = self._live[request.app.app_id]
        if request.app.stage_running_since_s is None:
            request.app.stage_running_since_s = self.now
        waited_cold = max(0.0, backend.warm_since_s - request.ready_s)
        live.stage_cold_s = max(live.stage_cold_s, waited_cold)
        backend.last_used_s = self.now
        backend.start(request, self.now)
        if isinstance(backend, SimPool):
            self._push(self.now + request.work_s, _Event.POOL_DONE, (backend, request))

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
            self._finish_request(request, engine)

    def _on_pool_done(self, payload: object) -> None:
        pool, request = payload
        pool.finish(request)
        self._finish_request(request, pool)

    def _on_warm_done(self, payload: object) -> None:
        backend, generation = payload
        if backend.phase is BackendPhase.WARMING and generation == backend.warm_generation:
            backend.set_phase(BackendPhase.WARM, self.now)

    # -- prewarm --------------------------------------------------------------------------------

    def _on_plan(self, _: object) -> None:
        self._plan()
        if self._live or self._events:
            self._push(self.now + self.config.planner_interval_s, _Event.PLAN)

    def _arrival_rates(self) -> dict[str, float]:
        window = self.config.arrival_rate_window_s
        while self._recent_arrivals and self._recent_arrivals[0].time_s < self.now - window:
            self._recent_arrivals.popleft()
        rates: dict[str, float] = {}
        for arrival in self._recent_arrivals:  # count / window: under-estimates only at start-up
            rates[arrival.app_class] = rates.get(arrival.app_class, 0.0) + 1.0 / window
        return rates

    def _plan(self) -> None:
        decision = self.planner.plan(
            self.now,
            [live.record for live in self._live.values()],
            {name: b.status() for name, b in self.backends.items()},
            self._arrival_rates(),
        )
        for name in decision.release:
            self.backends[name].set_phase(BackendPhase.COLD, self.now)
        for name in decision.warm:
            backend = self.backends[name]
            backend.set_phase(BackendPhase.WARMING, self.now)
            self._push(self.now + backend.warmup_s, _Event.WARM_DONE, (backend, backend.warm_generation))

    def _timed(self, fn: Callable, *args: object) -> object:
        """Run a queue operation and count its time as decision time."""
        start = time.perf_counter()
        result = fn(*args)
        self._decision_seconds += time.perf_counter() - start
        return result
