"""Tests for hermesflow.schedulers.engine: the decisions themselves, with a hand-moved clock.

Each test drives one `SchedulingEngine` as a driver would (admit, begin_stage, schedule,
complete, lose, finish, backend events) and checks what it decides. The two real drivers are
checked against each other in `test_engine_drivers.py`.
"""

from __future__ import annotations

import itertools

import pytest

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.engine import (
    BackendState,
    DecisionKind,
    EngineConfig,
    LossOutcome,
    SchedulingEngine,
)
from hermesflow.schedulers.interface import AppPhase, BackendPhase, RequestRecord
from hermesflow.schedulers.policies import make_policy
from hermesflow.schedulers.prewarm import make_planner

APP_CLASS = "factool_code"


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _engine(
    demand: DemandEstimator,
    clock: Clock,
    *backends: BackendState,
    policy: str = "app-fifo",
    planner: str = "on-demand",
    planner_options: dict[str, object] | None = None,
    **config: object,
) -> SchedulingEngine:
    return SchedulingEngine(
        make_policy(policy, demand),
        make_planner(planner, demand, **(planner_options or {})),
        backends,
        clock,
        EngineConfig(**config),
        keep_log=True,
    )


def _warm(name: str, capacity: int = 1, **fields: object) -> BackendState:
    return BackendState(name, 1.0, capacity, phase=BackendPhase.WARM, warm_since_s=0.0, **fields)


_ids = itertools.count(1000)


def _start(engine: SchedulingEngine, demand: DemandEstimator, app_id: int, backend: str, *tokens: tuple[int, int]) -> list[RequestRecord]:
    """Admit an application (unless live) and begin a stage of one request per token pair."""
    if app_id not in engine.apps:
        engine.admit(app_id, demand.initial_state(APP_CLASS))
    record = engine.apps[app_id].record
    requests = [
        RequestRecord(next(_ids), record, backend, engine.clock(), 1.0, inp, out) for inp, out in tokens or [(0, 0)]
    ]
    engine.begin_stage(app_id, None, record.state.visits, requests)
    return requests


def test_dispatch_fills_free_capacity_in_policy_order(demand, clock) -> None:
    engine = _engine(demand, clock, _warm("tools", capacity=2))
    for app_id in (3, 1, 2):
        clock.now += 1.0
        _start(engine, demand, app_id, "tools")
    output = engine.schedule()
    assert [d.request.app.app_id for d in output.dispatch] == [3, 1]  # app-fifo: arrival order
    assert engine.backends["tools"].in_flight == 2 and engine.decisions == 2
    assert not engine.schedule().dispatch  # full
    engine.complete(output.dispatch[0].request.request_id, 1.0)
    assert [d.request.app.app_id for d in engine.schedule().dispatch] == [2]


def test_a_head_that_does_not_fit_the_kv_budget_waits_and_is_not_skipped(demand, clock) -> None:
    engine = _engine(demand, clock, _warm("llm", capacity=8, kv_tokens=1000))
    _start(engine, demand, 1, "llm", (600, 100))
    clock.now = 1.0
    _start(engine, demand, 2, "llm", (400, 100))  # does not fit beside the first
    clock.now = 2.0
    _start(engine, demand, 3, "llm", (10, 10))  # would fit, but waits behind the head
    first = engine.schedule().dispatch
    assert [d.request.app.app_id for d in first] == [1]
    assert engine.backends["llm"].kv_in_use == 700
    engine.complete(first[0].request.request_id, 1.0)
    assert [d.request.app.app_id for d in engine.schedule().dispatch] == [2, 3]
    assert engine.backends["llm"].kv_in_use == 520


def test_a_request_larger_than_the_whole_cache_runs_alone(demand, clock) -> None:
    engine = _engine(demand, clock, _warm("llm", capacity=8, kv_tokens=100))
    _start(engine, demand, 1, "llm", (500, 10))
    assert len(engine.schedule().dispatch) == 1


def test_a_request_for_a_cold_backend_warms_it_and_counts_its_wait_as_cold_start(demand, clock) -> None:
    engine = _engine(demand, clock, BackendState("code", 3.0))
    engine.schedule()  # the planner's first timer tick: nothing to do yet
    clock.now = 0.1
    [request] = _start(engine, demand, 1, "code")
    output = engine.schedule()  # not the timer: the cold backend asks for a plan
    assert output.warm == ("code",) and not output.dispatch
    generation = engine.backends["code"].generation
    clock.now = 3.1
    assert engine.backend_warmed("code", generation, capacity=2, measured_s=3.0)
    assert [d.request for d in engine.schedule().dispatch] == [request]
    clock.now = 4.0
    completion = engine.complete(request.request_id, 0.9)
    assert completion.stage_done and completion.app.attained_s == pytest.approx(0.9)
    ended = engine.finish(1)
    assert ended.cold_s == pytest.approx(3.0) and ended.act_s == pytest.approx(3.9)
    assert ended.app.phase is AppPhase.FINISHED and not engine.apps


def test_a_stale_warm_up_is_ignored(demand, clock) -> None:
    engine = _engine(demand, clock, BackendState("code", 3.0))
    _start(engine, demand, 1, "code")
    assert engine.schedule().warm == ("code",)
    stale = engine.backends["code"].generation
    engine.finish(1)
    clock.now = 1.0
    assert engine.schedule().release == ("code",)  # idle: released while still warming
    assert not engine.backend_warmed("code", stale, capacity=1)
    assert engine.backends["code"].phase is BackendPhase.COLD


def test_a_lost_request_is_retried_then_its_run_given_up(demand, clock) -> None:
    engine = _engine(demand, clock, _warm("tools"), max_attempts=2)
    [request] = _start(engine, demand, 1, "tools")
    engine.schedule()
    generation = engine.backends["tools"].generation
    assert engine.backend_lost("tools", generation)
    assert not engine.backend_lost("tools", generation)  # the second report of one death
    loss = engine.lose(request.request_id)
    assert loss.outcome is LossOutcome.REQUEUED and loss.attempts == 1
    assert len(engine.queues["tools"]) == 1 and engine.backends["tools"].in_flight == 0
    output = engine.schedule()
    assert output.warm == ("tools",)
    engine.backend_warmed("tools", engine.backends["tools"].generation, capacity=1)
    assert [d.request for d in engine.schedule().dispatch] == [request]
    loss = engine.lose(request.request_id)
    assert loss.outcome is LossOutcome.GAVE_UP and loss.attempts == 2 and loss.app.app_id == 1
    assert engine.lose(request.request_id) is None  # no longer running


def test_repeated_failed_warm_ups_hand_back_the_runs_waiting_for_the_backend(demand, clock) -> None:
    engine = _engine(demand, clock, BackendState("code", 3.0), _warm("tools"), max_warm_failures=2)
    _start(engine, demand, 1, "code")
    _start(engine, demand, 2, "code")
    _start(engine, demand, 3, "tools")
    for attempt in (1, 2):
        assert engine.schedule().warm == ("code",)
        stranded = engine.warm_failed("code", engine.backends["code"].generation)
        assert stranded == () if attempt == 1 else {a.app_id for a in stranded} == {1, 2}
    assert len(engine.queues["code"]) == 0
    assert engine.backends["tools"].in_flight == 1  # another backend's work is untouched


def test_finish_takes_the_waiting_requests_out_of_the_queues(demand, clock) -> None:
    engine = _engine(demand, clock, _warm("tools"))
    _start(engine, demand, 1, "tools", (0, 0), (0, 0), (0, 0))
    [first] = engine.schedule().dispatch
    engine.finish(1)
    assert len(engine.queues["tools"]) == 0
    assert engine.complete(first.request.request_id, 1.0) is None  # its run has ended
    assert engine.backends["tools"].in_flight == 0


def test_the_planner_runs_on_its_timer(demand, clock) -> None:
    """LRU keeps an idle backend 0.3 s after its last use: planned at 0.4 s it would release it,
    but the timer is due only at 0.5 s."""
    engine = _engine(
        demand, clock, _warm("tools", last_used_s=0.0), planner="lru", planner_options={"ttl_s": 0.3},
        planner_interval_s=0.5,
    )
    assert engine.schedule().release == ()
    assert engine.next_plan_s == pytest.approx(0.5)
    clock.now = 0.4
    assert engine.schedule().release == ()  # not due
    clock.now = 0.5
    assert engine.schedule().release == ("tools",)
    assert engine.next_plan_s == pytest.approx(1.0)
    assert [e.kind for e in engine.log] == [DecisionKind.RELEASE]


def test_a_stage_that_makes_a_cold_backend_likely_is_planned_for_at_once(demand, clock) -> None:
    """Entering generate_solutions makes the cold code sandbox likely within its warm-up: the
    engine warms it at the stage's start, not at its next timer tick."""
    code = "code:factool_code"
    engine = _engine(
        demand, clock, _warm("llm", capacity=4), BackendState(code, 3.0, 1), policy="gittins", planner="pdgraph",
        arrival_rate_window_s=0.1,
    )
    engine.admit(1, demand.initial_state(APP_CLASS), arrival_s=-1.0)  # out of the rate window
    assert engine.schedule().warm == ()  # the timer's first plan: the first stage needs no sandbox
    clock.now = 0.2
    record = engine.apps[1].record
    compiled = demand.compiled(APP_CLASS)
    visits = tuple(int(i == compiled.index["generate_solutions"]) for i in range(compiled.end))
    engine.begin_stage(1, "generate_solutions", visits, [RequestRecord(next(_ids), record, "llm", clock.now, 1.0, 300, 200)])
    assert clock.now < engine.next_plan_s
    assert engine.schedule().warm == (code,)


def test_admission_rates_cover_the_window_or_the_engine_age(demand, clock) -> None:
    engine = _engine(demand, clock, _warm("tools"), arrival_rate_window_s=10.0)
    for app_id in range(4):
        engine.admit(app_id, demand.initial_state(APP_CLASS))
    clock.now = 2.0
    assert engine.arrival_rates(clock.now) == {APP_CLASS: pytest.approx(2.0)}  # 4 in 2 s of age
    clock.now = 5.0
    assert engine.arrival_rates(clock.now) == {APP_CLASS: pytest.approx(0.8)}
    clock.now = 10.5
    assert engine.arrival_rates(clock.now) == {}  # out of the window


def test_restate_rekeys_the_waiting_requests(demand, clock) -> None:
    engine = _engine(demand, clock, _warm("tools"), policy="gittins")
    _start(engine, demand, 1, "tools", (0, 0), (0, 0))
    version = engine.apps[1].record.version
    engine.restate(1, "generate_solutions", (1, 1, 0))
    record = engine.apps[1].record
    assert record.version == version + 1 and record.state.stage == "generate_solutions" and record.state.pending == 2


def test_the_timer_makes_no_pass_while_the_planner_is_quiet(demand, clock) -> None:
    """lru keeps an idle backend warm for its TTL: after a plan, the timer's ticks before it
    runs out need no pass (`timer_due` takes them), any change (a queued request here) makes
    the next tick plan again, and the first tick after the expiry plans and releases."""
    engine = _engine(
        demand, clock, _warm("tools"), _warm("other"), planner="lru",
        planner_options={"ttl_s": 5.0}, planner_interval_s=1.0,
    )
    for backend in engine.backends.values():
        backend.last_used_s = 0.0
    assert not engine.schedule().release  # the first plan: both were used at 0, kept
    due = []
    for now in (1.0, 2.0, 3.0):
        clock.now = now
        due.append(engine.timer_due(now))
    assert due == [False, False, False] and engine.next_plan_s == 4.0
    _start(engine, demand, 1, "tools")  # a change: the next tick plans
    clock.now = 4.0
    assert engine.timer_due(4.0)
    output = engine.schedule()
    assert [d.request.app.app_id for d in output.dispatch] == [1] and not output.release
    clock.now = 5.0
    assert engine.timer_due(5.0)  # the dispatch changed what the planner reads
    assert not engine.schedule().release  # "other" was last used at 0: kept up to 5
    clock.now = 6.0
    assert engine.timer_due(6.0)  # its keep-alive ran out: the quiet time is over
    assert engine.schedule().release == ("other",)
