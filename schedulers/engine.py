"""The scheduling engine: the one place where Hermesflow decides, for the simulator and the Ray
runtime alike.

Decide, then apply (the shape of vLLM v1's `schedule()` / `update_from_output()`): a driver
tells the engine what happened — an application arrived, a stage's requests are ready, a request
finished or was lost, a backend finished warming or died — and calls `schedule()`, which returns
an `EngineOutput`: the requests to dispatch, the backends to warm and to release. The driver
applies it. The simulator applies it to simulated backends (`simulator.py`); the Ray actor
applies it to backend actors and the journal (`runtime.py`). Neither keeps a copy of what is
decided here.

What the engine owns:
- the live applications (`AppRecord` plus the current stage's unfinished requests and its
  cold-start accounting);
- one `RequestQueue` per backend, ordered by the `Policy`;
- each backend's state as the scheduler sees it (`BackendState`: phase, capacity, requests in
  flight, warm backend-seconds);
- the prewarm planner's timer and the admission-rate window it reads.

Work conservation: `schedule()` gives every warm backend with free capacity the heads of its
queue until it is full, its queue is empty, or the head does not fit (an LLM engine's KV cache,
`BackendState.kv_tokens`; the head waits rather than be skipped, as in vLLM). It asks the
`PrewarmPlanner` when the timer is due or when a request was queued for a cold backend.

Cold-start time of an application: per stage, the longest time one of its requests waited while
its backend was not warm, `max(0, min(warm_since, dispatch time) - ready time)`; summed over
stages when each stage ends.

Admission rate per class (for the planner's expected arrivals): admissions in the last
`arrival_rate_window_s` divided by that window — or by the engine's age when that is shorter
(at least a second), so a young engine does not under-estimate.

No Ray and no asyncio here; time comes from the injected `clock` (simulated or wall time), so a
run is a pure function of its inputs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from hermesflow.pdgraph.demand import GraphState
from hermesflow.schedulers.interface import AppPhase, AppRecord, BackendPhase, Policy, RequestRecord
from hermesflow.schedulers.prewarm import BackendStatus, PrewarmDecision, PrewarmPlanner
from hermesflow.schedulers.queues import RequestQueue
from hermesflow.schedulers.work_meter import WorkMeter
from hermesflow.store_schema import DecisionKind

WARMUP_EMA = 0.5
"""Weight of the newest measured warm-up in the moving average the planner sees."""


class EngineConfig(BaseModel):
    """The engine's timing and retry limits; the same defaults in the simulator and on Ray."""

    model_config = ConfigDict(extra="forbid")

    planner_interval_s: PositiveFloat = 1.0
    """Seconds between the planner's timed passes. They catch what only time changes (a stage
    that has run long enough to make its successor's backend likely, the admission rate); a
    stage start that makes a cold backend likely plans at once (`PrewarmPlanner.may_warm_for`),
    so the timer can be coarse: each pass costs a look at every live application."""
    arrival_rate_window_s: PositiveFloat = 60.0
    max_attempts: int = Field(default=3, ge=1, le=20)
    """How often a request is tried on backends that die under it before its run fails."""
    max_warm_failures: int = Field(default=3, ge=1)
    """Failed warm-ups of one backend in a row after which the runs waiting for it fail."""


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One line of the engine's log; `app_id` and `request_id` are -1 where none applies."""

    kind: DecisionKind
    at_s: float
    backend: str = ""
    app_id: int = -1
    request_id: int = -1


@dataclass(slots=True, eq=False)
class BackendState:
    """One backend as the scheduler sees it.

    `generation` increases every time the backend goes cold, so a warm-up that was started
    before (and finishes after) a release or a death is recognised as stale. `kv_tokens`, when
    given, is an LLM engine's KV-cache budget: a request holds its input plus output tokens
    while it runs, and one that does not fit beside the running ones waits (one larger than the
    whole cache runs alone).
    """

    name: str
    warmup_s: float
    capacity: int = 1
    phase: BackendPhase = BackendPhase.COLD
    in_flight: int = 0
    warm_since_s: float = math.inf
    phase_since_s: float = 0.0
    warm_seconds: float = 0.0
    last_used_s: float = -math.inf
    warm_failures: int = 0
    generation: int = 0
    kv_tokens: int | None = None
    kv_in_use: int = 0

    @property
    def free(self) -> int:
        return self.capacity - self.in_flight if self.phase is BackendPhase.WARM else 0

    def fits(self, request: RequestRecord) -> bool:
        if self.kv_tokens is None or self.in_flight == 0:
            return True
        return self.kv_in_use + request.input_tokens + request.output_tokens <= self.kv_tokens

    def status(self, queued: int) -> BackendStatus:
        return BackendStatus(self.name, self.phase, self.warmup_s, self.in_flight, queued, self.last_used_s)

    def move_to(self, phase: BackendPhase, now: float) -> None:
        """Change phase, counting warm backend-seconds (warming counts: it holds resources)."""
        if self.phase in (BackendPhase.WARMING, BackendPhase.WARM):
            self.warm_seconds += now - self.phase_since_s
        if phase is BackendPhase.WARM:
            self.warm_since_s = now
        elif phase is BackendPhase.COLD:
            self.warm_since_s = math.inf
            self.generation += 1
        self.phase, self.phase_since_s = phase, now


@dataclass(slots=True, eq=False)
class LiveApp:
    """A live application: its record, its current stage's unfinished requests (queued or
    running) and its cold-start time (the current stage's, and the ended stages' sum)."""

    record: AppRecord
    pending: dict[int, RequestRecord] = field(default_factory=dict)
    stage_cold_s: float = 0.0
    cold_s: float = 0.0

    def end_stage(self) -> None:
        self.cold_s += self.stage_cold_s
        self.stage_cold_s = 0.0


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run `request` on its backend now; `rank` is the policy's key it was chosen by."""

    request: RequestRecord
    rank: float


@dataclass(frozen=True, slots=True)
class EngineOutput:
    """What one `schedule()` decided: requests to dispatch (in order), backends to warm (now
    WARMING) and to release (now COLD)."""

    dispatch: tuple[Dispatch, ...] = ()
    warm: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """A request finished: `stage_done` when it was its stage's last (the driver starts the
    next stage or finishes the run)."""

    app: AppRecord
    work_s: float
    stage_done: bool


class LossOutcome(StrEnum):
    """What became of a request whose backend died under it."""

    REQUEUED = "requeued"
    GAVE_UP = "gave-up"


@dataclass(frozen=True, slots=True)
class Loss:
    """A lost request was queued again (`REQUEUED`), or its run must fail (`GAVE_UP`) after
    `attempts` tries."""

    outcome: LossOutcome
    app: AppRecord
    attempts: int


@dataclass(frozen=True, slots=True)
class Ended:
    """An application left the engine after `act_s` seconds, `cold_s` of them cold starts."""

    app: AppRecord
    act_s: float
    cold_s: float


class SchedulingEngine:
    """Live applications, queues, backend states and the planner's timer (module docstring).

    Call order per application: `admit` once; `begin_stage` for each stage; `complete` (or
    `lose`) for each dispatched request; `finish` once. Call `schedule()` after every change
    and when `next_plan_s` has come, and apply its output. Everything the engine does is timed
    by `meter`; `decisions` counts dispatches.
    """

    def __init__(
        self,
        policy: Policy,
        planner: PrewarmPlanner,
        backends: Iterable[BackendState],
        clock: Callable[[], float],
        config: EngineConfig | None = None,
        keep_log: bool = False,
    ) -> None:
        self.policy = policy
        self.planner = planner
        self.config = config or EngineConfig()
        self.clock = clock
        self.backends = {backend.name: backend for backend in backends}
        self.queues = {name: RequestQueue(policy) for name in self.backends}
        self.apps: dict[int, LiveApp] = {}
        self.meter = WorkMeter()
        self.decisions = 0
        self.max_live_apps = 0
        self.started_s = clock()
        self.next_plan_s = self.started_s
        self.log: list[LoggedDecision] | None = [] if keep_log else None
        self._running: dict[int, RequestRecord] = {}
        self._attempts: dict[int, int] = {}
        self._arrivals: deque[tuple[float, str]] = deque()
        self._plan_wanted = False
        self._planned_s: float | None = None
        """When the planner last planned, if nothing it reads has changed since (`_changed`)."""
        self._quiet_until: float | None = None
        """Until when the timer may skip plans (`_quiet`), once asked after the last plan."""

    # -- applications ---------------------------------------------------------------------------

    def admit(
        self,
        app_id: int,
        state: GraphState,
        arrival_s: float | None = None,
        attained_s: float = 0.0,
        cold_s: float = 0.0,
        true_remaining_s: float | None = None,
    ) -> AppRecord:
        """A new (or, after a restart, reloaded) application; the policy hears of it here."""
        return self.meter.timed(self._admit, app_id, state, arrival_s, attained_s, cold_s, true_remaining_s)

    def _admit(self, app_id, state, arrival_s, attained_s, cold_s, true_remaining_s) -> AppRecord:
        now = self.clock()
        arrival = now if arrival_s is None else arrival_s
        record = AppRecord(
            app_id, state.app_class, arrival, state, attained_s=attained_s, true_remaining_s=true_remaining_s
        )
        self.apps[app_id] = LiveApp(record, cold_s=cold_s)
        self.max_live_apps = max(self.max_live_apps, len(self.apps))
        self._arrivals.append((arrival, state.app_class))
        self.policy.on_admit(record, now)
        self._note(DecisionKind.ADMIT, now, app_id=app_id)
        return record

    def begin_stage(self, app_id: int, stage: str | None, visits: tuple[int, ...], requests: Sequence[RequestRecord]) -> None:
        """The application's next stage starts with `requests` (built on its record, with ids
        unique among the engine's requests); they join its unfinished ones and are queued."""
        self.meter.timed(self._begin_stage, app_id, stage, visits, requests)

    def _begin_stage(self, app_id, stage, visits, requests) -> None:
        now = self.clock()
        self._changed()
        app = self.apps[app_id]
        record = app.record
        app.pending.update((r.request_id, r) for r in requests)
        record.state = GraphState(record.app_class, stage, visits, len(app.pending))
        record.phase, record.stage_running_since_s = AppPhase.RUNNING, None
        record.version += 1
        cold = {name: b.warmup_s for name, b in self.backends.items() if b.phase is BackendPhase.COLD}
        if cold and self.planner.may_warm_for(record, cold):
            self._plan_wanted = True
        for request in requests:
            self._queue(request, now)

    def restate(self, app_id: int, stage: str | None, visits: tuple[int, ...]) -> None:
        """The application's class got a new graph (a refit): its state in that graph, and its
        waiting requests re-ranked by it."""
        self.meter.timed(self._restate, app_id, stage, visits)

    def _restate(self, app_id: int, stage: str | None, visits: tuple[int, ...]) -> None:
        self._changed()
        app = self.apps[app_id]
        record = app.record
        record.state = GraphState(record.app_class, stage, visits, len(app.pending))
        record.version += 1
        for backend in {request.backend for request in app.pending.values()}:
            self.queues[backend].rekey(record)

    def demand_changed(self) -> None:
        """A class's demand estimates changed (its graph was refitted), which the planner reads
        even with no application of it live (the expected admissions): plan at the next tick."""
        self._changed()

    def complete(self, request_id: int, work_s: float) -> Completion | None:
        """A dispatched request finished after `work_s` backend-seconds. None for a request the
        engine no longer runs (a duplicate result, or its run ended meanwhile)."""
        return self.meter.timed(self._complete, request_id, work_s)

    def _complete(self, request_id: int, work_s: float) -> Completion | None:
        now = self.clock()
        request = self._release_request(request_id, now)
        if request is None or (app := self.apps.get(request.app.app_id)) is None:
            return None
        self._attempts.pop(request_id, None)
        record = app.record
        record.attained_s += work_s
        if record.true_remaining_s is not None:
            record.true_remaining_s -= work_s
        del app.pending[request_id]
        state = record.state
        record.state = GraphState(state.app_class, state.stage, state.visits, len(app.pending))
        record.version += 1
        self.policy.on_service(record, work_s, now)
        stage_done = not app.pending
        if stage_done:
            app.end_stage()
        else:
            self.queues[request.backend].rekey(record)
        self._note(DecisionKind.COMPLETE, now, request.backend, record.app_id, request_id)
        return Completion(record, work_s, stage_done)

    def lose(self, request_id: int) -> Loss | None:
        """A dispatched request did not complete because its backend died: it is queued again,
        unless it has had `max_attempts` tries (then its run must fail). None for a request the
        engine no longer runs."""
        return self.meter.timed(self._lose, request_id)

    def _lose(self, request_id: int) -> Loss | None:
        now = self.clock()
        request = self._release_request(request_id, now)
        if request is None or request.app.app_id not in self.apps:
            return None
        attempts = self._attempts[request_id] = self._attempts.get(request_id, 0) + 1
        if attempts >= self.config.max_attempts:
            self._note(DecisionKind.GIVE_UP, now, request.backend, request.app.app_id, request_id)
            return Loss(LossOutcome.GAVE_UP, request.app, attempts)
        self._note(DecisionKind.RETRY, now, request.backend, request.app.app_id, request_id)
        self._queue(request, now)
        return Loss(LossOutcome.REQUEUED, request.app, attempts)

    def finish(self, app_id: int) -> Ended:
        """The application ended (finished or failed): its waiting requests leave the queues,
        the policy forgets it. Its running requests still report to `complete` or `lose`."""
        return self.meter.timed(self._finish, app_id)

    def _finish(self, app_id: int) -> Ended:
        now = self.clock()
        app = self.apps.pop(app_id)
        app.end_stage()
        record = app.record
        record.phase = AppPhase.FINISHED
        for request in app.pending.values():
            self.queues[request.backend].discard(request)
            self._attempts.pop(request.request_id, None)
        self.policy.on_finish(record, now)
        self._note(DecisionKind.FINISH, now, app_id=app_id)
        return Ended(record, now - record.arrival_s, app.cold_s)

    # -- backends -------------------------------------------------------------------------------

    def backend_warmed(self, name: str, generation: int, capacity: int, measured_s: float | None = None) -> bool:
        """The warm-up of `name` begun in `generation` finished; False (and nothing changes) if
        the backend was released or died since. `measured_s` updates the warm-up estimate."""
        return self.meter.timed(self._backend_warmed, name, generation, capacity, measured_s)

    def _backend_warmed(self, name, generation, capacity, measured_s) -> bool:
        now = self.clock()
        backend = self.backends[name]
        if backend.phase is not BackendPhase.WARMING or generation != backend.generation:
            return False
        if measured_s is not None:
            backend.warmup_s = WARMUP_EMA * measured_s + (1 - WARMUP_EMA) * backend.warmup_s
        backend.capacity, backend.warm_failures = capacity, 0
        backend.move_to(BackendPhase.WARM, now)
        self._note(DecisionKind.WARMED, now, name)
        return True

    def warm_failed(self, name: str, generation: int) -> tuple[AppRecord, ...]:
        """The warm-up of `name` begun in `generation` failed; the backend is cold again. After
        `max_warm_failures` failures in a row its waiting requests leave the queue and their
        applications are returned: the driver fails them rather than let them wait forever."""
        return self.meter.timed(self._warm_failed, name, generation)

    def _warm_failed(self, name: str, generation: int) -> tuple[AppRecord, ...]:
        now = self.clock()
        backend = self.backends[name]
        if backend.phase is not BackendPhase.WARMING or generation != backend.generation:
            return ()
        backend.move_to(BackendPhase.COLD, now)
        backend.warm_failures += 1
        self._note(DecisionKind.WARM_FAILED, now, name)
        if backend.warm_failures < self.config.max_warm_failures:
            self._plan_wanted = bool(self.queues[name])
            return ()
        backend.warm_failures = 0
        stranded: dict[int, AppRecord] = {}
        queue = self.queues[name]
        while (request := queue.pop()) is not None:
            stranded[request.app.app_id] = request.app
        return tuple(stranded.values())

    def backend_lost(self, name: str, generation: int) -> bool:
        """The backend's process died while warm (its running requests are reported to `lose`);
        False if it had already gone cold since `generation`."""
        return self.meter.timed(self._backend_lost, name, generation)

    def _backend_lost(self, name: str, generation: int) -> bool:
        now = self.clock()
        backend = self.backends[name]
        if backend.phase is BackendPhase.COLD or generation != backend.generation:
            return False
        backend.move_to(BackendPhase.COLD, now)
        self._plan_wanted = True
        self._note(DecisionKind.LOST, now, name)
        return True

    def warm_seconds(self) -> dict[str, float]:
        """Warm (and warming) backend-seconds of each backend up to now."""
        now = self.clock()
        for backend in self.backends.values():
            backend.move_to(backend.phase, now)
        return {name: backend.warm_seconds for name, backend in self.backends.items()}

    # -- deciding -------------------------------------------------------------------------------

    def schedule(self) -> EngineOutput:
        """Decide: plan warm-ups when due, then dispatch to every backend with free capacity."""
        return self.meter.timed(self._schedule)

    def _schedule(self) -> EngineOutput:
        now = self.clock()
        decision = PrewarmDecision()
        if now >= self.next_plan_s:
            self.next_plan_s = now + self.config.planner_interval_s
            if self._plan_wanted or not self._quiet(now):
                decision = self._plan(now)
        elif self._plan_wanted:
            decision = self._plan(now)
        return EngineOutput(tuple(self._dispatch(now)), decision.warm, decision.release)

    def timer_due(self, now: float) -> bool:
        """Whether the planner's timer needs a scheduling pass at `now`. A tick that falls in
        the planner's quiet time (`_quiet`) is taken here, so a driver on a wall-clock timer
        makes no pass for it; `schedule()` skips the same ticks itself."""
        return self.meter.timed(self._timer_due, now)

    def _timer_due(self, now: float) -> bool:
        if now < self.next_plan_s:
            return False
        if self._plan_wanted or not self._quiet(now):
            return True
        self.next_plan_s = now + self.config.planner_interval_s
        return False

    def _quiet(self, now: float) -> bool:
        """Whether a plan now would decide nothing because nothing the planner reads changed
        since its last plan, and time alone cannot change its answer before
        `PrewarmPlanner.quiet_until`. Asked at the first tick after a plan that nothing
        changed since (of the state that plan left), so a busy engine never pays for it."""
        if self._planned_s is None:
            return False
        if self._quiet_until is None:
            self._quiet_until = self.planner.quiet_until(
                self._planned_s,
                [app.record for app in self.apps.values()],
                self._statuses(),
                self._arrival_rates_at,
            )
        return now < self._quiet_until

    def _plan(self, now: float) -> PrewarmDecision:
        self._plan_wanted = False
        apps = [app.record for app in self.apps.values()]
        decision = self.planner.plan(now, apps, self._statuses(), self.arrival_rates(now))
        for name in decision.release:
            self.backends[name].move_to(BackendPhase.COLD, now)
            self._note(DecisionKind.RELEASE, now, name)
        for name in decision.warm:
            self.backends[name].move_to(BackendPhase.WARMING, now)
            self._note(DecisionKind.WARM, now, name)
        self._planned_s = now
        return decision

    def _statuses(self) -> dict[str, BackendStatus]:
        return {name: b.status(len(self.queues[name])) for name, b in self.backends.items()}

    def _dispatch(self, now: float) -> list[Dispatch]:
        dispatched = []
        for name, backend in self.backends.items():
            queue = self.queues[name]
            while backend.free > 0:
                head = queue.peek()
                if head is None or not backend.fits(head):
                    break
                request = queue.pop()
                dispatched.append(self._start(request, backend, now))
        return dispatched

    def _start(self, request: RequestRecord, backend: BackendState, now: float) -> Dispatch:
        app = self.apps[request.app.app_id]
        if app.record.stage_running_since_s is None:
            app.record.stage_running_since_s = now
        waited_cold = max(0.0, min(backend.warm_since_s, now) - request.ready_s)
        app.stage_cold_s = max(app.stage_cold_s, waited_cold)
        backend.in_flight += 1
        backend.kv_in_use += request.input_tokens + request.output_tokens
        backend.last_used_s = now
        self._running[request.request_id] = request
        self.decisions += 1
        self._note(DecisionKind.DISPATCH, now, backend.name, app.record.app_id, request.request_id)
        return Dispatch(request, request.rank)

    def arrival_rates(self, now: float) -> dict[str, float]:
        """Admissions per second per class (module docstring)."""
        window = self.config.arrival_rate_window_s
        while self._arrivals and self._arrivals[0][0] < now - window:
            self._arrivals.popleft()
        return self._arrival_rates_at(now)

    def _arrival_rates_at(self, at_s: float) -> dict[str, float]:
        """The admission rates at `at_s` (now or later) if nothing more is admitted."""
        window = self.config.arrival_rate_window_s
        span = min(window, max(at_s - self.started_s, 1.0))
        rates: dict[str, float] = {}
        for arrived_s, app_class in self._arrivals:
            if arrived_s >= at_s - window:
                rates[app_class] = rates.get(app_class, 0.0) + 1.0 / span
        return rates

    # -- reading --------------------------------------------------------------------------------

    def is_running(self, request_id: int) -> bool:
        """Whether the request is dispatched and has not reported back."""
        return request_id in self._running

    # -- internals ------------------------------------------------------------------------------

    def _queue(self, request: RequestRecord, now: float) -> None:
        self.queues[request.backend].push(request)
        if self.backends[request.backend].phase is BackendPhase.COLD:
            self._plan_wanted = True
        self._note(DecisionKind.QUEUE, now, request.backend, request.app.app_id, request.request_id)

    def _release_request(self, request_id: int, now: float) -> RequestRecord | None:
        request = self._running.pop(request_id, None)
        if request is not None:
            backend = self.backends[request.backend]
            backend.in_flight -= 1
            backend.kv_in_use -= request.input_tokens + request.output_tokens
            backend.last_used_s = now
        return request

    def _changed(self) -> None:
        """Something the planner reads changed: its quiet time (`_quiet`) is over."""
        self._planned_s = self._quiet_until = None

    def _note(self, kind: DecisionKind, at_s: float, backend: str = "", app_id: int = -1, request_id: int = -1) -> None:
        """Log a decision. Every decision changes what the planner reads (an application, a
        queue or a backend), so it also ends the planner's quiet time."""
        self._changed()
        if self.log is not None:
            self.log.append(LoggedDecision(kind, at_s, backend, app_id, request_id))
