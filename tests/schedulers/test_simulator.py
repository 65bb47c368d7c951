"""Tests for hermesflow.schedulers.simulator: invariants of small simulated runs.

`CheckedSimulator` re-checks capacity, KV budget and work conservation after every dispatch,
i.e. after every event; it only adds checks to the real event loop.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Sequence

import numpy as np
import pytest

from hermesflow.pdgraph.costs import CostModel, LLMEngineCost
from hermesflow.pdgraph.demand import DemandEstimator, GraphState
from hermesflow.schedulers.engine import EngineOutput
from hermesflow.schedulers.interface import AppRecord, BackendPhase, RequestRecord
from hermesflow.schedulers.policies import POLICIES, ClairvoyantSRPT, make_policy
from hermesflow.schedulers.prewarm import PLANNERS, make_planner
from hermesflow.schedulers.sim_backends import SimEngine
from hermesflow.schedulers.simulator import SimulationConfig, SimulationResult, Simulator
from hermesflow.schedulers.workload import (
    Arrival,
    arrival_rate_for_load,
    normalise_mix,
    poisson_arrivals,
)

LOAD = 0.7
SUMMARY_KEYS = {
    "policy",
    "apps_completed",
    "mean_act_s",
    "p95_act_s",
    "cold_start_share",
    "warm_backend_s",
    "decision_us",
}


class CheckedSimulator(Simulator):
    """The simulator, asserting its invariants after every dispatch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.checks = 0
        self.kv_blocked = 0

    def _apply(self, output: EngineOutput) -> None:
        super()._apply(output)
        self.checks += 1
        for name, backend in self.backends.items():
            queue, state = self.engine.queues[name], self.engine.backends[name]
            assert len(backend.running) == state.in_flight <= state.capacity, name
            if backend.running:
                assert state.phase is BackendPhase.WARM, name
            if isinstance(backend, SimEngine):
                held = sum(r.input_tokens + r.output_tokens for r in backend.running.values())
                assert state.kv_in_use == held, name
                assert held <= backend.cost.kv_tokens or len(backend.running) == 1, name
            if state.free > 0 and len(queue):
                # work conservation: only an engine may hold back, and only a head that does not fit
                assert isinstance(backend, SimEngine), f"pool {name} idles with a queue"
                assert not state.fits(queue.peek()), f"engine {name} idles with a fitting head"
                self.kv_blocked += 1


class CheckedSRPT(ClairvoyantSRPT):
    """SRPT that also checks the oracle the simulator keeps: never negative."""

    def key(self, request: RequestRecord) -> float:
        remaining = super().key(request)
        assert remaining >= -1e-9, request.app
        return remaining


@pytest.fixture(scope="module")
def arrivals(demand: DemandEstimator) -> list[Arrival]:
    mix = normalise_mix(demand.classes, None)
    return poisson_arrivals(arrival_rate_for_load(LOAD, demand, mix), 120, mix, seed=1)


def _simulate(
    demand: DemandEstimator,
    arrivals: Sequence[Arrival],
    policy: str = "gittins",
    planner: str = "pdgraph",
    seed: int = 2,
    config: SimulationConfig | None = None,
    **planner_options: object,
) -> tuple[CheckedSimulator, SimulationResult]:
    sim = CheckedSimulator(
        demand,
        make_policy(policy, demand),
        make_planner(planner, demand, **planner_options),
        arrivals,
        seed=seed,
        config=config,
    )
    return sim, sim.run()


def _assert_complete(sim: CheckedSimulator, result: SimulationResult, n: int) -> None:
    assert [o.app_id for o in result.outcomes] == list(range(n))
    assert result.summary()["apps_completed"] == n
    assert not sim.engine.apps  # nothing left running
    assert all(len(q) == 0 for q in sim.engine.queues.values())
    assert all(not b.running for b in sim.backends.values())
    assert all(o.finish_s >= o.arrival_s for o in result.outcomes)
    assert sim.checks > 0


def _backend_names(demand: DemandEstimator, arrivals: Sequence[Arrival]) -> tuple[str, ...]:
    sim = Simulator(
        demand, make_policy("fcfs", demand), make_planner("on-demand", demand), arrivals, seed=0
    )
    return tuple(sim.backends)


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize(
    "kv_tokens",
    [None, 6_000],
    ids=["default-engine", "small-kv"],  # 6000 tokens: some got_docmerge requests run alone
)
def test_every_app_completes_once_within_capacity(
    demand: DemandEstimator, arrivals: list[Arrival], kv_tokens: int | None
) -> None:
    config = None
    if kv_tokens is not None:
        config = SimulationConfig(costs=CostModel(llm={"llm": LLMEngineCost(kv_tokens=kv_tokens)}))
    sim, result = _simulate(demand, arrivals, config=config)
    _assert_complete(sim, result, len(arrivals))
    if kv_tokens is not None:
        assert sim.kv_blocked > 0  # the KV budget, not the batch size, held requests back


@pytest.mark.parametrize(("policy", "planner"), list(itertools.product(POLICIES, PLANNERS)))
def test_every_policy_and_planner_runs_a_short_mix(
    demand: DemandEstimator, arrivals: list[Arrival], policy: str, planner: str
) -> None:
    short = arrivals[:40]
    sim, result = _simulate(demand, short, policy=policy, planner=planner)
    _assert_complete(sim, result, len(short))
    assert result.policy == policy and result.planner == planner


def test_the_srpt_oracle_runs_in_the_simulator(
    demand: DemandEstimator, arrivals: list[Arrival]
) -> None:
    sim = CheckedSimulator(
        demand, CheckedSRPT(demand), make_planner("pdgraph", demand), arrivals, seed=2
    )
    result = sim.run()
    _assert_complete(sim, result, len(arrivals))
    assert result.summary()["policy"] == "srpt"


# --------------------------------------------------------------------------- determinism


def _comparable(result: SimulationResult) -> dict[str, object]:
    """The summary without decision time, which is measured wall-clock time."""
    return {k: v for k, v in result.summary().items() if k != "decision_us"}


def test_same_seed_gives_the_same_run(demand: DemandEstimator, arrivals: list[Arrival]) -> None:
    _, first = _simulate(demand, arrivals, seed=4)
    _, second = _simulate(demand, arrivals, seed=4)
    assert _comparable(first) == _comparable(second)
    assert first.outcomes == second.outcomes


def test_different_seed_gives_a_different_run(
    demand: DemandEstimator, arrivals: list[Arrival]
) -> None:
    _, first = _simulate(demand, arrivals, seed=4)
    _, second = _simulate(demand, arrivals, seed=5)
    assert _comparable(first) != _comparable(second)


# --------------------------------------------------------------------------- cold starts


def test_prewarming_lowers_the_cold_start_share(
    demand: DemandEstimator, arrivals: list[Arrival]
) -> None:
    """Every backend starts warm; the first planner call at t = 0 releases the idle ones, so
    warm-on-queue cannot reach zero, but it must do better than loading on demand."""
    config = SimulationConfig(warm_at_start=_backend_names(demand, arrivals))
    shares = {
        planner: _simulate(demand, arrivals, planner=planner, config=config)[1].summary()[
            "cold_start_share"
        ]
        for planner in ("on-demand", "warm-on-queue")
    }
    assert 0.0 < shares["warm-on-queue"] < shares["on-demand"]


def test_no_cold_starts_when_every_backend_is_warm_and_pinned(
    demand: DemandEstimator, arrivals: list[Arrival]
) -> None:
    names = _backend_names(demand, arrivals)
    config = SimulationConfig(warm_at_start=names)
    sim, result = _simulate(demand, arrivals, planner="warm-on-queue", config=config, pinned=names)
    _assert_complete(sim, result, len(arrivals))
    assert result.summary()["cold_start_share"] == 0.0
    assert all(o.cold_start_s == 0.0 for o in result.outcomes)


# --------------------------------------------------------------------------- summary


def test_summary_has_the_reported_keys(demand: DemandEstimator, arrivals: list[Arrival]) -> None:
    started = time.perf_counter()
    sim, result = _simulate(demand, arrivals[:30], policy="fcfs", planner="lru")
    wall_s = time.perf_counter() - started
    summary = result.summary()
    assert SUMMARY_KEYS <= set(summary)
    assert summary["policy"] == "fcfs"
    assert summary["apps_completed"] == 30
    assert summary["mean_act_s"] == pytest.approx(result.acts.mean())
    assert min(result.acts) <= summary["p95_act_s"] <= max(result.acts)
    assert 0.0 <= summary["cold_start_share"] <= 1.0
    assert summary["warm_backend_s"] > 0.0
    # one decision per request dispatched, each once; their time is part of the run's time
    assert result.decisions == sum(
        len(stage.requests) for _, plan in sim._arrivals for stage in plan.stages  # noqa: SLF001
    )
    assert 0.0 < result.decision_seconds < wall_s
    assert summary["decision_us"] == pytest.approx(1e6 * result.decision_seconds / result.decisions)


def test_an_empty_workload_is_refused_or_summarised(demand: DemandEstimator) -> None:
    """No arrivals: either the simulator refuses them up front with a ValueError that says so,
    or the run completes with a summary of zero applications (not an IndexError)."""
    try:
        sim = Simulator(
            demand, make_policy("fcfs", demand), make_planner("on-demand", demand), [], seed=0
        )
    except ValueError as err:
        assert "arrival" in str(err)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no ACTs may be NaN
        summary = sim.run().summary()
    assert summary["apps_completed"] == 0


# --------------------------------------------------------------------------- replaying given runs


def _plans(demand: DemandEstimator, arrivals: Sequence[Arrival], seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [demand.compiled(a.app_class).sample_run(rng) for a in arrivals]


def test_given_plans_are_replayed_whatever_the_seed(demand: DemandEstimator, arrivals: list[Arrival]) -> None:
    plans = _plans(demand, arrivals, seed=11)
    results = [
        Simulator(demand, make_policy("fcfs", demand), make_planner("on-demand", demand), arrivals, seed, plans=plans).run()
        for seed in (1, 2)
    ]
    assert _comparable(results[0]) == _comparable(results[1])
    assert [o.work_s for o in results[0].outcomes] == [p.work_s for p in plans]


def test_plans_of_the_wrong_classes_are_refused(demand: DemandEstimator, arrivals: list[Arrival]) -> None:
    plans = _plans(demand, arrivals, seed=11)[::-1]
    if [p.app_class for p in plans] == [a.app_class for a in arrivals]:
        pytest.skip("the reversed mix happens to match")
    with pytest.raises(ValueError, match="one run per arrival"):
        Simulator(demand, make_policy("fcfs", demand), make_planner("on-demand", demand), arrivals, 0, plans=plans)


def test_a_stalling_prefill_pauses_the_batch_and_is_not_shared() -> None:
    cost = LLMEngineCost(prefill_s_per_token=0.01, decode_s_per_token=0.1, max_batch=2, prefill_stalls=True)
    engine = SimEngine("llm", 1.0, 2, cost=cost)
    app = AppRecord(0, "c", 0.0, GraphState("c", None, (0,)))
    first = RequestRecord(0, app, "llm", 0.0, work_s=cost.work_s(0, 10), input_tokens=0, output_tokens=10)
    second = RequestRecord(1, app, "llm", 0.0, work_s=cost.work_s(100, 1), input_tokens=100, output_tokens=1)
    engine.start(first, 0.0)
    engine.start(second, 0.5)  # its prefill takes 1 s alone, and the first request waits for it
    assert engine.stalled_until_s == pytest.approx(1.5)
    engine.advance(1.5)
    assert engine.remaining[0] == pytest.approx(1.0 - 0.5 * cost.work_rate_per_request(1))
    assert engine.remaining[1] == pytest.approx(0.1)


# --------------------------------------------------------------------------- quiet planner timer


def _counted(planner_class: type, every_tick: bool) -> type:
    """The real planner class, counting its plans; `every_tick` never declares a quiet time
    (what the timer did before quiet times), so the engine plans on every tick."""

    class Counted(planner_class):
        plans = 0

        def plan(self, *args, **kwargs):
            type(self).plans += 1
            return super().plan(*args, **kwargs)

        def quiet_until(self, now, apps, backends, arrival_rates_at) -> float:
            if every_tick:
                return now
            return super().quiet_until(now, apps, backends, arrival_rates_at)

    return Counted


@pytest.mark.parametrize("planner", ["pdgraph", "lru", "on-demand", "warm-on-queue"])
def test_the_timer_skips_only_plans_that_would_decide_nothing(
    demand: DemandEstimator, arrivals: list[Arrival], planner: str
) -> None:
    """A planner's quiet time (`quiet_until`) lets the engine skip timer plans; every decision,
    and when it is made, is the same as planning on every tick, and fewer plans are made."""
    runs = {}
    for every_tick in (True, False):
        planner_class = _counted(type(make_planner(planner, demand)), every_tick)
        sim = Simulator(
            demand, make_policy("gittins", demand), planner_class(demand, pinned=("llm",)),
            arrivals[:40], seed=3, keep_log=True,
        )
        result = sim.run()
        runs[every_tick] = (sim.engine.log, result.summary()["mean_act_s"], planner_class.plans)
    (log_each, act_each, plans_each), (log_quiet, act_quiet, plans_quiet) = runs[True], runs[False]
    assert log_quiet == log_each and act_quiet == act_each
    assert plans_quiet < plans_each
