"""Tests for hermesflow.schedulers.prewarm: the budgeted base rules and each planner."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.interface import AppRecord, BackendPhase
from hermesflow.schedulers.prewarm import (
    PLANNERS,
    BackendStatus,
    LRUKeepAlive,
    PDGraphPrewarm,
    PrewarmDecision,
    make_planner,
)

AppFactory = Callable[..., AppRecord]
CODE = "code:factool_code"
COLD, WARMING, WARM = BackendPhase.COLD, BackendPhase.WARMING, BackendPhase.WARM


def _status(
    name: str,
    phase: BackendPhase,
    *,
    warmup_s: float = 1.0,
    busy: int = 0,
    queued: int = 0,
    last_used_s: float = -math.inf,
) -> BackendStatus:
    return BackendStatus(name, phase, warmup_s, busy, queued, last_used_s)


def _backends(*statuses: BackendStatus) -> dict[str, BackendStatus]:
    return {s.name: s for s in statuses}


# --------------------------------------------------------------------------- base-class rules


@pytest.mark.parametrize("name", list(PLANNERS))
def test_demand_is_kept_and_cold_demand_is_warmed(demand: DemandEstimator, name: str) -> None:
    planner = make_planner(name, demand)
    backends = _backends(
        _status("busy", WARM, busy=2),
        _status("queued", WARM, queued=1),
        _status("cold-queued", COLD, queued=3),
        _status("warming-queued", WARMING, queued=1),
        _status("idle", WARM),
    )
    decision = planner.plan(0.0, [], backends, {})
    assert decision.warm == ("cold-queued",)
    assert set(decision.release) <= {"idle"}
    assert planner.name == name and planner.description


@pytest.mark.parametrize("name", list(PLANNERS))
def test_pinned_backends_stay_warm(demand: DemandEstimator, name: str) -> None:
    planner = make_planner(name, demand, pinned=("llm", "not-deployed"))
    decision = planner.plan(100.0, [], _backends(_status("llm", WARM), _status("tool", WARM)), {})
    assert "llm" not in decision.release
    assert "tool" in decision.release
    decision = planner.plan(100.0, [], _backends(_status("llm", COLD)), {})
    assert decision.warm == ("llm",)


class _AskedPlanner(PDGraphPrewarm):
    """The real planner, noting which backends each plan asks it about."""

    asked: list[set[str]]

    def wanted(self, now, apps, backends, arrival_rates) -> list[str]:
        self.asked.append(set(backends))
        return super().wanted(now, apps, backends, arrival_rates)


def test_a_plan_asks_only_about_backends_that_are_neither_busy_nor_pinned(
    demand: DemandEstimator,
) -> None:
    """Busy and pinned backends stay warm whatever the planner wants, so a timer plan does not
    spend a need estimate per live application on them; with none left it asks nothing."""
    planner = _AskedPlanner(demand, pinned=("llm",))
    planner.asked = []
    backends = _backends(
        _status("llm", WARM), _status("busy", WARM, busy=1), _status(CODE, COLD), _status("idle", WARM)
    )
    decision = planner.plan(0.0, [], backends, {})
    assert planner.asked == [{CODE, "idle"}]
    assert decision.release == ("idle",) and decision.warm == ()
    planner.plan(0.0, [], _backends(_status("llm", WARM), _status("busy", WARM, queued=2)), {})
    assert planner.asked == [{CODE, "idle"}]


@pytest.mark.parametrize("name", list(PLANNERS))
def test_demand_is_never_refused_by_the_budget(demand: DemandEstimator, name: str) -> None:
    planner = make_planner(name, demand, max_warm=1)
    backends = _backends(
        _status("a", COLD, queued=1), _status("b", COLD, queued=2), _status("c", WARM, busy=1)
    )
    decision = planner.plan(0.0, [], backends, {})
    assert decision == PrewarmDecision(warm=("a", "b"), release=())


def test_budget_limits_wanted_backends(demand: DemandEstimator, make_app: AppFactory) -> None:
    """warm-on-queue wants the three backends of a factool_code and a factool_kbqa app."""
    apps = [make_app("factool_code"), make_app("factool_kbqa")]
    backends = _backends(
        _status("llm", WARM, busy=1),
        _status(CODE, COLD),
        _status("search:factool_kbqa", COLD),
    )
    unlimited = make_planner("warm-on-queue", demand).plan(0.0, apps, backends, {})
    assert set(unlimited.warm) == {CODE, "search:factool_kbqa"}
    budget = make_planner("warm-on-queue", demand, max_warm=2).plan(0.0, apps, backends, {})
    assert len(budget.warm) == 1  # llm is busy and takes one of the two places
    full = make_planner("warm-on-queue", demand, max_warm=1).plan(0.0, apps, backends, {})
    assert full.warm == ()


def test_budget_must_allow_one_backend(demand: DemandEstimator) -> None:
    with pytest.raises(ValueError, match="max_warm"):
        make_planner("lru", demand, max_warm=0)


def test_unknown_planner_lists_the_choices(demand: DemandEstimator) -> None:
    with pytest.raises(ValueError, match="unknown prewarm planner 'always'") as err:
        make_planner("always", demand)
    for name in PLANNERS:
        assert name in str(err.value)


# --------------------------------------------------------------------------- baselines


def test_on_demand_releases_every_idle_backend(demand: DemandEstimator) -> None:
    backends = _backends(
        _status("warm", WARM, last_used_s=99.0),
        _status("warming", WARMING),
        _status("cold", COLD),
        _status("busy", WARM, busy=1),
    )
    decision = make_planner("on-demand", demand).plan(100.0, [], backends, {})
    assert decision == PrewarmDecision(warm=(), release=("warm", "warming"))


def test_lru_keeps_within_ttl(demand: DemandEstimator) -> None:
    planner = LRUKeepAlive(demand, ttl_s=30.0)
    backends = _backends(
        _status("stale", WARM, last_used_s=50.0),
        _status("recent", WARM, last_used_s=80.0),
        _status("fresh", WARM, last_used_s=95.0),
        _status("cold", COLD, last_used_s=99.0),
    )
    assert planner.plan(100.0, [], backends, {}) == PrewarmDecision(warm=(), release=("stale",))


@pytest.mark.parametrize(
    ("max_warm", "released"),
    [(1, ("oldest", "middle")), (2, ("oldest",)), (3, ())],
)
def test_lru_evicts_least_recently_used_first(
    demand: DemandEstimator, max_warm: int, released: tuple[str, ...]
) -> None:
    planner = LRUKeepAlive(demand, max_warm=max_warm, ttl_s=1000.0)
    backends = _backends(
        _status("middle", WARM, last_used_s=20.0),
        _status("oldest", WARM, last_used_s=10.0),
        _status("newest", WARM, last_used_s=30.0),
    )
    decision = planner.plan(40.0, [], backends, {})
    assert decision.warm == ()
    assert set(decision.release) == set(released)


def test_warm_on_queue_warms_what_live_classes_can_use(
    demand: DemandEstimator, make_app: AppFactory
) -> None:
    backends = _backends(
        _status("llm", WARM),
        _status(CODE, COLD),
        _status("search:factool_kbqa", COLD),
        _status("search:react_fever", WARM),
    )
    decision = make_planner("warm-on-queue", demand).plan(
        0.0, [make_app("factool_code", stage="generate_queries")], backends, {}
    )
    assert decision == PrewarmDecision(warm=(CODE,), release=("search:react_fever",))


# --------------------------------------------------------------------------- pdgraph planner


def _code_backends(code_phase: BackendPhase) -> dict[str, BackendStatus]:
    """The LLM engine runs generate_solutions; the code sandbox takes 3 s to start."""
    return _backends(
        _status("llm", WARM, busy=3, warmup_s=30.0), _status(CODE, code_phase, warmup_s=3.0)
    )


def _at_generate_solutions(make_app: AppFactory, now: float, running_for_s: float) -> AppRecord:
    return make_app(
        "factool_code", stage="generate_solutions", pending=3, running_since_s=now - running_for_s
    )


def test_pdgraph_warms_the_next_stages_backend(
    demand: DemandEstimator, make_app: AppFactory
) -> None:
    now = 100.0
    planner = PDGraphPrewarm(demand)
    app = _at_generate_solutions(make_app, now, running_for_s=2.0)
    horizon = 3.0 + planner.slack_s
    assert planner.need_probabilities({CODE: horizon}, now, [app], {})[CODE] >= planner.warm_threshold
    assert planner.plan(now, [app], _code_backends(COLD), {}) == PrewarmDecision(warm=(CODE,))


def test_pdgraph_asks_for_a_plan_when_a_stage_makes_a_cold_backend_likely(
    demand: DemandEstimator, make_app: AppFactory
) -> None:
    """generate_solutions is followed by code_execution: entering it makes the cold sandbox
    likely within its warm-up, so the engine should plan now; the first stage does not."""
    planner = PDGraphPrewarm(demand)
    entering = _at_generate_solutions(make_app, 0.0, running_for_s=0.0)
    assert planner.may_warm_for(entering, {CODE: 3.0})
    assert not planner.may_warm_for(make_app("factool_code", stage="generate_queries"), {CODE: 3.0})
    assert not planner.may_warm_for(entering, {})


def test_pdgraph_keeps_the_next_backend_of_an_overdue_stage(
    demand: DemandEstimator, make_app: AppFactory
) -> None:
    """generate_solutions has run for 60 s, longer than any draw of its duration (its requests
    queued behind others): code_execution is due, so the warm sandbox must not be released."""
    now = 100.0
    app = _at_generate_solutions(make_app, now, running_for_s=60.0)
    decision = PDGraphPrewarm(demand).plan(now, [app], _code_backends(WARM), {})
    assert CODE not in decision.release


def test_pdgraph_leaves_cold_what_nothing_needs(
    demand: DemandEstimator, make_app: AppFactory
) -> None:
    planner = PDGraphPrewarm(demand)
    rates = {name: 0.0 for name in demand.classes}
    assert planner.plan(5.0, [], _code_backends(COLD), rates) == PrewarmDecision()
    math_app = make_app("factool_math", stage="extract_claims", running_since_s=4.0)
    assert planner.plan(5.0, [math_app], _code_backends(COLD), rates) == PrewarmDecision()
    assert planner.plan(5.0, [math_app], _code_backends(WARM), rates).release == (CODE,)


def test_pdgraph_warms_for_expected_arrivals(demand: DemandEstimator) -> None:
    planner = PDGraphPrewarm(demand)
    busy = {"factool_code": 5.0}
    assert planner.plan(0.0, [], _code_backends(COLD), busy) == PrewarmDecision(warm=(CODE,))
    other = {"factool_math": 5.0}
    assert planner.plan(0.0, [], _code_backends(COLD), other) == PrewarmDecision()


def test_pdgraph_keeps_between_the_thresholds(
    demand: DemandEstimator, make_app: AppFactory
) -> None:
    """Hysteresis: a probability between keep and warm thresholds keeps a warm backend but
    does not warm a cold one."""
    now = 50.0
    app = _at_generate_solutions(make_app, now, running_for_s=0.0)
    p = PDGraphPrewarm(demand).need_probabilities({CODE: 4.0}, now, [app], {})[CODE]
    assert 0.0 < p < 1.0
    planner = PDGraphPrewarm(demand, warm_threshold=min(1.0, p + 0.05), keep_threshold=p / 2)
    assert planner.plan(now, [app], _code_backends(COLD), {}) == PrewarmDecision()
    assert planner.plan(now, [app], _code_backends(WARM), {}) == PrewarmDecision()


@pytest.mark.parametrize(
    ("warm", "keep"), [(0.2, 0.5), (0.5, 0.0), (1.5, 0.2), (0.5, -0.1)]
)
def test_pdgraph_thresholds_are_validated(
    demand: DemandEstimator, warm: float, keep: float
) -> None:
    with pytest.raises(ValueError, match="keep_threshold <= warm_threshold"):
        PDGraphPrewarm(demand, warm_threshold=warm, keep_threshold=keep)
